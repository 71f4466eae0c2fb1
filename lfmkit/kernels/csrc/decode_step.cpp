// One whole decode step of a quantized LFM2 in a single call (see lfmkit/decode_step.py).
//
// At batch 1 a token costs a few milliseconds of weight streaming, and driving ~65 kernel
// calls plus ~300 small PyTorch ops from Python costs as much again: every call wakes the
// OpenMP workers anew and pays dispatch. Here the layers run inside one parallel region:
// the matrix-vector products share rows across threads (`omp for`), the small per-token
// work (norms, activation quantization, the conv window, RoPE, K/V writes, SiLU) splits over
// token rows (conv windows: over state rows, whose tokens go in order), and attention over
// (row, K/V head). Every row's arithmetic is the same whichever thread runs it. The math is the module path's, op for op.

// A LoRA adapter on rows [row0, row0 + rows) of a linear's output: += scale * (x A^T) B^T
typedef struct {
    const float* A;         // [r, K] float32
    const float* B;         // [rows, r] float32
    int64_t r, row0, rows;
    float scale;
} LfmLora;

typedef struct {
    const void* w;          // int8 [N, K] or packed int4 [N, K/2]
    const void* s;          // float [N] (int8) or fp16 [N, K/32] (int4)
    const int32_t* wsum;    // int8: weight sums per activation block (VNNI), else unused
    int64_t K, N, bits, ab; // ab: activation block (int8: 256 or 32; int4: 32)
    const LfmLora* lora;    // adapters on parts of the output (n_lora of them; NULL, 0: none)
    int64_t n_lora;
} LfmLinear;

typedef struct {
    int64_t is_attn;
    const float* op_norm;
    const float* ffn_norm;
    LfmLinear mix;          // conv: in_proj [3h, h]; attention: q, k, v fused
    LfmLinear out;          // out_proj
    LfmLinear w13;          // w1 and w3 fused [2f, h]
    LfmLinear w2;           // [h, f]
    const float* conv_w;    // [h, L] (conv layers)
    const float* q_norm;    // [d] (attention layers)
    const float* k_norm;
} LfmLayer;

typedef struct {
    int64_t n_layers, hidden, ff, n_heads, n_kv, head_dim, conv_L, vocab;
    float eps;
    const LfmLayer* layers;
    const float* final_norm;
    LfmLinear embed;        // the embedding table (rows = token ids)
    LfmLinear head;         // the output head (the same table when tied)
} LfmModel;

typedef struct {
    float* const* a;        // per layer: conv window [B, h, L] or K [B, KV, S, d]
    float* const* b;        // per layer: V [B, KV, S, d] (attention layers)
    int64_t max_len;        // S
    int64_t* lengths;       // [B] slots used (== positions: the state holds no padding)
    int64_t* positions;     // [B]
    uint8_t* valid;         // [B, S]
} LfmStateView;

// quantize rows [r0, r1) of the B rows of activations for L, in the layout the kernel takes
// for B rows (threads may quantize disjoint row ranges of one batch)
static void quant_rows(const LfmLinear* L, const float* x, int64_t B, int64_t r0, int64_t r1, int8_t* xq, float* xs,
                       int32_t* xsum) {
    const int64_t K = L->K, ab = L->bits == 4 ? 32 : L->ab;
    if (r1 <= r0) return;
    lfm_quantize_act(x + r0 * K, r1 - r0, K, ab, L->bits == 4 ? 0 : LFM_VNNI, xq + r0 * K, xs + r0 * (K / ab),
                     xsum + r0 * (K / 32));
#if LFM_X86
    if (L->bits == 4 && q4_interleaved(B, K)) q4_interleave(xq + r0 * K, r1 - r0, K);
#endif
}

// out [B, N] = x @ W^T for the activations quant_rows prepared (threads share the rows)
static void linear_for(const LfmLinear* L, const int8_t* xq, const float* xs, const int32_t* xsum, int64_t B,
                       float* out) {
    if (L->bits == 4)
        q4_gemm_for(xq, xs, xsum, B, L->K, (const uint8_t*)L->w, (const uint16_t*)L->s, L->N, out,
                    q4_interleaved(B, L->K));
    else
        q8_gemm_for(xq, xs, B, L->K, L->ab, (const int8_t*)L->w, (const float*)L->s, L->wsum, L->N, out);
}

// one row of the table as float (the embedding lookup)
static void table_row(const LfmLinear* L, int64_t id, float* out) {
    const int64_t K = L->K;
    if (L->bits == 8) {
        const int8_t* w = (const int8_t*)L->w + id * K;
        float s = ((const float*)L->s)[id];
        for (int64_t i = 0; i < K; i++) out[i] = (float)w[i] * s;
        return;
    }
    q4_row((const uint8_t*)L->w + id * (K / 2), (const uint16_t*)L->s + id * (K / 32), K,
           [out](int64_t i, float v) { out[i] = v; });
}

// x * cos + rotate_half(x) * sin for one head of width d
static void rope(float* x, const float* c, const float* s, int64_t d) {
    const int64_t half = d / 2;
    for (int64_t i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * c[i] - b * s[i];
        x[i + half] = b * c[i + half] + a * s[i + half];
    }
}

// a . b over d floats (two 8-lane accumulators; the tail, if any, in scalar)
static inline float dot_f32(const float* a, const float* b, int64_t d) {
    int64_t i = 0;
    float acc = 0.0f;
#if LFM_X86
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (; i + 16 <= d; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    acc = hsum_ps(_mm256_add_ps(s0, s1));
#endif
    for (; i < d; i++) acc += a[i] * b[i];
    return acc;
}

// out [B, N] += each adapter's scale * (x A^T) B^T on its rows, x [B, K] the float input the
// base product quantized; t: scratch [B, total rank]. Float32 throughout, as LoRALinear's
// forward; called by every thread of the region (the products share their rows).
static void lora_for(const LfmLinear* L, const float* x, int64_t B, float* out, float* t) {
    if (L->n_lora == 0) return;
    int64_t R = 0;
    for (int64_t p = 0; p < L->n_lora; p++) R += L->lora[p].r;
    #pragma omp for schedule(static)
    for (int64_t i = 0; i < B * R; i++) {
        int64_t j = i % R, p = 0;
        while (j >= L->lora[p].r) j -= L->lora[p++].r;
        t[i] = dot_f32(x + (i / R) * L->K, L->lora[p].A + j * L->K, L->K);
    }
    for (int64_t p = 0, off = 0; p < L->n_lora; off += L->lora[p++].r) {
        const LfmLora* a = L->lora + p;
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < a->rows; n++)
            for (int64_t b = 0; b < B; b++)
                out[b * L->N + a->row0 + n] += a->scale * dot_f32(t + b * R + off, a->B + n * a->r, a->r);
    }
}

// The G query heads q [G, d] that share one K/V head, against keys k [n, d] and values
// v [n, d] -> out [G, d]; scores: scratch [G, n]. Each key and value row is read once for
// the whole group, which is what bounds a long-context step.
static void attend_group(const float* q, int64_t G, const float* k, const float* v, int64_t n, int64_t d,
                         float scale, float* scores, float* out) {
    for (int64_t j = 0; j < n; j++)
        for (int64_t g = 0; g < G; g++) scores[g * n + j] = dot_f32(q + g * d, k + j * d, d) * scale;
    for (int64_t g = 0; g < G; g++) {
        float* sg = scores + g * n;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n; j++) mx = sg[j] > mx ? sg[j] : mx;
        float total = 0.0f;
        for (int64_t j = 0; j < n; j++) { sg[j] = expf(sg[j] - mx); total += sg[j]; }
        const float inv = 1.0f / total;
        for (int64_t j = 0; j < n; j++) sg[j] *= inv;
    }
    for (int64_t i = 0; i < G * d; i++) out[i] = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        const float* vj = v + j * d;
        for (int64_t g = 0; g < G; g++) {
            const float p = scores[g * n + j];
            float* og = out + g * d;
            for (int64_t i = 0; i < d; i++) og[i] += p * vj[i];
        }
    }
}

static int64_t max_width(const LfmModel* m) {
    int64_t w = m->head.K;
    for (int64_t l = 0; l < m->n_layers; l++) {
        const LfmLayer* ly = m->layers + l;
        const LfmLinear* ls[4] = {&ly->mix, &ly->out, &ly->w13, &ly->w2};
        for (int i = 0; i < 4; i++) {
            if (ls[i]->K > w) w = ls[i]->K;
            if (ls[i]->N > w) w = ls[i]->N;
        }
    }
    return w;
}

extern "C" {

// bytes of scratch lfm_decode_step needs for B rows and a state of max_len slots
int64_t lfm_decode_scratch_bytes(const LfmModel* m, int64_t B, int64_t max_len) {
    const int64_t w = max_width(m);
    return 4 * (B * m->hidden * 2 + B * w * 2 + B * m->n_heads * max_len)   // x, o, xn, big, scores
           + B * w + 8 * (B * w / 32 + 1) + 256                               // xq, xs, xsum, alignment
           + 4 * B * w + 64;                                                  // LoRA ranks (at most w a linear)
}

// Run T tokens per row, ids [B, T], through the model at each row's next T slots; logits
// [B, T, vocab]. Every (row, token) pair is computed exactly as T one-token steps would
// compute it (the same kernels on the same values: linears and norms work row by row, the conv
// window takes the row's tokens in order, token j attends over the row's keys up to its own
// slot), so speculative verification gives plain decoding's logits bit for bit.
// cos/sin: RoPE tables [>= max position + T, head_dim]. The state is updated in place (conv
// windows, K/V, valid, lengths, positions). cols: NULL, or per layer (NULL for attention
// layers) a [B, T, h] buffer that receives the value each token shifted into the conv window,
// from which a caller restores the window after any prefix of the T tokens.
void lfm_decode_tokens(const LfmModel* m, const LfmStateView* st, int64_t B0, int64_t T, const int64_t* ids,
                       const float* cos_t, const float* sin_t, void* scratch, float* logits, float* const* cols) {
    const int64_t h = m->hidden, H = m->n_heads, KV = m->n_kv, d = m->head_dim, L = m->conv_L, S = st->max_len;
    const int64_t w = max_width(m), group = H / KV, qkv = (H + 2 * KV) * d;
    const int64_t B = B0 * T;                   // token rows: row r is token r % T of state row r / T
    const float scale = 1.0f / sqrtf((float)d);
    float* x = (float*)scratch;                 // [B, h] the residual stream
    float* o = x + B * h;                       // [B, h] a sublayer's output
    float* xn = o + B * h;                      // [B, w] normed input / inner activations
    float* big = xn + B * w;                    // [B, w] wide projections
    float* scores = big + B * w;                // [B * H, S]
    int8_t* xq = (int8_t*)(scores + B * H * S);
    float* xs = (float*)(((uintptr_t)(xq + B * w) + 63) & ~(uintptr_t)63);
    int32_t* xsum = (int32_t*)(xs + B * w / 32 + 1);
    float* lt = (float*)(((uintptr_t)(xsum + B * w / 32 + 1) + 63) & ~(uintptr_t)63);   // [B, ranks]

    for (int64_t r = 0; r < B; r++) table_row(&m->embed, ids[r], x + r * h);

    #pragma omp parallel
    {
        for (int64_t li = 0; li < m->n_layers; li++) {
            const LfmLayer* ly = m->layers + li;
            #pragma omp for schedule(static)
            for (int64_t r = 0; r < B; r++) {
                lfm_rmsnorm(x + r * h, ly->op_norm, 1, h, m->eps, xn + r * h);
                quant_rows(&ly->mix, xn, B, r, r + 1, xq, xs, xsum);
            }
            linear_for(&ly->mix, xq, xs, xsum, B, big);
            lora_for(&ly->mix, xn, B, big, lt);
            if (!ly->is_attn) {
                #pragma omp for schedule(static)
                for (int64_t b = 0; b < B0; b++) {   // each state row's tokens in order
                    float* window = st->a[li] + b * h * L;
                    for (int64_t r = b * T; r < (b + 1) * T; r++) {
                        lfm_conv_step(big + r * 3 * h, 3 * h, window, ly->conv_w, NULL, 1, h, L, xn + r * h);
                        if (cols != NULL)
                            for (int64_t c = 0; c < h; c++) cols[li][r * h + c] = window[c * L + L - 1];
                    }
                    quant_rows(&ly->out, xn, B, b * T, (b + 1) * T, xq, xs, xsum);
                }
            } else {
                #pragma omp for schedule(static)
                for (int64_t r = 0; r < B; r++) {
                    float* q = big + r * qkv;
                    float* k = q + H * d;
                    const float* v = k + KV * d;
                    const int64_t b = r / T, pos = st->positions[b] + r % T, slot = st->lengths[b] + r % T;
                    lfm_rmsnorm(q, ly->q_norm, H, d, m->eps, q);
                    lfm_rmsnorm(k, ly->k_norm, KV, d, m->eps, k);
                    for (int64_t hh = 0; hh < H; hh++) rope(q + hh * d, cos_t + pos * d, sin_t + pos * d, d);
                    for (int64_t g = 0; g < KV; g++) {
                        rope(k + g * d, cos_t + pos * d, sin_t + pos * d, d);
                        const int64_t at = ((b * KV + g) * S + slot) * d;
                        memcpy(st->a[li] + at, k + g * d, d * sizeof(float));
                        memcpy(st->b[li] + at, v + g * d, d * sizeof(float));
                    }
                }
                #pragma omp for schedule(static)
                for (int64_t t = 0; t < B * KV; t++) {
                    const int64_t r = t / KV, g = t % KV, b = r / T, base = (b * KV + g) * S * d;
                    attend_group(big + r * qkv + g * group * d, group, st->a[li] + base, st->b[li] + base,
                                 st->lengths[b] + r % T + 1, d, scale, scores + t * group * S,
                                 xn + (r * H + g * group) * d);
                }
                #pragma omp for schedule(static)
                for (int64_t r = 0; r < B; r++) quant_rows(&ly->out, xn, B, r, r + 1, xq, xs, xsum);
            }
            linear_for(&ly->out, xq, xs, xsum, B, o);
            lora_for(&ly->out, xn, B, o, lt);
            #pragma omp for schedule(static)
            for (int64_t r = 0; r < B; r++) {
                for (int64_t i = r * h; i < (r + 1) * h; i++) x[i] += o[i];
                lfm_rmsnorm(x + r * h, ly->ffn_norm, 1, h, m->eps, xn + r * h);
                quant_rows(&ly->w13, xn, B, r, r + 1, xq, xs, xsum);
            }
            linear_for(&ly->w13, xq, xs, xsum, B, big);
            lora_for(&ly->w13, xn, B, big, lt);
            #pragma omp for schedule(static)
            for (int64_t r = 0; r < B; r++) {
                lfm_silu_mul(big + r * 2 * m->ff, 1, m->ff, xn + r * m->ff);
                quant_rows(&ly->w2, xn, B, r, r + 1, xq, xs, xsum);
            }
            linear_for(&ly->w2, xq, xs, xsum, B, o);
            lora_for(&ly->w2, xn, B, o, lt);
            #pragma omp for schedule(static)
            for (int64_t i = 0; i < B * h; i++) x[i] += o[i];
        }
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < B; r++) {
            lfm_rmsnorm(x + r * h, m->final_norm, 1, h, m->eps, xn + r * h);
            quant_rows(&m->head, xn, B, r, r + 1, xq, xs, xsum);
        }
        linear_for(&m->head, xq, xs, xsum, B, logits);
        lora_for(&m->head, xn, B, logits, lt);
    }
    for (int64_t b = 0; b < B0; b++) {
        for (int64_t j = 0; j < T; j++) st->valid[b * S + st->lengths[b] + j] = 1;
        st->lengths[b] += T;
        st->positions[b] += T;
    }
}

// One token per row, ids [B]: lfm_decode_tokens with T = 1; logits [B, vocab].
void lfm_decode_step(const LfmModel* m, const LfmStateView* st, int64_t B, const int64_t* ids,
                     const float* cos_t, const float* sin_t, void* scratch, float* logits) {
    lfm_decode_tokens(m, st, B, 1, ids, cos_t, sin_t, scratch, logits, NULL);
}

}  // extern "C"
