// lfmkit's CPU kernels for quantized linears (see lfmkit/kernels/__init__.py for how they are built).
//
// One source, compiled once per CPU path with that path's flags (the library picks one at run
// time): AVX-512 VNNI (`vpdpbusd` on 256-bit vectors, 32 registers), AVX-VNNI (the same
// instruction, VEX-encoded, 16 registers), AVX2 (`vpmaddubsw` + `vpmaddwd`) and a portable
// path in plain C++ (any CPU; the compiler vectorises what it can). The x86 paths share the
// intrinsics code below; `LFM_VNNI` picks the dot-product instruction.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <type_traits>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define LFM_X86 1
#include <immintrin.h>
#else
#define LFM_X86 0
#endif
#if LFM_X86 && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define LFM_VNNI 1
#define LFM_ISA "avx512vnni"
#define LFM_DPBUSD _mm256_dpbusd_epi32
#elif LFM_X86 && defined(__AVXVNNI__)
#define LFM_VNNI 1
#define LFM_ISA "avxvnni"
#define LFM_DPBUSD _mm256_dpbusd_avx_epi32
#elif LFM_X86
#define LFM_VNNI 0
#define LFM_ISA "avx2"
#else
#define LFM_VNNI 0
#define LFM_ISA "portable"
#endif
// Batched decode is bound by the dot products, not by memory: on AVX-512 the kernels for
// several rows run them on 512-bit vectors (on Zen 4 a 512-bit `vpdpbusd` does about 1.4x the
// multiply-adds per second of two 256-bit ones), summing in the same order, so the results are
// bit for bit those of the 256-bit code.
#if LFM_X86 && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define LFM_ZMM 1
#else
#define LFM_ZMM 0
#endif

// Weights stream from memory once per token; the hardware prefetcher alone leaves about a
// quarter of the bandwidth unused, so each kernel asks for the bytes this far ahead.
#ifndef PREFETCH
#define PREFETCH 2048
#endif

// ---------------------------------------------------------------- helpers
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    u += 0x7FFF + ((u >> 16) & 1);          // round to nearest even
    return (uint16_t)(u >> 16);
}

// IEEE half (bits) -> float
static inline float f16_to_f32(uint16_t h) {
#if LFM_X86
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, m = h & 0x3FF;
    uint32_t u;
    if (e == 31) u = sign | 0x7F800000 | (m << 13);                  // inf / nan
    else if (e != 0) u = sign | ((e + 112) << 23) | (m << 13);       // normal
    else if (m == 0) u = sign;                                        // zero
    else {                                                            // subnormal: 2^-24 * m
        float f = (float)m * 5.9604644775390625e-8f;
        memcpy(&u, &f, 4);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

#if LFM_X86
// unsigned a (u8) times signed b (s8), 32 pairs -> 8 int32 lanes (no saturation for a <= 127)
static inline __m256i dot_u8s8(__m256i a, __m256i b) {
#if LFM_VNNI
    return LFM_DPBUSD(_mm256_setzero_si256(), a, b);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
#endif
}

// signed times signed via the sign trick
static inline __m256i dot_s8s8(__m256i a, __m256i b) {
    return dot_u8s8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

static inline float hsum_ps(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

static inline int hsum_epi32(__m256i v) {
    __m128i lo = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    lo = _mm_add_epi32(lo, _mm_shuffle_epi32(lo, 0x4E));
    lo = _mm_add_epi32(lo, _mm_shuffle_epi32(lo, 0xB1));
    return _mm_cvtsi128_si32(lo);
}

// acc + the 8 lanes of dot_u8s8(a, b)
static inline __m256i dot_acc(__m256i acc, __m256i a, __m256i b) {
#if LFM_VNNI
    return LFM_DPBUSD(acc, a, b);
#else
    return _mm256_add_epi32(acc, dot_u8s8(a, b));
#endif
}

// 8 x 8 transpose of 32-bit lanes: afterwards v[t] lane i = (before) v[i] lane t
static inline void transpose8(__m256i v[8]) {
    __m256i t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x20);
        v[i + 4] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x31);
    }
}

#if LFM_ZMM
// transpose8 on both 256-bit halves of each vector at once (two superblocks side by side)
static inline void transpose8_pair(__m512i v[8]) {
    __m512i t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    // _mm256_permute2x128_si256(a, b, 0x20 / 0x31) within each half
    const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    for (int i = 0; i < 4; i++) {
        v[i] = _mm512_permutex2var_epi64(u[i], lo, u[i + 4]);
        v[i + 4] = _mm512_permutex2var_epi64(u[i], hi, u[i + 4]);
    }
}

// [a | b] from two 256-bit loads
static inline __m512i load_pair(const void* a, const void* b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)a)),
                              _mm256_loadu_si256((const __m256i*)b), 1);
}
#endif

// sums[j] = the sum of v[j]'s lanes, for MT rows. Eight at once by a tree that adds in exactly
// hsum_ps's order (halves, then lanes 0+2 and 1+3, then those two), so a row's result does not
// depend on how many rows share the call: speculative decoding's multi-token verify step must
// equal single-token steps bit for bit.
template <int MT>
static inline void hsum_rows(const __m256 v[MT], float sums[MT]) {
    if constexpr (MT == 8) {
        __m256 w[4];   // w[i] = [lo + hi of row 2i | lo + hi of row 2i + 1]
        for (int i = 0; i < 4; i++)
            w[i] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x20),
                                 _mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x31));
        // per lane: (x0 + x2, x1 + x3) of two rows; s0: rows 0, 2 | 1, 3; s1: rows 4, 6 | 5, 7
        const __m256 s0 = _mm256_add_ps(_mm256_shuffle_ps(w[0], w[1], 0x44), _mm256_shuffle_ps(w[0], w[1], 0xEE));
        const __m256 s1 = _mm256_add_ps(_mm256_shuffle_ps(w[2], w[3], 0x44), _mm256_shuffle_ps(w[2], w[3], 0xEE));
        const __m256 r = _mm256_hadd_ps(s0, s1);   // rows 0, 2, 4, 6 | 1, 3, 5, 7
        _mm256_storeu_ps(sums, _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    } else {
        for (int j = 0; j < MT; j++) sums[j] = hsum_ps(v[j]);
    }
}
#endif  // LFM_X86

// Several rows of int4 activations take the interleaved kernel (below): per 256 values, the
// eight blocks' 32-bit groups transposed so one integer vector holds one block per lane.
static inline bool q4_interleaved(int64_t M, int64_t K) { return LFM_X86 && M >= 2 && K >= 256; }

// One row of int4 weights (layout below: +8 nibbles, two blocks of 32 per 32 bytes, an fp16
// scale per block) as floats, handed over as put(column, value).
template <class Put>
static inline void q4_row(const uint8_t* w, const uint16_t* scales, int64_t K, Put put) {
    for (int64_t b = 0; b < K / 32; b += 2) {
        const float sa = f16_to_f32(scales[b]), sb = f16_to_f32(scales[b + 1]);
        const uint8_t* p = w + b * 16;
        for (int i = 0; i < 32; i++) {
            put(b * 32 + i, (float)((p[i] & 15) - 8) * sa);
            put(b * 32 + 32 + i, (float)((p[i] >> 4) - 8) * sb);
        }
    }
}

extern "C" {

int lfm_has_vnni(void) { return LFM_VNNI; }

const char* lfm_isa(void) { return LFM_ISA; }

// x [M, K] float -> xq [M, K] int8 (or uint8 x+128 when offset), xs [M, K/ab] float
// (absmax / 127 per block of ab = 32 or 256 values, or K: one per row), xsum [M, K/32] int32
// (sums of the signed codes per 32, for the int4 kernel's -8 correction; may be NULL)
void lfm_quantize_act(const float* x, int64_t M, int64_t K, int64_t ab, int offset, int8_t* xq, float* xs,
                      int32_t* xsum) {
    const int64_t nab = K / ab, per = ab / 32;
#if LFM_X86
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int64_t i = 0; i < M * nab; i++) {
        const float* src = x + i * ab;
        __m256 m = _mm256_setzero_ps();
        for (int64_t c = 0; c < ab; c += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(src + c)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float d = _mm_cvtss_f32(m4) / 127.0f;
        xs[i] = d;
        __m256 inv = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
        for (int64_t q = 0; q < per; q++) {
            const float* s32 = src + q * 32;
            __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(s32), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(s32 + 8), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(s32 + 16), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(s32 + 24), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            if (xsum) xsum[i * per + q] = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            if (offset) p = _mm256_xor_si256(p, flip);
            _mm256_storeu_si256((__m256i*)(xq + i * ab + q * 32), p);
        }
    }
#else
    for (int64_t i = 0; i < M * nab; i++) {
        const float* src = x + i * ab;
        float m = 0.0f;
        for (int64_t c = 0; c < ab; c++) m = fmaxf(m, fabsf(src[c]));
        const float d = m / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
        xs[i] = d;
        for (int64_t q = 0; q < per; q++) {
            int32_t sum = 0;
            for (int64_t c = q * 32; c < q * 32 + 32; c++) {
                int32_t v = (int32_t)nearbyintf(src[c] * inv);   // round half to even, as the x86 paths
                v = v < -128 ? -128 : (v > 127 ? 127 : v);
                sum += v;
                xq[i * ab + c] = offset ? (int8_t)(uint8_t)(v + 128) : (int8_t)v;
            }
            if (xsum) xsum[i * per + q] = sum;
        }
    }
#endif
}

}  // extern "C"

// A pass over part of K: units [c0, c1) (int4: 256 values, int8: one activation block). With
// eight rows the activations of a whole wide row (w2's 4608 values: 37 KB) overflow L1, and a
// weight row streams past all of them; so the rows are multiplied KPASS values at a time, the
// first pass writing the outputs and later ones adding to them.
struct KRange {
    int64_t c0, c1;
    bool first() const { return c0 == 0; }
};
#define KPASS 2048

#if LFM_X86
// int4 weights: 32 bytes per pair of blocks (64 columns): low nibbles = first 32 columns,
// high nibbles = next 32, stored +8 as unsigned. fp16 scale per block of 32. Activations in
// blocks of 32.
// out[j, n] = sum_b scale[n, b] * xs[j, b] * (sum_i nib[n, b, i] * xq[j, b, i] - 8 * xsum[j, b])
// One row (IL false): each block's integer dot product is scaled in its own lanes (one convert
// and one FMA per block, no horizontal sums inside the loop); the -8 offset is corrected once
// per eight blocks from the activation block sums. Several rows (IL true, activations
// interleaved by q4_interleave): the weights of eight blocks are transposed once (transpose8),
// and then every row needs eight dot products, one integer -8 correction, one convert and one
// FMA per eight blocks: a third of the per-row work, so one weight pass serves a batch.
template <int MT, bool IL>
static void q4_rows(const int8_t* xq, const float* xs, const int32_t* xsum, int64_t K, const uint8_t* w,
                    const uint16_t* ws, int64_t n0, int64_t n1, int64_t N, float* out, KRange r) {
    const int64_t nb = K / 32, nsb = nb / 8;
    const __m256i mask = _mm256_set1_epi8(0x0F);
    alignas(32) float cs[MT][8];
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t* wp = w + n * (K / 2);
        const uint16_t* sp = ws + n * nb;
        __m256 acc0[MT], acc1[MT], corr[MT];
        float tail[MT];
        for (int j = 0; j < MT; j++) {
            acc0[j] = _mm256_setzero_ps(); acc1[j] = _mm256_setzero_ps(); corr[j] = _mm256_setzero_ps(); tail[j] = 0.0f;
        }
        for (int64_t s = r.c0; s < r.c1; s++) {
            _mm_prefetch((const char*)(wp + s * 128 + PREFETCH), _MM_HINT_T0);
            _mm_prefetch((const char*)(wp + s * 128 + PREFETCH + 64), _MM_HINT_T0);
#if LFM_ZMM
            if (IL && s % 2 == 0 && s + 1 < r.c1) {   // superblocks s and s + 1 (q4_interleave pairs them)
                _mm_prefetch((const char*)(wp + s * 128 + PREFETCH + 128), _MM_HINT_T0);
                _mm_prefetch((const char*)(wp + s * 128 + PREFETCH + 192), _MM_HINT_T0);
                const __m512i mask2 = _mm512_set1_epi8(0x0F);
                __m512i v[8];
                for (int p = 0; p < 4; p++) {
                    __m512i raw = load_pair(wp + s * 128 + p * 32, wp + s * 128 + 128 + p * 32);
                    v[2 * p] = _mm512_and_si512(raw, mask2);
                    v[2 * p + 1] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask2);
                }
                transpose8_pair(v);
                const __m512 sw2 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(sp + s * 8)));
#pragma GCC unroll 8
                for (int j = 0; j < MT; j++) {
                    const __m512i* xp = (const __m512i*)(xq + j * K + s * 256);
                    __m512i d0 = _mm512_slli_epi32(_mm512_loadu_si512(xsum + j * nb + s * 8), 3);
                    d0 = _mm512_sub_epi32(_mm512_setzero_si512(), d0);
                    __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v[1], _mm512_loadu_si512(xp + 1));
                    d0 = _mm512_dpbusd_epi32(d0, v[0], _mm512_loadu_si512(xp));
#pragma GCC unroll 4
                    for (int t = 2; t < 8; t += 2) {
                        d0 = _mm512_dpbusd_epi32(d0, v[t], _mm512_loadu_si512(xp + t));
                        d1 = _mm512_dpbusd_epi32(d1, v[t + 1], _mm512_loadu_si512(xp + t + 1));
                    }
                    const __m512 dd = _mm512_cvtepi32_ps(_mm512_add_epi32(d0, d1));
                    const __m512 c = _mm512_mul_ps(sw2, _mm512_loadu_ps(xs + j * nb + s * 8));
                    // superblock s, then s + 1: the 256-bit code's order
                    acc0[j] = _mm256_fmadd_ps(_mm512_castps512_ps256(dd), _mm512_castps512_ps256(c), acc0[j]);
                    acc0[j] = _mm256_fmadd_ps(_mm512_extractf32x8_ps(dd, 1), _mm512_extractf32x8_ps(c, 1), acc0[j]);
                }
                s++;
                continue;
            }
#endif
            __m256 sw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(sp + s * 8)));
            if (IL) {
                __m256i v[8];
                for (int p = 0; p < 4; p++) {
                    __m256i raw = _mm256_loadu_si256((const __m256i*)(wp + s * 128 + p * 32));
                    v[2 * p] = _mm256_and_si256(raw, mask);
                    v[2 * p + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
                }
                transpose8(v);
                // unrolled over the rows so the accumulators stay in registers; two chains
                // of four dot products per row (integer sums: the order changes nothing)
#pragma GCC unroll 8
                for (int j = 0; j < MT; j++) {
                    const __m256i* xp = (const __m256i*)(xq + j * K + s * 256);
                    __m256i d0 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i*)(xsum + j * nb + s * 8)), 3);
                    d0 = _mm256_sub_epi32(_mm256_setzero_si256(), d0);
                    __m256i d1 = dot_u8s8(v[1], _mm256_loadu_si256(xp + 1));
                    d0 = dot_acc(d0, v[0], _mm256_loadu_si256(xp));
#pragma GCC unroll 4
                    for (int t = 2; t < 8; t += 2) {
                        d0 = dot_acc(d0, v[t], _mm256_loadu_si256(xp + t));
                        d1 = dot_acc(d1, v[t + 1], _mm256_loadu_si256(xp + t + 1));
                    }
                    acc0[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(d0, d1)),
                                              _mm256_mul_ps(sw, _mm256_loadu_ps(xs + j * nb + s * 8)), acc0[j]);
                }
                continue;
            }
            for (int j = 0; j < MT; j++) {
                __m256 c = _mm256_mul_ps(sw, _mm256_loadu_ps(xs + j * nb + s * 8));
                _mm256_store_ps(cs[j], c);
                corr[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(
                    _mm256_loadu_si256((const __m256i*)(xsum + j * nb + s * 8))), c, corr[j]);
            }
            for (int p = 0; p < 4; p++) {
                __m256i raw = _mm256_loadu_si256((const __m256i*)(wp + s * 128 + p * 32));
                __m256i lo = _mm256_and_si256(raw, mask);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
                for (int j = 0; j < MT; j++) {
                    const int8_t* xp = xq + j * K + s * 256 + p * 64;
                    __m256i d0 = dot_u8s8(lo, _mm256_loadu_si256((const __m256i*)xp));
                    __m256i d1 = dot_u8s8(hi, _mm256_loadu_si256((const __m256i*)(xp + 32)));
                    acc0[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_broadcast_ss(&cs[j][2 * p]), acc0[j]);
                    acc1[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), _mm256_broadcast_ss(&cs[j][2 * p + 1]), acc1[j]);
                }
            }
        }
        for (int64_t b = r.c1 == nsb ? nsb * 8 : nb; b < nb; b += 2) {   // leftover pairs of blocks (last pass)
            __m256i raw = _mm256_loadu_si256((const __m256i*)(wp + b * 16));
            __m256i wa = _mm256_and_si256(raw, mask), wb = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            float sa = f16_to_f32(sp[b]), sb = f16_to_f32(sp[b + 1]);
            for (int j = 0; j < MT; j++) {
                const int8_t* xp = xq + j * K + b * 32;
                int da = hsum_epi32(dot_u8s8(wa, _mm256_loadu_si256((const __m256i*)xp))) - 8 * xsum[j * nb + b];
                int db = hsum_epi32(dot_u8s8(wb, _mm256_loadu_si256((const __m256i*)(xp + 32)))) - 8 * xsum[j * nb + b + 1];
                tail[j] += sa * xs[j * nb + b] * (float)da + sb * xs[j * nb + b + 1] * (float)db;
            }
        }
        alignas(32) float sums[8];
        if (!IL)   // the interleaved loop leaves acc1 and corr at zero
            for (int j = 0; j < MT; j++) acc0[j] = _mm256_fnmadd_ps(_mm256_set1_ps(8.0f), corr[j], _mm256_add_ps(acc0[j], acc1[j]));
        hsum_rows<MT>(acc0, sums);
        for (int j = 0; j < MT; j++) out[j * N + n] = (r.first() ? 0.0f : out[j * N + n]) + sums[j] + tail[j];
    }
}

// The activation layout the interleaved kernel reads: per 256 values of a row, the same
// transpose as the weights get (32-bit group t of block i moves to group i of vector t).
// With 512-bit vectors (LFM_ZMM) superblocks go in pairs, 2c and 2c + 1: vector t of the pair
// is [vector t of 2c | vector t of 2c + 1], so one 512-bit load serves both (a last odd one
// stays as it is).
static void q4_interleave(int8_t* xq, int64_t M, int64_t K) {
    for (int64_t m = 0; m < M; m++) {
        int64_t c = 0;
#if LFM_ZMM
        for (; c + 512 <= K; c += 512) {
            __m256i* p = (__m256i*)(xq + m * K + c);
            __m256i a[8], b[8];
            for (int i = 0; i < 8; i++) { a[i] = _mm256_loadu_si256(p + i); b[i] = _mm256_loadu_si256(p + 8 + i); }
            transpose8(a);
            transpose8(b);
            for (int i = 0; i < 8; i++) { _mm256_storeu_si256(p + 2 * i, a[i]); _mm256_storeu_si256(p + 2 * i + 1, b[i]); }
        }
#endif
        for (; c + 256 <= K; c += 256) {
            __m256i* p = (__m256i*)(xq + m * K + c);
            __m256i v[8];
            for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_si256(p + i);
            transpose8(v);
            for (int i = 0; i < 8; i++) _mm256_storeu_si256(p + i, v[i]);
        }
    }
}

// int8 weights [N, K] with one float scale per row; activations in blocks of ab (32 or 256)
// values with one scale each, so the inner loop over a block is pure integer dot products.
// With VNNI the activations come offset to unsigned (x + 128) so `vpdpbusd` takes the signed
// weights straight from memory; the offset is removed per row with the weight block sums
// wsum[n, b]. Without VNNI, signed times signed uses the sign trick.
template <int MT>
static void q8_rows(const int8_t* xq, const float* xs, int64_t K, int64_t ab, const int8_t* w, const float* ws,
                    const int32_t* wsum, int64_t n0, int64_t n1, int64_t N, float* out, KRange r) {
    const int64_t nab = K / ab, chunks = ab / 32;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t* wp = w + n * K;
        __m256 acc[MT];
        for (int j = 0; j < MT; j++) acc[j] = _mm256_setzero_ps();
        for (int64_t b = r.c0; b < r.c1; b++) {
            for (int64_t o = 0; o < ab; o += 64) _mm_prefetch((const char*)(wp + b * ab + o + PREFETCH), _MM_HINT_T0);
#if LFM_ZMM
            if (ab % 64 == 0) {   // 64 values per 512-bit product; halves added: ia + ib below
                __m512i iz[MT];
#pragma GCC unroll 8
                for (int j = 0; j < MT; j++) iz[j] = _mm512_setzero_si512();
                for (int64_t c = 0; c < ab; c += 64) {
                    const __m512i wz = _mm512_loadu_si512(wp + b * ab + c);
#pragma GCC unroll 8
                    for (int j = 0; j < MT; j++)
                        iz[j] = _mm512_dpbusd_epi32(iz[j], _mm512_loadu_si512(xq + j * K + b * ab + c), wz);
                }
#pragma GCC unroll 8
                for (int j = 0; j < MT; j++) {
                    const __m256i d = _mm256_add_epi32(_mm512_castsi512_si256(iz[j]), _mm512_extracti64x4_epi64(iz[j], 1));
                    acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_broadcast_ss(xs + j * nab + b), acc[j]);
                }
                continue;
            }
#endif
            __m256i ia[MT], ib[MT];
            for (int j = 0; j < MT; j++) { ia[j] = _mm256_setzero_si256(); ib[j] = _mm256_setzero_si256(); }
            int64_t c = 0;
            for (; c + 2 <= chunks; c += 2) {
                __m256i w0 = _mm256_loadu_si256((const __m256i*)(wp + b * ab + c * 32));
                __m256i w1 = _mm256_loadu_si256((const __m256i*)(wp + b * ab + c * 32 + 32));
                for (int j = 0; j < MT; j++) {
                    const int8_t* xp = xq + j * K + b * ab + c * 32;
                    __m256i x0 = _mm256_loadu_si256((const __m256i*)xp), x1 = _mm256_loadu_si256((const __m256i*)(xp + 32));
#if LFM_VNNI
                    ia[j] = LFM_DPBUSD(ia[j], x0, w0);
                    ib[j] = LFM_DPBUSD(ib[j], x1, w1);
#else
                    ia[j] = _mm256_add_epi32(ia[j], dot_s8s8(w0, x0));
                    ib[j] = _mm256_add_epi32(ib[j], dot_s8s8(w1, x1));
#endif
                }
            }
            if (c < chunks) {   // ab == 32: one chunk per block
                __m256i w0 = _mm256_loadu_si256((const __m256i*)(wp + b * ab + c * 32));
                for (int j = 0; j < MT; j++) {
                    __m256i x0 = _mm256_loadu_si256((const __m256i*)(xq + j * K + b * ab + c * 32));
#if LFM_VNNI
                    ia[j] = LFM_DPBUSD(ia[j], x0, w0);
#else
                    ia[j] = _mm256_add_epi32(ia[j], dot_s8s8(w0, x0));
#endif
                }
            }
            for (int j = 0; j < MT; j++)
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(ia[j], ib[j])),
                                         _mm256_broadcast_ss(xs + j * nab + b), acc[j]);
        }
        alignas(32) float sums[8];
        hsum_rows<MT>(acc, sums);
        for (int j = 0; j < MT; j++) {
            float total = sums[j];
#if LFM_VNNI
            float corr = 0.0f;
            for (int64_t b = r.c0; b < r.c1; b++) corr += xs[j * nab + b] * (float)wsum[n * nab + b];
            total -= 128.0f * corr;
#endif
            out[j * N + n] = (r.first() ? 0.0f : out[j * N + n]) + total * ws[n];
        }
    }
}

#else   // portable: the same sums, one row at a time in plain C++ (never interleaved)
template <int MT, bool IL>
static void q4_rows(const int8_t* xq, const float* xs, const int32_t* xsum, int64_t K, const uint8_t* w,
                    const uint16_t* ws, int64_t n0, int64_t n1, int64_t N, float* out, KRange r) {
    const int64_t nb = K / 32;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t* wp = w + n * (K / 2);
        const uint16_t* sp = ws + n * nb;
        for (int j = 0; j < MT; j++) {
            const int8_t* xj = xq + j * K;
            float acc = 0.0f;
            for (int64_t b = r.c0 * 8; b < (r.c1 == nb / 8 ? nb : r.c1 * 8); b += 2) {
                const uint8_t* p = wp + b * 16;
                int32_t da = 0, db = 0;
                for (int i = 0; i < 32; i++) {
                    da += (p[i] & 15) * xj[b * 32 + i];
                    db += (p[i] >> 4) * xj[b * 32 + 32 + i];
                }
                acc += f16_to_f32(sp[b]) * xs[j * nb + b] * (float)(da - 8 * xsum[j * nb + b]) +
                       f16_to_f32(sp[b + 1]) * xs[j * nb + b + 1] * (float)(db - 8 * xsum[j * nb + b + 1]);
            }
            out[j * N + n] = (r.first() ? 0.0f : out[j * N + n]) + acc;
        }
    }
}

template <int MT>
static void q8_rows(const int8_t* xq, const float* xs, int64_t K, int64_t ab, const int8_t* w, const float* ws,
                    const int32_t* wsum, int64_t n0, int64_t n1, int64_t N, float* out, KRange r) {
    (void)wsum;   // signed activations: no offset to remove
    const int64_t nab = K / ab;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t* wp = w + n * K;
        for (int j = 0; j < MT; j++) {
            const int8_t* xj = xq + j * K;
            float acc = 0.0f;
            for (int64_t b = r.c0; b < r.c1; b++) {
                int32_t d = 0;
                for (int64_t i = b * ab; i < (b + 1) * ab; i++) d += (int32_t)wp[i] * xj[i];
                acc += (float)d * xs[j * nab + b];
            }
            out[j * N + n] = (r.first() ? 0.0f : out[j * N + n]) + acc * ws[n];
        }
    }
}
#endif  // LFM_X86

#define ROWS_PER_TASK 8
#if LFM_X86 && defined(__AVX512VL__)
#define M_TILE 8          // 32 vector registers hold eight rows' accumulators
#else
#define M_TILE 4
#endif

// The row loops below are orphaned `omp for` loops: called inside a parallel region (the
// decode step) the threads share the rows; the exported wrappers open a region of their own.
// f(tile, m) for the tiles of rows [m, m + tile) covering M: M_TILE at a time, then the rest
// (tile is a compile-time constant, std::integral_constant, so the kernels are unrolled for it)
template <class F>
static inline void for_row_tiles(int64_t M, F f) {
    int64_t m = 0;
    for (; m + M_TILE <= M; m += M_TILE) f(std::integral_constant<int, M_TILE>{}, m);
    switch (M - m) {
        case 7: f(std::integral_constant<int, 7>{}, m); break;
        case 6: f(std::integral_constant<int, 6>{}, m); break;
        case 5: f(std::integral_constant<int, 5>{}, m); break;
        case 4: f(std::integral_constant<int, 4>{}, m); break;
        case 3: f(std::integral_constant<int, 3>{}, m); break;
        case 2: f(std::integral_constant<int, 2>{}, m); break;
        case 1: f(std::integral_constant<int, 1>{}, m); break;
        default: break;
    }
}

// f(r) for the passes over K (units of `unit` values, KPASS values a pass; at least one pass).
// One row (batch-1 decode) takes K in one pass: its activations fit in L1 anyway.
template <class F>
static inline void for_k_passes(int64_t M, int64_t units, int64_t unit, F f) {
    const int64_t per = M == 1 ? (units > 0 ? units : 1) : (KPASS / unit > 0 ? KPASS / unit : 1);
    for (KRange r{0, 0};; r.c0 = r.c1) {
        r.c1 = r.c0 + per < units ? r.c0 + per : units;
        f(r);
        if (r.c1 >= units) break;
    }
}

template <bool IL>
static void q4_task(const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M, int64_t K,
                    const uint8_t* w, const uint16_t* ws, int64_t n0, int64_t n1, int64_t N, float* out) {
    const int64_t nb = K / 32;
    for_k_passes(M, K / 256, 256, [&](KRange r) {
        for_row_tiles(M, [&](auto tile, int64_t m) {
            q4_rows<decltype(tile)::value, IL>(xq + m * K, xs + m * nb, xsum + m * nb, K, w, ws, n0, n1, N,
                                               out + m * N, r);
        });
    });
}

// il: the activations were interleaved (q4_quantize does it where q4_interleaved says so)
static void q4_gemm_for(const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M, int64_t K,
                        const uint8_t* w, const uint16_t* ws, int64_t N, float* out, bool il) {
    const int64_t tasks = (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
    #pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t n0 = t * ROWS_PER_TASK, n1 = n0 + ROWS_PER_TASK < N ? n0 + ROWS_PER_TASK : N;
        if (il)
            q4_task<true>(xq, xs, xsum, M, K, w, ws, n0, n1, N, out);
        else
            q4_task<false>(xq, xs, xsum, M, K, w, ws, n0, n1, N, out);
    }
}

// quantize x [M, K] for int4 weights (blocks of 32), interleaved where q4_interleaved says so
static void q4_quantize(const float* x, int64_t M, int64_t K, int8_t* xq, float* xs, int32_t* xsum) {
    lfm_quantize_act(x, M, K, 32, 0, xq, xs, xsum);
#if LFM_X86
    if (q4_interleaved(M, K)) q4_interleave(xq, M, K);
#endif
}

static void q8_gemm_for(const int8_t* xq, const float* xs, int64_t M, int64_t K, int64_t ab, const int8_t* w,
                        const float* ws, const int32_t* wsum, int64_t N, float* out) {
    const int64_t tasks = (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK, nab = K / ab;
    #pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t n0 = t * ROWS_PER_TASK, n1 = n0 + ROWS_PER_TASK < N ? n0 + ROWS_PER_TASK : N;
        for_k_passes(M, nab, ab, [&](KRange r) {
            for_row_tiles(M, [&](auto tile, int64_t m) {
                q8_rows<decltype(tile)::value>(xq + m * K, xs + m * nab, K, ab, w, ws, wsum, n0, n1, N, out + m * N, r);
            });
        });
    }
}

extern "C" {

// out [M, N] float; w [N, K/2] uint8; ws [N, K/32] fp16 bits; xq from lfm_quantize_act(ab=32)
void lfm_q4_gemm(const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M, int64_t K,
                 const uint8_t* w, const uint16_t* ws, int64_t N, float* out) {
    #pragma omp parallel
    q4_gemm_for(xq, xs, xsum, M, K, w, ws, N, out, false);
}

// out [M, N] float; w [N, K] int8; ws [N] float; wsum [N, K/ab] int32 (VNNI only)
void lfm_q8_gemm(const int8_t* xq, const float* xs, int64_t M, int64_t K, int64_t ab, const int8_t* w,
                 const float* ws, const int32_t* wsum, int64_t N, float* out) {
    #pragma omp parallel
    q8_gemm_for(xq, xs, M, K, ab, w, ws, wsum, N, out);
}

// one call per linear: quantize x [M, K] into the scratch buffers, then multiply
void lfm_q4_linear(const float* x, int64_t M, int64_t K, const uint8_t* w, const uint16_t* ws, int64_t N,
                   float* out, int8_t* xq, float* xs, int32_t* xsum) {
    q4_quantize(x, M, K, xq, xs, xsum);
    #pragma omp parallel
    q4_gemm_for(xq, xs, xsum, M, K, w, ws, N, out, q4_interleaved(M, K));
}

// ab: activation block (256 when K allows, else 32); wsum [N, K/ab]: the weight sums per
// activation block (QuantLinear.kernel_spec computes them)
void lfm_q8_linear(const float* x, int64_t M, int64_t K, int64_t ab, const int8_t* w, const float* ws,
                   const int32_t* wsum, int64_t N, float* out, int8_t* xq, float* xs, int32_t* xsum) {
    lfm_quantize_act(x, M, K, ab, LFM_VNNI, xq, xs, xsum);
    lfm_q8_gemm(xq, xs, M, K, ab, w, ws, wsum, N, out);
}

}  // extern "C"

// int4 (layout above) + fp16 scales -> bf16 or float32 [N, K]; int8 [N, K] + float row scales
// likewise (float32: exactly the reference's (code - 8) * scale, one rounding)
static inline void put_val(uint16_t* o, float v) { *o = f32_to_bf16(v); }
static inline void put_val(float* o, float v) { *o = v; }

template <class T>
static void q4_dequant(const uint8_t* w, const uint16_t* ws, int64_t N, int64_t K, T* out) {
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        T* o = out + n * K;
        q4_row(w + n * (K / 2), ws + n * (K / 32), K, [o](int64_t i, float v) { put_val(o + i, v); });
    }
}

template <class T>
static void q8_dequant(const int8_t* w, const float* ws, int64_t N, int64_t K, T* out) {
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float s = ws[n];
        for (int64_t k = 0; k < K; k++) put_val(out + n * K + k, (float)w[n * K + k] * s);
    }
}

extern "C" {

void lfm_q4_dequant_bf16(const uint8_t* w, const uint16_t* ws, int64_t N, int64_t K, uint16_t* out) { q4_dequant(w, ws, N, K, out); }
void lfm_q4_dequant_f32(const uint8_t* w, const uint16_t* ws, int64_t N, int64_t K, float* out) { q4_dequant(w, ws, N, K, out); }
void lfm_q8_dequant_bf16(const int8_t* w, const float* ws, int64_t N, int64_t K, uint16_t* out) { q8_dequant(w, ws, N, K, out); }
void lfm_q8_dequant_f32(const int8_t* w, const float* ws, int64_t N, int64_t K, float* out) { q8_dequant(w, ws, N, K, out); }

// ---------------------------------------------------------------- fused small ops (decode)
// out = x * rsqrt(mean(x^2) + eps) * w, per row of length dim
void lfm_rmsnorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out) {
    for (int64_t r = 0; r < rows; r++) {
        const float* xr = x + r * dim;
        float* o = out + r * dim;
        double ss = 0.0;
        for (int64_t i = 0; i < dim; i++) ss += (double)xr[i] * xr[i];
        float inv = 1.0f / sqrtf((float)(ss / dim) + eps);
        for (int64_t i = 0; i < dim; i++) o[i] = (xr[i] * inv) * w[i];
    }
}

// One decode step of the short convolution for b rows: bcx [b, 3h] = (B, C, x) from in_proj;
// window [b, h, L] shifts left by one and takes B*x; out [b, h] = C * (sum_k window*w + bias).
void lfm_conv_step(const float* bcx, int64_t row_stride, float* window, const float* w,
                   const float* bias, int64_t b, int64_t h, int64_t L, float* out) {
    for (int64_t r = 0; r < b; r++) {
        const float* B = bcx + r * row_stride;
        const float* C = B + h;
        const float* X = B + 2 * h;
        float* win = window + r * h * L;
        float* o = out + r * h;
        for (int64_t c = 0; c < h; c++) {
            float* wc = win + c * L;
            const float* kc = w + c * L;
            for (int64_t k = 0; k + 1 < L; k++) wc[k] = wc[k + 1];
            wc[L - 1] = B[c] * X[c];
            float acc = 0.0f;
            for (int64_t k = 0; k < L; k++) acc += wc[k] * kc[k];
            if (bias) acc += bias[c];
            o[c] = C[c] * acc;
        }
    }
}

// gu [m, 2f] = (gate, up) -> out [m, f] = silu(gate) * up
void lfm_silu_mul(const float* gu, int64_t m, int64_t f, float* out) {
    for (int64_t r = 0; r < m; r++) {
        const float* g = gu + r * 2 * f;
        const float* u = g + f;
        float* o = out + r * f;
        for (int64_t i = 0; i < f; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

}  // extern "C"
