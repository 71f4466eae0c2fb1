"""Our small vectorised CPU kernels for quantized linears, compiled at first use.

The stock PyTorch kernels leave speed on the table for weight-only int4 on CPU (see
BENCHMARKS.md), so we build a tiny C++ library from `csrc/` (no PyTorch headers, so it
compiles in a few seconds with plain `g++ -O3 -fopenmp`) and call it through ctypes:

- `kernels.cpp`: activations are quantized on the fly to int8 (blocks of 32 values for int4
  weights, of 256 for int8 weights where the width allows); int4 weights (two per byte, one
  fp16 scale per 32) and int8 weights (one float scale per output row) are multiplied with
  integer dot products, with software prefetch so the weights stream at memory speed;
  `dequant_*` expand weights to bfloat16 for prefill GEMMs; a few
  fused float32 ops (RMSNorm, the short-conv step, SiLU-gate) replace five to ten small
  PyTorch ops each.
- `float.cpp`: float32 and bfloat16 products for a few token rows (decode), each weight read
  once per call at memory speed (lfmkit/fast/float_linear.py).
- `prefill.cpp`: int4 weights as int8 rows for the W8A8 prefill GEMMs (lfmkit/quant/prefill.py).
- `decode_step.cpp`: a whole decode step of a quantized model in one call (see
  lfmkit/fast/decode_step.py).
- `optim.cpp`: one AdamW step of one tensor in one pass, with block-wise 8-bit moments and/or
  Kahan-compensated bfloat16 weights (lfmkit/train/compact_adamw.py).

CPU paths: the same source is compiled once per path, with that path's flags (`PATHS`):
AVX-512 VNNI, AVX-VNNI, AVX2 and portable C++ (any CPU, any architecture). `cpu.cpp`, built
first with no ISA flags, asks CPUID (and XGETBV: the OS must save the vector state) which ones
this CPU runs; the fastest is used, or the one `LFMKIT_ISA` names (auto | avx512vnni |
avxvnni | avx2 | portable; naming one the CPU lacks is a `ConfigError`). Only the chosen path
is compiled (a few seconds, once: the library is cached under ~/.cache/lfmkit/kernels).

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

from ..errors import ConfigError

CSRC = Path(__file__).parent / "csrc"
SOURCES = (
    "kernels.cpp",
    "float.cpp",
    "decode_step.cpp",
    "prefill.cpp",
    "optim.cpp",
)  # one translation unit, in this order

_X86 = ["-mavx2", "-mfma", "-mf16c"]
# path -> (compiler flags, bit in cpu.cpp's lfm_cpu_paths(), name for people); fastest first
PATHS = {
    "avx512vnni": (_X86 + ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni"], 4, "AVX-512 VNNI"),
    "avxvnni": (_X86 + ["-mavxvnni"], 2, "AVX-VNNI"),
    "avx2": (_X86, 1, "AVX2"),
    "portable": ([], 0, "portable C++"),
}
FLAGS = ["-O3", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]  # no errno: sqrt vectorizes
ENV = "LFMKIT_ISA"
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_cpu_paths: int | None = None
build_error: str | None = None  # why the kernels are unavailable, for `lfmkit bench` to print


def source() -> str:
    return "\n".join((CSRC / name).read_text() for name in SOURCES)


def _cache_dir() -> Path:
    root = os.environ.get("LFMKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lfmkit"
    )
    return Path(root) / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _build(compiler: str, code: str, flags: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "kernels.cpp"
        src.write_text(code)
        out = Path(tmp) / target.name
        proc = subprocess.run([compiler, *flags, str(src), "-o", str(out)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(out, target)  # atomic: concurrent builders never see half a file


def _cached_library(compiler: str, name: str, code: str, flags: list[str]) -> ctypes.CDLL:
    """Build `code` with `flags` once (keyed by both, the compiler and the host), then load it."""
    key = hashlib.sha256((code + " ".join(flags) + compiler + platform.node()).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{name}-{key}.so"
    if not target.exists():
        _build(compiler, code, flags, target)
    return ctypes.CDLL(str(target))


def supported_paths() -> list[str]:
    """The CPU paths this machine runs, fastest first ("portable" always; [] without a compiler)."""
    global _cpu_paths
    if _cpu_paths is None:
        compiler = _compiler()
        if compiler is None:
            return []
        try:
            probe = _cached_library(compiler, "cpu", (CSRC / "cpu.cpp").read_text(), ["-O2", "-shared", "-fPIC"])
            _cpu_paths = int(probe.lfm_cpu_paths())
        except (OSError, RuntimeError, subprocess.SubprocessError):
            _cpu_paths = 0  # no probe: only the portable path is safe
    return [name for name, (_, bit, _) in PATHS.items() if bit == 0 or _cpu_paths & bit]


def chosen_path() -> str | None:
    """The path `load()` uses: LFMKIT_ISA's if set (checked), else the fastest this CPU runs."""
    want = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if want != "auto" and want not in PATHS:
        raise ConfigError(f"{ENV}={want!r}: choose auto, {', '.join(PATHS)}")
    paths = supported_paths()
    if not paths:
        return None
    if want == "auto":
        return paths[0]
    if want not in paths:
        raise ConfigError(f"{ENV}={want}: this CPU has no {PATHS[want][2]} (it runs {', '.join(paths)})")
    return want


def load() -> ctypes.CDLL | None:
    """The compiled kernel library for the chosen CPU path, building it on first use; None when
    unavailable. Raises ConfigError when LFMKIT_ISA names a path this CPU lacks."""
    global _lib, _tried, build_error
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        if os.environ.get("LFMKIT_NO_KERNELS", "0") not in ("0", ""):
            build_error, _tried = "disabled by LFMKIT_NO_KERNELS", True
            return None
        path = chosen_path()  # a bad LFMKIT_ISA raises here, every call, until it is fixed
        _tried = True
        compiler = _compiler()
        if path is None or compiler is None:
            build_error = "no C++ compiler found (install g++ for the fast quantized kernels)"
            return None
        import torch  # noqa: F401  - loads PyTorch's libgomp first, which the library then shares

        try:
            lib = _cached_library(compiler, f"qkernel-{path}", source(), FLAGS + PATHS[path][0])
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            build_error = str(exc)
            return None
        _declare(lib)
        _lib = lib
        return lib


def reset() -> None:
    """Forget the loaded library so the next `load()` chooses again (tests and benchmarks that
    change LFMKIT_ISA; layers built before keep the functions they looked up)."""
    global _lib, _tried, build_error
    with _lock:
        _lib, _tried, build_error = None, False, None


def _declare(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.lfm_quantize_act.argtypes = [p, i64, i64, i64, ctypes.c_int, p, p, p]
    lib.lfm_q4_gemm.argtypes = [p, p, p, i64, i64, p, p, i64, p]
    lib.lfm_q8_gemm.argtypes = [p, p, i64, i64, i64, p, p, p, i64, p]
    lib.lfm_q4_dequant_bf16.argtypes = [p, p, i64, i64, p]
    lib.lfm_q8_dequant_bf16.argtypes = [p, p, i64, i64, p]
    lib.lfm_q4_dequant_f32.argtypes = [p, p, i64, i64, p]
    lib.lfm_q8_dequant_f32.argtypes = [p, p, i64, i64, p]
    lib.lfm_q4_to_q8.argtypes = [p, p, i64, i64, p, p]
    lib.lfm_scale_int32.argtypes = [p, i64, i64, p, p, p, i64]
    f32 = ctypes.c_float
    lib.lfm_q4_linear.argtypes = [p, i64, i64, p, p, i64, p, p, p, p]
    lib.lfm_q8_linear.argtypes = [p, i64, i64, i64, p, p, p, i64, p, p, p, p]
    lib.lfm_rmsnorm.argtypes = [p, p, i64, i64, f32, p]
    lib.lfm_conv_step.argtypes = [p, i64, p, p, p, i64, i64, i64, p]
    lib.lfm_silu_mul.argtypes = [p, i64, i64, p]
    lib.lfm_float_linear.argtypes = [p, i64, i64, p, i64, p, p, ctypes.c_int, p]
    for fn in (
        "lfm_q4_linear",
        "lfm_q8_linear",
        "lfm_rmsnorm",
        "lfm_conv_step",
        "lfm_silu_mul",
        "lfm_float_linear",
        "lfm_quantize_act",
        "lfm_q4_gemm",
        "lfm_q8_gemm",
        "lfm_q4_dequant_bf16",
        "lfm_q8_dequant_bf16",
        "lfm_q4_dequant_f32",
        "lfm_q8_dequant_f32",
        "lfm_q4_to_q8",
        "lfm_scale_int32",
    ):
        getattr(lib, fn).restype = None
    lib.lfm_decode_scratch_bytes.argtypes = [p, i64, i64]
    lib.lfm_decode_scratch_bytes.restype = i64
    lib.lfm_decode_step.argtypes = [p, p, i64, p, p, p, p, p]
    lib.lfm_decode_step.restype = None
    lib.lfm_decode_tokens.argtypes = [p, p, i64, i64, p, p, p, p, p, p]
    lib.lfm_decode_tokens.restype = None
    lib.lfm_adamw_step.argtypes = [p, ctypes.c_int, p, p, ctypes.c_int, p, p, p, p, i64, p, p, p, p, p, p] + [f32] * 8
    lib.lfm_adamw_step.restype = None
    lib.lfm_float_bf16dp.restype = ctypes.c_int
    lib.lfm_float_bf16dp.argtypes = []
    lib.lfm_has_vnni.restype = ctypes.c_int
    lib.lfm_has_vnni.argtypes = []
    lib.lfm_isa.restype = ctypes.c_char_p
    lib.lfm_isa.argtypes = []


def describe() -> str:
    """One line: which kernels are in use (for bench output and docs)."""
    lib = load()
    if lib is None:
        return f"pure PyTorch fallback ({build_error})"
    return f"lfmkit C++ kernels ({PATHS[active_path()][2]})"


def active_path() -> str | None:
    """The CPU path of the loaded library (None without kernels)."""
    lib = load()
    return lib.lfm_isa().decode() if lib is not None else None
