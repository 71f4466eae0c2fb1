"""Our small vectorised CPU kernels for quantized linears, compiled at first use.

The stock PyTorch kernels leave speed on the table for weight-only int4 on CPU (see
BENCHMARKS.md), so we build a tiny C++ library from `csrc/` (no PyTorch headers, so it
compiles in a few seconds with plain `g++ -O3 -march=native -fopenmp`) and call it through
ctypes:

- `kernels.cpp`: activations are quantized on the fly to int8 (blocks of 32 values for int4
  weights, of 256 for int8 weights where the width allows); int4 weights (two per byte, one
  fp16 scale per 32) and int8 weights (one float scale per output row) are multiplied with
  integer dot products (AVX-512 VNNI `vpdpbusd` where the CPU has it, else AVX2 `maddubs`),
  with software prefetch so the weights stream at memory speed; `dequant_*` expand weights
  to bfloat16 for prefill, where a large GEMM wins; a few fused float32 ops (RMSNorm, the
  short-conv step, SiLU-gate) replace five to ten small PyTorch ops each.
- `decode_step.cpp`: a whole decode step of a quantized model in one call (see
  lfmkit/decode_step.py).

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

CSRC = Path(__file__).parent / "csrc"
SOURCES = ("kernels.cpp", "decode_step.cpp")  # one translation unit, in this order


def source() -> str:
    return "\n".join((CSRC / name).read_text() for name in SOURCES)


FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
build_error: str | None = None  # why the kernels are unavailable, for `lfmkit bench` to print


def _cpu_supported() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f" {f}" in flags for f in ("avx2", "fma", "f16c"))


def _cache_dir() -> Path:
    root = os.environ.get("LFMKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lfmkit"
    )
    return Path(root) / "kernels"


def _build(compiler: str, code: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "kernels.cpp"
        src.write_text(code)
        out = Path(tmp) / target.name
        proc = subprocess.run([compiler, *FLAGS, str(src), "-o", str(out)], capture_output=True, text=True, timeout=300)
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

        code = source()
        key = hashlib.sha256((code + " ".join(FLAGS) + compiler + platform.node()).encode()).hexdigest()[:16]
        target = _cache_dir() / f"qkernel-{key}.so"
        try:
            if not target.exists():
                _build(compiler, code, target)
            lib = ctypes.CDLL(str(target))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            build_error = str(exc)
            return None
        _declare(lib)
        _lib = lib
        return lib


def _declare(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.lfm_quantize_act.argtypes = [p, i64, i64, i64, ctypes.c_int, p, p, p]
    lib.lfm_q4_gemm.argtypes = [p, p, p, i64, i64, p, p, i64, p]
    lib.lfm_q8_gemm.argtypes = [p, p, i64, i64, i64, p, p, p, i64, p]
    lib.lfm_q4_dequant_bf16.argtypes = [p, p, i64, i64, p]
    lib.lfm_q8_dequant_bf16.argtypes = [p, p, i64, i64, p]
    f32 = ctypes.c_float
    lib.lfm_q4_linear.argtypes = [p, i64, i64, p, p, i64, p, p, p, p]
    lib.lfm_q8_linear.argtypes = [p, i64, i64, i64, p, p, p, i64, p, p, p, p]
    lib.lfm_rmsnorm.argtypes = [p, p, i64, i64, f32, p]
    lib.lfm_conv_step.argtypes = [p, i64, p, p, p, i64, i64, i64, p]
    lib.lfm_silu_mul.argtypes = [p, i64, i64, p]
    for fn in (
        "lfm_q4_linear",
        "lfm_q8_linear",
        "lfm_rmsnorm",
        "lfm_conv_step",
        "lfm_silu_mul",
        "lfm_quantize_act",
        "lfm_q4_gemm",
        "lfm_q8_gemm",
        "lfm_q4_dequant_bf16",
        "lfm_q8_dequant_bf16",
    ):
        getattr(lib, fn).restype = None
    lib.lfm_decode_scratch_bytes.argtypes = [p, i64, i64]
    lib.lfm_decode_scratch_bytes.restype = i64
    lib.lfm_decode_step.argtypes = [p, p, i64, p, p, p, p, p]
    lib.lfm_decode_step.restype = None
    lib.lfm_decode_tokens.argtypes = [p, p, i64, i64, p, p, p, p, p, p]
    lib.lfm_decode_tokens.restype = None
    lib.lfm_has_vnni.restype = ctypes.c_int
    lib.lfm_has_vnni.argtypes = []


def describe() -> str:
    """One line: which kernels are in use (for bench output and docs)."""
    lib = load()
    if lib is None:
        return f"pure PyTorch fallback ({build_error})"
    return "lfmkit C++ kernels (" + ("AVX-512 VNNI" if lib.lfm_has_vnni() else "AVX2") + ")"
