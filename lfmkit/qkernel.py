"""Our small vectorised CPU kernels for quantized linears, compiled at first use.

The stock PyTorch kernels leave speed on the table for weight-only int4 on CPU (see
BENCHMARKS.md), so we build a tiny C++ library (no PyTorch headers, so it compiles in about
a second with plain `g++ -O3 -march=native -fopenmp`) and call it through ctypes:

- activations are quantized on the fly to int8 in blocks of 32 (one float scale per block);
- int4 weights (two per byte, one fp16 scale per group) and int8 weights (one float scale per
  output row) are multiplied with integer dot products (AVX2 `maddubs`, or AVX-512 VNNI
  `dpbusd` where the CPU has it), one float multiply-add per block of 32;
- `dequant_*` expand weights to bfloat16 for prefill, where a large GEMM wins;
- a few fused float32 ops for the decode step (RMSNorm, the short-conv step, SiLU-gate), each
  replacing five to ten small PyTorch ops whose dispatch cost dominates at batch 1.

The library shares PyTorch's OpenMP runtime (same `libgomp.so.1`), so `torch.set_num_threads`
governs it too. If there is no compiler, the build fails, or `LFMKIT_NO_KERNELS=1` is set,
`load()` returns None and quant.py falls back to pure PyTorch (same results up to rounding).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

// ---------------------------------------------------------------- helpers
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    u += 0x7FFF + ((u >> 16) & 1);          // round to nearest even
    return (uint16_t)(u >> 16);
}

// unsigned a (u8) times signed b (s8), 32 pairs -> 8 int32 lanes (no saturation for a <= 127)
static inline __m256i dot_u8s8(__m256i a, __m256i b) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b);
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

// eight vectors of 8 int32 -> one vector of their eight totals, in order
static inline __m256i reduce8(const __m256i* d) {
    __m256i s01 = _mm256_hadd_epi32(d[0], d[1]), s23 = _mm256_hadd_epi32(d[2], d[3]);
    __m256i s45 = _mm256_hadd_epi32(d[4], d[5]), s67 = _mm256_hadd_epi32(d[6], d[7]);
    __m256i s0123 = _mm256_hadd_epi32(s01, s23), s4567 = _mm256_hadd_epi32(s45, s67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(s0123, s4567, 0x20),
                            _mm256_permute2x128_si256(s0123, s4567, 0x31));
}

extern "C" {

int lfm_has_vnni(void) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return 1;
#else
    return 0;
#endif
}

// x [M, K] float -> xq [M, K] int8, xs [M, K/32] float (absmax / 127), xsum [M, K/32] int32
void lfm_quantize_act(const float* x, int64_t M, int64_t K, int8_t* xq, float* xs, int32_t* xsum) {
    int64_t nb = K / 32;
    for (int64_t i = 0; i < M * nb; i++) {
        const float* src = x + i * 32;
        __m256 a0 = _mm256_loadu_ps(src), a1 = _mm256_loadu_ps(src + 8);
        __m256 a2 = _mm256_loadu_ps(src + 16), a3 = _mm256_loadu_ps(src + 24);
        __m256 sign = _mm256_set1_ps(-0.0f);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, a0), _mm256_andnot_ps(sign, a1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, a2), _mm256_andnot_ps(sign, a3)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float d = _mm_cvtss_f32(m4) / 127.0f;
        xs[i] = d;
        __m256 inv = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(a0, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(a1, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(a2, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(a3, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        xsum[i] = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i*)(xq + i * 32), p);
    }
}

}  // extern "C"

// int4 weights: 32 bytes per pair of blocks (64 columns): low nibbles = first 32 columns,
// high nibbles = next 32, stored +8 as unsigned. fp16 scale per block of 32.
// out[j, n] = sum_b scale[n, b] * xs[j, b] * (sum_i nib[n, b, i] * xq[j, b, i] - 8 * xsum[j, b])
template <int MT>
static void q4_rows(const int8_t* xq, const float* xs, const int32_t* xsum, int64_t K, const uint8_t* w,
                    const uint16_t* ws, int64_t n0, int64_t n1, int64_t N, float* out) {
    const int64_t nb = K / 32, nsb = nb / 8;
    const __m256i mask = _mm256_set1_epi8(0x0F);
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t* wp = w + n * (K / 2);
        const uint16_t* sp = ws + n * nb;
        __m256 acc[MT];
        float tail[MT];
        for (int j = 0; j < MT; j++) { acc[j] = _mm256_setzero_ps(); tail[j] = 0.0f; }
        for (int64_t s = 0; s < nsb; s++) {
            __m256i wv[8];
            for (int p = 0; p < 4; p++) {
                __m256i raw = _mm256_loadu_si256((const __m256i*)(wp + s * 128 + p * 32));
                wv[2 * p] = _mm256_and_si256(raw, mask);
                wv[2 * p + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            }
            __m256 sw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(sp + s * 8)));
            for (int j = 0; j < MT; j++) {
                const int8_t* xp = xq + j * K + s * 256;
                __m256i d[8];
                for (int i = 0; i < 8; i++) d[i] = dot_u8s8(wv[i], _mm256_loadu_si256((const __m256i*)(xp + i * 32)));
                __m256i t = _mm256_sub_epi32(reduce8(d),
                    _mm256_slli_epi32(_mm256_loadu_si256((const __m256i*)(xsum + j * nb + s * 8)), 3));
                __m256 sc = _mm256_mul_ps(sw, _mm256_loadu_ps(xs + j * nb + s * 8));
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), sc, acc[j]);
            }
        }
        for (int64_t b = nsb * 8; b < nb; b += 2) {   // leftover pairs of blocks
            __m256i raw = _mm256_loadu_si256((const __m256i*)(wp + b * 16));
            __m256i wa = _mm256_and_si256(raw, mask), wb = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            float sa = _cvtsh_ss(sp[b]), sb = _cvtsh_ss(sp[b + 1]);
            for (int j = 0; j < MT; j++) {
                const int8_t* xp = xq + j * K + b * 32;
                int da = hsum_epi32(dot_u8s8(wa, _mm256_loadu_si256((const __m256i*)xp))) - 8 * xsum[j * nb + b];
                int db = hsum_epi32(dot_u8s8(wb, _mm256_loadu_si256((const __m256i*)(xp + 32)))) - 8 * xsum[j * nb + b + 1];
                tail[j] += sa * xs[j * nb + b] * (float)da + sb * xs[j * nb + b + 1] * (float)db;
            }
        }
        for (int j = 0; j < MT; j++) out[j * N + n] = hsum_ps(acc[j]) + tail[j];
    }
}

template <int MT>
static void q8_rows(const int8_t* xq, const float* xs, int64_t K, const int8_t* w, const float* ws,
                    int64_t n0, int64_t n1, int64_t N, float* out) {
    const int64_t nb = K / 32, nsb = nb / 8;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t* wp = w + n * K;
        __m256 acc[MT];
        float tail[MT];
        for (int j = 0; j < MT; j++) { acc[j] = _mm256_setzero_ps(); tail[j] = 0.0f; }
        for (int64_t s = 0; s < nsb; s++) {
            __m256i wa[8], ws8[8];
            for (int i = 0; i < 8; i++) {
                __m256i wv = _mm256_loadu_si256((const __m256i*)(wp + s * 256 + i * 32));
                wa[i] = _mm256_sign_epi8(wv, wv);
                ws8[i] = wv;
            }
            for (int j = 0; j < MT; j++) {
                const int8_t* xp = xq + j * K + s * 256;
                __m256i d[8];
                for (int i = 0; i < 8; i++)
                    d[i] = dot_u8s8(wa[i], _mm256_sign_epi8(_mm256_loadu_si256((const __m256i*)(xp + i * 32)), ws8[i]));
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(d)), _mm256_loadu_ps(xs + j * nb + s * 8), acc[j]);
            }
        }
        for (int64_t b = nsb * 8; b < nb; b++) {
            __m256i wv = _mm256_loadu_si256((const __m256i*)(wp + b * 32));
            for (int j = 0; j < MT; j++) {
                __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + j * K + b * 32));
                tail[j] += xs[j * nb + b] * (float)hsum_epi32(dot_s8s8(wv, xv));
            }
        }
        for (int j = 0; j < MT; j++) out[j * N + n] = (hsum_ps(acc[j]) + tail[j]) * ws[n];
    }
}

#define ROWS_PER_TASK 8
#define M_TILE 4

extern "C" {

// out [M, N] float; w [N, K/2] uint8; ws [N, K/32] fp16 bits
void lfm_q4_gemm(const int8_t* xq, const float* xs, const int32_t* xsum, int64_t M, int64_t K,
                 const uint8_t* w, const uint16_t* ws, int64_t N, float* out) {
    const int64_t tasks = (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK, nb = K / 32;
    #pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t n0 = t * ROWS_PER_TASK, n1 = n0 + ROWS_PER_TASK < N ? n0 + ROWS_PER_TASK : N;
        int64_t m = 0;
        for (; m + M_TILE <= M; m += M_TILE)
            q4_rows<M_TILE>(xq + m * K, xs + m * nb, xsum + m * nb, K, w, ws, n0, n1, N, out + m * N);
        switch (M - m) {
            case 3: q4_rows<3>(xq + m * K, xs + m * nb, xsum + m * nb, K, w, ws, n0, n1, N, out + m * N); break;
            case 2: q4_rows<2>(xq + m * K, xs + m * nb, xsum + m * nb, K, w, ws, n0, n1, N, out + m * N); break;
            case 1: q4_rows<1>(xq + m * K, xs + m * nb, xsum + m * nb, K, w, ws, n0, n1, N, out + m * N); break;
            default: break;
        }
    }
}

// out [M, N] float; w [N, K] int8; ws [N] float
void lfm_q8_gemm(const int8_t* xq, const float* xs, int64_t M, int64_t K, const int8_t* w,
                 const float* ws, int64_t N, float* out) {
    const int64_t tasks = (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK, nb = K / 32;
    #pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t n0 = t * ROWS_PER_TASK, n1 = n0 + ROWS_PER_TASK < N ? n0 + ROWS_PER_TASK : N;
        int64_t m = 0;
        for (; m + M_TILE <= M; m += M_TILE) q8_rows<M_TILE>(xq + m * K, xs + m * nb, K, w, ws, n0, n1, N, out + m * N);
        switch (M - m) {
            case 3: q8_rows<3>(xq + m * K, xs + m * nb, K, w, ws, n0, n1, N, out + m * N); break;
            case 2: q8_rows<2>(xq + m * K, xs + m * nb, K, w, ws, n0, n1, N, out + m * N); break;
            case 1: q8_rows<1>(xq + m * K, xs + m * nb, K, w, ws, n0, n1, N, out + m * N); break;
            default: break;
        }
    }
}

// one call per linear: quantize x [M, K] into the scratch buffers, then multiply
void lfm_q4_linear(const float* x, int64_t M, int64_t K, const uint8_t* w, const uint16_t* ws, int64_t N,
                   float* out, int8_t* xq, float* xs, int32_t* xsum) {
    lfm_quantize_act(x, M, K, xq, xs, xsum);
    lfm_q4_gemm(xq, xs, xsum, M, K, w, ws, N, out);
}

void lfm_q8_linear(const float* x, int64_t M, int64_t K, const int8_t* w, const float* ws, int64_t N,
                   float* out, int8_t* xq, float* xs, int32_t* xsum) {
    lfm_quantize_act(x, M, K, xq, xs, xsum);
    lfm_q8_gemm(xq, xs, M, K, w, ws, N, out);
}

// int4 (layout above) + fp16 scales -> bf16 [N, K]
void lfm_q4_dequant_bf16(const uint8_t* w, const uint16_t* ws, int64_t N, int64_t K, uint16_t* out) {
    const int64_t nb = K / 32;
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t b = 0; b < nb; b += 2) {
            float sa = _cvtsh_ss(ws[n * nb + b]), sb = _cvtsh_ss(ws[n * nb + b + 1]);
            const uint8_t* p = w + n * (K / 2) + b * 16;
            uint16_t* o = out + n * K + b * 32;
            for (int i = 0; i < 32; i++) {
                o[i] = f32_to_bf16((float)((p[i] & 15) - 8) * sa);
                o[i + 32] = f32_to_bf16((float)((p[i] >> 4) - 8) * sb);
            }
        }
    }
}

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

// int8 [N, K] + float row scales -> bf16 [N, K]
void lfm_q8_dequant_bf16(const int8_t* w, const float* ws, int64_t N, int64_t K, uint16_t* out) {
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float s = ws[n];
        for (int64_t k = 0; k < K; k++) out[n * K + k] = f32_to_bf16((float)w[n * K + k] * s);
    }
}

}  // extern "C"
"""

FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
build_error: str | None = None   # why the kernels are unavailable, for `lfmkit bench` to print


def _cpu_supported() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f" {f}" in flags for f in ("avx2", "fma", "f16c"))


def _cache_dir() -> Path:
    root = os.environ.get("LFMKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME")
                                                         or os.path.expanduser("~/.cache"), "lfmkit")
    return Path(root) / "kernels"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "qkernel.cpp"
        src.write_text(SOURCE)
        out = Path(tmp) / target.name
        proc = subprocess.run([compiler, *FLAGS, str(src), "-o", str(out)], capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(out, target)  # atomic: concurrent builders never see half a file


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first use; None when unavailable."""
    global _lib, _tried, build_error
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("LFMKIT_NO_KERNELS", "0") not in ("0", ""):
            build_error = "disabled by LFMKIT_NO_KERNELS"
            return None
        if not _cpu_supported():
            build_error = "needs an x86-64 CPU with AVX2, FMA and F16C"
            return None
        compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
        if compiler is None:
            build_error = "no C++ compiler found (install g++ for the fast quantized kernels)"
            return None
        import torch  # noqa: F401  - loads PyTorch's libgomp first, which the library then shares

        key = hashlib.sha256((SOURCE + " ".join(FLAGS) + compiler + platform.node()).encode()).hexdigest()[:16]
        target = _cache_dir() / f"qkernel-{key}.so"
        try:
            if not target.exists():
                _build(compiler, target)
            lib = ctypes.CDLL(str(target))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            build_error = str(exc)
            return None
        _declare(lib)
        _lib = lib
        return lib


def _declare(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.lfm_quantize_act.argtypes = [p, i64, i64, p, p, p]
    lib.lfm_q4_gemm.argtypes = [p, p, p, i64, i64, p, p, i64, p]
    lib.lfm_q8_gemm.argtypes = [p, p, i64, i64, p, p, i64, p]
    lib.lfm_q4_dequant_bf16.argtypes = [p, p, i64, i64, p]
    lib.lfm_q8_dequant_bf16.argtypes = [p, p, i64, i64, p]
    f32 = ctypes.c_float
    lib.lfm_q4_linear.argtypes = [p, i64, i64, p, p, i64, p, p, p, p]
    lib.lfm_q8_linear.argtypes = [p, i64, i64, p, p, i64, p, p, p, p]
    lib.lfm_rmsnorm.argtypes = [p, p, i64, i64, f32, p]
    lib.lfm_conv_step.argtypes = [p, i64, p, p, p, i64, i64, i64, p]
    lib.lfm_silu_mul.argtypes = [p, i64, i64, p]
    for fn in ("lfm_q4_linear", "lfm_q8_linear", "lfm_rmsnorm", "lfm_conv_step", "lfm_silu_mul", "lfm_quantize_act", "lfm_q4_gemm", "lfm_q8_gemm", "lfm_q4_dequant_bf16", "lfm_q8_dequant_bf16"):
        getattr(lib, fn).restype = None
    lib.lfm_has_vnni.restype = ctypes.c_int
    lib.lfm_has_vnni.argtypes = []


def describe() -> str:
    """One line: which kernels are in use (for bench output and docs)."""
    lib = load()
    if lib is None:
        return f"pure PyTorch fallback ({build_error})"
    return "lfmkit C++ kernels (" + ("AVX-512 VNNI" if lib.lfm_has_vnni() else "AVX2") + ")"
