// ---- optim.cpp: one AdamW step of one tensor, in one pass (lfmkit/train/compact_adamw.py) -------
//
// The moments are float32, or block-wise 8-bit (Dettmers et al. 2022, "8-bit Optimizers via
// Block-wise Quantization"): blocks of 256 values, each with its float32 absmax, codes into
// Dettmers' dynamic map (signed for the first moment, unsigned for the second). A code is found
// with a table indexed by the top 16 bits of the normalised float32 (sign, exponent, 7 mantissa
// bits) that names the nearest code of the bucket and whether one midpoint of the map falls
// inside the bucket; one comparison with that midpoint finishes (ties round up), the same codes
// as a search over the 255 midpoints (lfmkit/train/blockwise.py builds the tables and checks it).
// The update reads the float32 moments before they are re-quantized, as bitsandbytes and
// torchao do.
//
// The weights are float32, or bfloat16 with a bfloat16 compensation buffer (Kahan summation,
// Zamirai et al. 2020, "Revisiting BFloat16 Training"): the update plus the carried compensation
// is added to the weight, the weight is rounded to bfloat16, and what the rounding lost becomes
// the next compensation, so small updates accumulate instead of vanishing below half an ulp.
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace lfm_optim {

constexpr int64_t kBlock = 256;

inline float from_bf16(uint16_t h) {
    uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline uint16_t to_bf16(float f) {  // round to nearest even, as torch's float -> bfloat16
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);
}

inline uint8_t encode(float x, const uint16_t* lut, const float* mid) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    const uint16_t e = lut[u >> 16];
    const uint8_t c = static_cast<uint8_t>(e & 0xff);
    return static_cast<uint8_t>(c + ((e >> 8) & (x >= mid[c] ? 1 : 0)));
}

// Codes of x[i] * r for i < len into out; the table has one padding entry (the vector gather reads
// 4 bytes at entry b). AVX-512: 16 values at a time with two gathers; the scalar loop does the rest.
inline void encode_all(const float* x, float r, int64_t len, const uint16_t* lut, const float* mid, uint8_t* out) {
    int64_t i = 0;
#if defined(__AVX512F__)
    const __m512 vr = _mm512_set1_ps(r);
    const __m512i low = _mm512_set1_epi32(0xff), one = _mm512_set1_epi32(1);
    for (; i + 16 <= len; i += 16) {
        const __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + i), vr);
        const __m512i bucket = _mm512_srli_epi32(_mm512_castps_si512(y), 16);
        const __m512i e = _mm512_i32gather_epi32(bucket, lut, 2);  // entry in the low 16 bits
        __m512i c = _mm512_and_si512(e, low);
        const __mmask16 ge = _mm512_cmp_ps_mask(y, _mm512_i32gather_ps(c, mid, 4), _CMP_GE_OQ);
        c = _mm512_mask_add_epi32(c, ge, c, _mm512_and_si512(_mm512_srli_epi32(e, 8), one));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(c));
    }
#endif
    for (; i < len; i++) out[i] = encode(x[i] * r, lut, mid);
}

struct Maps {
    const float *qs, *mids, *qu, *midu;
    const uint16_t *luts, *lutu;
};

struct Hyper {
    float lr, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, step_size, bias2_sqrt;
};

template <bool Quant, bool Bf16Param, bool Bf16Grad>
void step_block(int64_t b, int64_t n, void* param, uint16_t* comp, const void* grad, void* m, void* v,
                float* m_scale, float* v_scale, const Maps& maps, const Hyper& h) {
    const int64_t s = b * kBlock;
    const int64_t len = n - s < kBlock ? n - s : kBlock;
    float mb[kBlock], vb[kBlock];
    const float ms = Quant ? m_scale[b] : 0.0f, vs = Quant ? v_scale[b] : 0.0f;
    const float decay = h.lr * h.weight_decay, inv_bias2 = 1.0f / h.bias2_sqrt;
    for (int64_t i = 0; i < len; i++) {
        const int64_t j = s + i;
        const float g = Bf16Grad ? from_bf16(static_cast<const uint16_t*>(grad)[j]) : static_cast<const float*>(grad)[j];
        float mi = Quant ? maps.qs[static_cast<uint8_t*>(m)[j]] * ms : static_cast<float*>(m)[j];
        float vi = Quant ? maps.qu[static_cast<uint8_t*>(v)[j]] * vs : static_cast<float*>(v)[j];
        mi = mi + h.one_minus_beta1 * (g - mi);
        vi = h.beta2 * vi + h.one_minus_beta2 * g * g;
        mb[i] = mi;
        vb[i] = vi;
        const float adam = h.step_size * (mi / (std::sqrt(vi) * inv_bias2 + h.eps));
        if (Bf16Param) {
            uint16_t* w16 = static_cast<uint16_t*>(param);
            const float w = from_bf16(w16[j]), c = from_bf16(comp[j]);
            const float u = c - decay * (w + c) - adam;
            const uint16_t t16 = to_bf16(w + u);
            w16[j] = t16;
            comp[j] = to_bf16(u - (from_bf16(t16) - w));
        } else {
            float* w = static_cast<float*>(param);
            w[j] = w[j] * (1.0f - decay) - adam;
        }
    }
    if (Quant) {
        // absmax as an integer max of the magnitudes' bits (their order is the values' order),
        // which vectorizes where a float max reduction would not
        uint32_t bm = 0, bv = 0;
        for (int64_t i = 0; i < len; i++) {
            uint32_t um, uv;
            std::memcpy(&um, &mb[i], 4);
            std::memcpy(&uv, &vb[i], 4);
            um &= 0x7fffffffu;
            uv &= 0x7fffffffu;
            bm = um > bm ? um : bm;
            bv = uv > bv ? uv : bv;
        }
        float am, av;
        std::memcpy(&am, &bm, 4);
        std::memcpy(&av, &bv, 4);
        am = std::fmax(am, 1e-12f);
        av = std::fmax(av, 1e-12f);
        m_scale[b] = am;
        v_scale[b] = av;
        const float rm = 1.0f / am, rv = 1.0f / av;
        uint8_t* mc = static_cast<uint8_t*>(m) + s;
        uint8_t* vc = static_cast<uint8_t*>(v) + s;
        encode_all(mb, rm, len, maps.luts, maps.mids, mc);
        encode_all(vb, rv, len, maps.lutu, maps.midu, vc);
    } else {
        std::memcpy(static_cast<float*>(m) + s, mb, len * sizeof(float));
        std::memcpy(static_cast<float*>(v) + s, vb, len * sizeof(float));
    }
}

template <bool Quant, bool Bf16Param, bool Bf16Grad>
void step_all(int64_t n, void* param, uint16_t* comp, const void* grad, void* m, void* v, float* m_scale,
              float* v_scale, const Maps& maps, const Hyper& h) {
    const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++)
        step_block<Quant, Bf16Param, Bf16Grad>(b, n, param, comp, grad, m, v, m_scale, v_scale, maps, h);
}

}  // namespace lfm_optim

// param: float32, or bfloat16 with `comp` (its bfloat16 compensation); grad: float32 or bfloat16;
// m, v: float32 moments, or uint8 codes with one float32 absmax per 256 values in m_scale / v_scale
// (both NULL for float32 moments). qs/mids/luts: the signed map (256 values), its midpoints (255
// and +inf) and the 65,536-entry bucket table (+1 padding); qu/midu/lutu: the unsigned map's. 1 - beta1 and
// 1 - beta2 come computed in double, as torch's AdamW computes them, then rounded to float.
extern "C" void lfm_adamw_step(void* param, int param_bf16, void* comp, const void* grad, int grad_bf16, void* m,
                               void* v, float* m_scale, float* v_scale, int64_t n, const float* qs, const float* mids,
                               const void* luts, const float* qu, const float* midu, const void* lutu, float lr,
                               float one_minus_beta1, float beta2, float one_minus_beta2, float eps,
                               float weight_decay, float step_size, float bias2_sqrt) {
    using namespace lfm_optim;
    const Maps maps{qs, mids, qu, midu, static_cast<const uint16_t*>(luts), static_cast<const uint16_t*>(lutu)};
    const Hyper h{lr, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, step_size, bias2_sqrt};
    uint16_t* c = static_cast<uint16_t*>(comp);
    const bool quant = m_scale != nullptr;
    const int key = (quant ? 4 : 0) | (param_bf16 ? 2 : 0) | (grad_bf16 ? 1 : 0);
    switch (key) {
        case 0: step_all<false, false, false>(n, param, c, grad, m, v, m_scale, v_scale, maps, h); break;
        case 1: step_all<false, false, true>(n, param, c, grad, m, v, m_scale, v_scale, maps, h); break;
        case 2: step_all<false, true, false>(n, param, c, grad, m, v, m_scale, v_scale, maps, h); break;
        case 3: step_all<false, true, true>(n, param, c, grad, m, v, m_scale, v_scale, maps, h); break;
        case 4: step_all<true, false, false>(n, param, c, grad, m, v, m_scale, v_scale, maps, h); break;
        case 5: step_all<true, false, true>(n, param, c, grad, m, v, m_scale, v_scale, maps, h); break;
        case 6: step_all<true, true, false>(n, param, c, grad, m, v, m_scale, v_scale, maps, h); break;
        default: step_all<true, true, true>(n, param, c, grad, m, v, m_scale, v_scale, maps, h); break;
    }
}
