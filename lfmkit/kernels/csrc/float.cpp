// Float products for few token rows (decode, small batches): out[M, N] = x[M, K] w[N, K]^T + bias
// with float32 or bfloat16 tensors (x, w, bias and out all of one dtype), see
// lfmkit/fast/float_linear.py.
//
// A decode step of a float model multiplies a handful of rows by every weight once, so it is
// bound by reading the weights; the BLAS kernels PyTorch calls at these shapes are written for
// big products and read the weights at a third to a half of the memory speed (BENCHMARKS.md,
// issue 16). Here each weight row streams from memory once per call: two weight rows at a time
// are multiplied by every token row (the token rows stay in L1/L2; past MT rows they go in
// chunks of MT while the two weight rows sit in L1), so the weights cross the memory bus once
// whatever M is.
//
// bfloat16: weights and activations widened to float32 (exact: a shift), products summed in
// float32 and the result rounded to nearest even, as oneDNN's bf16 matmul does, in another
// order. Float32: float32 FMAs. Either way the sums run in vector lanes, then across them: the
// rounding differs from the BLAS's, nothing else.

#if LFM_X86 && defined(__AVX512F__)
typedef __m512 fvec;
#define LFM_FW 16
#define LFM_FMT 8  // token rows per pass: 2 x 8 accumulators in 32 registers
static inline fvec fv_zero() { return _mm512_setzero_ps(); }
static inline fvec fv_load(const float* p) { return _mm512_loadu_ps(p); }
static inline fvec fv_load(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
static inline fvec fv_fma(fvec a, fvec b, fvec c) { return _mm512_fmadd_ps(a, b, c); }
static inline float fv_sum(fvec v) { return _mm512_reduce_add_ps(v); }
#elif LFM_X86
typedef __m256 fvec;
#define LFM_FW 8
#define LFM_FMT 4  // 2 x 4 accumulators in 16 registers
static inline fvec fv_zero() { return _mm256_setzero_ps(); }
static inline fvec fv_load(const float* p) { return _mm256_loadu_ps(p); }
static inline fvec fv_load(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline fvec fv_fma(fvec a, fvec b, fvec c) { return _mm256_fmadd_ps(a, b, c); }
static inline float fv_sum(fvec v) { return hsum_ps(v); }
#else
// portable: eight float lanes in an array (the compiler vectorises the lane loops)
struct fvec { float v[8]; };
#define LFM_FW 8
#define LFM_FMT 4
static inline fvec fv_zero() { fvec r; for (int i = 0; i < 8; i++) r.v[i] = 0.0f; return r; }
static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline fvec fv_load(const float* p) { fvec r; for (int i = 0; i < 8; i++) r.v[i] = p[i]; return r; }
static inline fvec fv_load(const uint16_t* p) { fvec r; for (int i = 0; i < 8; i++) r.v[i] = bf16_to_f32(p[i]); return r; }
static inline fvec fv_fma(fvec a, fvec b, fvec c) { for (int i = 0; i < 8; i++) c.v[i] += a.v[i] * b.v[i]; return c; }
static inline float fv_sum(fvec v) {
    float s = 0.0f;
    for (int i = 0; i < 8; i++) s += v.v[i];
    return s;
}
#endif

static inline float as_f32(float v) { return v; }
static inline float as_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

// sums[r][m] = w row r . x row m for R weight rows and MT token rows (x rows float32, ldx apart)
template <int R, int MT, class W>
static inline void f_tile(const float* x, int64_t ldx, const W* w, int64_t K, float sums[R][MT]) {
    fvec acc[R][MT];
    for (int r = 0; r < R; r++)
        for (int m = 0; m < MT; m++) acc[r][m] = fv_zero();
    int64_t k = 0;
    for (; k + LFM_FW <= K; k += LFM_FW) {
#if LFM_X86
        if ((k * (int64_t)sizeof(W)) % 64 == 0)
            for (int r = 0; r < R; r++) _mm_prefetch((const char*)(w + r * K + k) + PREFETCH, _MM_HINT_T0);
#endif
        fvec wv[R];
        for (int r = 0; r < R; r++) wv[r] = fv_load(w + r * K + k);
        for (int m = 0; m < MT; m++) {
            fvec xv = fv_load(x + m * ldx + k);
#if LFM_X86
            // in a register: left to itself the compiler folds this load into each of the R FMAs,
            // and R + R * MT loads per step saturate the load ports before the FMA units
            __asm__("" : "+v"(xv));
#endif
            for (int r = 0; r < R; r++) acc[r][m] = fv_fma(wv[r], xv, acc[r][m]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int m = 0; m < MT; m++) {
            float s = fv_sum(acc[r][m]);
            for (int64_t i = k; i < K; i++) s += as_f32(w[r * K + i]) * x[m * ldx + i];
            sums[r][m] = s;
        }
}

static inline void f_store(float* out, int64_t i, float v) { out[i] = v; }
static inline void f_store(uint16_t* out, int64_t i, float v) { out[i] = f32_to_bf16(v); }

// Weight rows [n, n + R) against every token row.
template <int R, class W>
static inline void f_rows(const float* x, int64_t M, int64_t K, const W* w, int64_t N, int64_t n, const W* bias,
                          W* out) {
    int64_t m0 = 0;
    auto emit = [&](auto mt) {
        constexpr int MT = decltype(mt)::value;
        float sums[R][MT];
        f_tile<R, MT>(x + m0 * K, K, w + n * K, K, sums);
        for (int r = 0; r < R; r++) {
            const float b = bias ? as_f32(bias[n + r]) : 0.0f;
            for (int m = 0; m < MT; m++) f_store(out, (m0 + m) * N + n + r, sums[r][m] + b);
        }
        m0 += MT;
    };
    while (M - m0 >= LFM_FMT) emit(std::integral_constant<int, LFM_FMT>());
    switch (M - m0) {  // the last few token rows
        case 7: emit(std::integral_constant<int, 7>()); break;
        case 6: emit(std::integral_constant<int, 6>()); break;
        case 5: emit(std::integral_constant<int, 5>()); break;
        case 4: emit(std::integral_constant<int, 4>()); break;
        case 3: emit(std::integral_constant<int, 3>()); break;
        case 2: emit(std::integral_constant<int, 2>()); break;
        case 1: emit(std::integral_constant<int, 1>()); break;
        default: break;
    }
}

#define LFM_FR 3  // weight rows per tile: 3 x LFM_FMT accumulators
template <class W>
static void f_linear(const float* x, int64_t M, int64_t K, const W* w, int64_t N, const W* bias, W* out) {
    const int64_t groups = N / LFM_FR;
    #pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < groups; p++) f_rows<LFM_FR>(x, M, K, w, N, LFM_FR * p, bias, out);
    for (int64_t n = groups * LFM_FR; n < N; n++) f_rows<1>(x, M, K, w, N, n, bias, out);
}

#if LFM_X86 && defined(__AVX512F__) && defined(__GNUC__)
// bfloat16 on CPUs with AVX512_BF16 (checked at run time): `vdpbf16ps` multiplies 32 bf16 pairs
// and adds them into 16 float32 lanes, with no widening of either operand, so a weight costs a
// quarter of the instructions of the widen-and-FMA loop above. Products of bf16 values are exact
// in float32; the sums are float32 (denormal inputs count as zero), then rounded to bf16.
#define LFM_BF16DP 1
#define LFM_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

template <int R, int MT>
LFM_BF16_TARGET static inline void bdp_tile(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t K,
                                            float sums[R][MT]) {
    __m512 acc[R][MT];
    for (int r = 0; r < R; r++)
        for (int m = 0; m < MT; m++) acc[r][m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        for (int r = 0; r < R; r++) _mm_prefetch((const char*)(w + r * K + k) + PREFETCH, _MM_HINT_T0);
        __m512bh wv[R];
        for (int r = 0; r < R; r++) wv[r] = (__m512bh)_mm512_loadu_si512((const void*)(w + r * K + k));
        for (int m = 0; m < MT; m++) {
            const __m512bh xv = (__m512bh)_mm512_loadu_si512((const void*)(x + m * ldx + k));
            for (int r = 0; r < R; r++) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wv[r], xv);
        }
    }
    for (int r = 0; r < R; r++)
        for (int m = 0; m < MT; m++) {
            float s = _mm512_reduce_add_ps(acc[r][m]);
            for (int64_t i = k; i < K; i++) s += as_f32(w[r * K + i]) * as_f32(x[m * ldx + i]);
            sums[r][m] = s;
        }
}

template <int R>
LFM_BF16_TARGET static inline void bdp_rows(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, int64_t N,
                                            int64_t n, const uint16_t* bias, uint16_t* out) {
    int64_t m0 = 0;
    auto emit = [&](auto mt) LFM_BF16_TARGET {
        constexpr int MT = decltype(mt)::value;
        float sums[R][MT];
        bdp_tile<R, MT>(x + m0 * K, K, w + n * K, K, sums);
        for (int r = 0; r < R; r++) {
            const float b = bias ? as_f32(bias[n + r]) : 0.0f;
            for (int m = 0; m < MT; m++) out[(m0 + m) * N + n + r] = f32_to_bf16(sums[r][m] + b);
        }
        m0 += MT;
    };
    while (M - m0 >= 8) emit(std::integral_constant<int, 8>());
    switch (M - m0) {
        case 7: emit(std::integral_constant<int, 7>()); break;
        case 6: emit(std::integral_constant<int, 6>()); break;
        case 5: emit(std::integral_constant<int, 5>()); break;
        case 4: emit(std::integral_constant<int, 4>()); break;
        case 3: emit(std::integral_constant<int, 3>()); break;
        case 2: emit(std::integral_constant<int, 2>()); break;
        case 1: emit(std::integral_constant<int, 1>()); break;
        default: break;
    }
}

LFM_BF16_TARGET static void bdp_linear(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, int64_t N,
                                       const uint16_t* bias, uint16_t* out) {
    const int64_t pairs = N / 2;
    #pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < pairs; p++) bdp_rows<2>(x, M, K, w, N, 2 * p, bias, out);
    if (N % 2) bdp_rows<1>(x, M, K, w, N, N - 1, bias, out);
}

static int bf16dp_supported() {
    static const int yes = __builtin_cpu_supports("avx512bf16");
    return yes;
}
#else
#define LFM_BF16DP 0
#endif

// 1 when bfloat16 products take `vdpbf16ps` on this CPU (else they widen to float32 FMAs)
extern "C" int lfm_float_bf16dp(void) {
#if LFM_BF16DP
    return bf16dp_supported();
#else
    return 0;
#endif
}

// x [M, K], w [N, K], bias [N] or NULL, out [M, N]: row-major contiguous tensors, float32
// (mode 0) or bfloat16 (mode 1: `vdpbf16ps` where lfm_float_bf16dp(), else widened; mode 2:
// always widened, for tests). `scratch`: M * K floats for widened bfloat16 activations (may be
// NULL when they are not widened).
extern "C" void lfm_float_linear(const void* x, int64_t M, int64_t K, const void* w, int64_t N, const void* bias,
                                 void* out, int mode, float* scratch) {
    if (mode == 0) {
        f_linear((const float*)x, M, K, (const float*)w, N, (const float*)bias, (float*)out);
        return;
    }
#if LFM_BF16DP
    if (mode == 1 && bf16dp_supported()) {
        bdp_linear((const uint16_t*)x, M, K, (const uint16_t*)w, N, (const uint16_t*)bias, (uint16_t*)out);
        return;
    }
#endif
    const uint16_t* xb = (const uint16_t*)x;
    for (int64_t i = 0; i < M * K; i++) scratch[i] = as_f32(xb[i]);
    f_linear((const float*)scratch, M, K, (const uint16_t*)w, N, (const uint16_t*)bias, (uint16_t*)out);
}
