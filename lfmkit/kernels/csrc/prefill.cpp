// Weights for W8A8 prefill GEMMs (see lfmkit/quant/prefill.py): int4 rows re-expressed as int8
// rows with one float scale per row, a tile at a time, for torch._int_mm (oneDNN, VNNI).

// table[q] = round((q - 8) * r) for the 16 int4 codes (|(q - 8) * r| <= 127 by construction)
static inline void group_table(float r, int8_t* table) {
#if LFM_X86
    const __m128 rv = _mm_set1_ps(r);
    __m128i t[4];
    for (int i = 0; i < 4; i++)   // cvtps rounds to nearest even, as nearbyintf
        t[i] = _mm_cvtps_epi32(_mm_mul_ps(_mm_setr_ps(4 * i - 8, 4 * i - 7, 4 * i - 6, 4 * i - 5), rv));
    _mm_store_si128((__m128i*)table, _mm_packs_epi16(_mm_packs_epi32(t[0], t[1]), _mm_packs_epi32(t[2], t[3])));
#else
    for (int q = 0; q < 16; q++) {
        const float v = nearbyintf((float)(q - 8) * r);
        table[q] = (int8_t)(v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v));
    }
#endif
}

// int4 [N, K/2] (kernels.cpp's layout) + fp16 group scales [N, K/32] -> int8 [N, K] + float [N].
// Q4_0 maps each group's signed extreme to -8 exactly, so a row's largest |weight| is
// 8 * max|scale|: the row scale is that / 127, and code q of a group with scale s becomes
// round(q * s / row_scale), looked up in a 16-entry table per group (one shuffle per 32 codes).
extern "C" void lfm_q4_to_q8(const uint8_t* w, const uint16_t* ws, int64_t N, int64_t K, int8_t* out, float* out_scale) {
    const int64_t nb = K / 32;
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t* wp = w + n * (K / 2);
        const uint16_t* sp = ws + n * nb;
        int8_t* o = out + n * K;
        float smax = 0.0f;
        for (int64_t b = 0; b < nb; b++) smax = fmaxf(smax, fabsf(f16_to_f32(sp[b])));
        const float row = smax * 8.0f / 127.0f, inv = row > 0.0f ? 1.0f / row : 0.0f;
        out_scale[n] = row;
        alignas(16) int8_t table[2][16];
        for (int64_t b = 0; b < nb; b += 2) {
            for (int t = 0; t < 2; t++) group_table(f16_to_f32(sp[b + t]) * inv, table[t]);
            const uint8_t* p = wp + b * 16;
#if LFM_X86
            const __m256i raw = _mm256_loadu_si256((const __m256i*)p), mask = _mm256_set1_epi8(0x0F);
            const __m256i ta = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i*)table[0]));
            const __m256i tb = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i*)table[1]));
            _mm256_storeu_si256((__m256i*)(o + b * 32), _mm256_shuffle_epi8(ta, _mm256_and_si256(raw, mask)));
            _mm256_storeu_si256((__m256i*)(o + b * 32 + 32),
                                _mm256_shuffle_epi8(tb, _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask)));
#else
            for (int i = 0; i < 32; i++) {
                o[b * 32 + i] = table[0][p[i] & 15];
                o[b * 32 + 32 + i] = table[1][p[i] >> 4];
            }
#endif
        }
    }
}

// out[i, j] = acc[i, j] * xs[i] * ws[j]: an int8 GEMM's exact sums [M, N] back to floats, into
// rows of stride ldo (a column range of a wider output)
extern "C" void lfm_scale_int32(const int32_t* acc, int64_t M, int64_t N, const float* xs, const float* ws,
                                float* out, int64_t ldo) {
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M; i++) {
        const int32_t* a = acc + i * N;
        float* o = out + i * ldo;
        const float x = xs[i];
        for (int64_t j = 0; j < N; j++) o[j] = (float)a[j] * x * ws[j];
    }
}
