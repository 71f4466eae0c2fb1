"""Peak memory while loading a real-size bf16 checkpoint: lfmkit vs transformers, same run.

Writes a random-weight checkpoint of a preset (default lfm2-1.2b, 2.3 GB) tensor by tensor,
then loads it in fresh subprocesses and reports the peak RSS increase over the process's
RSS before the load, as a multiple of the file size.

    python benchmarks/load_memory.py [--preset lfm2-1.2b] [--dir /tmp/lfmkit-load-bench] [--no-transformers]
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from lfmkit import LFM2Config
from lfmkit.model.lfm2 import LFM2

DTYPE_TAG = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16"}


def write_checkpoint(config: LFM2Config, directory: Path, dtype=torch.bfloat16) -> Path:
    """Stream a random-weight safetensors file to disk without holding the model in memory."""
    with torch.device("meta"):
        meta = LFM2(config)
    params = [(n, p.shape) for n, p in meta.named_parameters()]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    esize = torch.empty((), dtype=dtype).element_size()
    for name, shape in params:
        n = esize
        for s in shape:
            n *= s
        header[name] = {"dtype": DTYPE_TAG[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    directory.mkdir(parents=True, exist_ok=True)
    config.copy(torch_dtype=str(dtype).replace("torch.", "")).save_pretrained(directory)
    path = directory / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _name, shape in params:
            t = (torch.randn(shape, generator=g) * 0.02).to(dtype)
            f.write(t.view(-1).view(torch.uint8).numpy().tobytes())
    return path


PROBE = textwrap.dedent("""
    import sys, time, torch
    def status_kb(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field))
    which, path = sys.argv[1], sys.argv[2]
    if which == "lfmkit":
        import lfmkit
        load = lambda: lfmkit.LFM2.from_pretrained(path)
    else:
        from transformers import AutoModelForCausalLM
        load = lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    base = status_kb("VmRSS")
    t = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - t
    peak = status_kb("VmHWM")  # this process's own peak (ru_maxrss also counts the parent's)
    print((peak - base) * 1024, seconds)
""")


def measure(which: str, directory: Path) -> tuple[int, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, which, str(directory)], capture_output=True, text=True, check=True
    )
    peak, seconds = out.stdout.split()[-2:]
    return int(peak), float(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lfm2-1.2b")
    ap.add_argument("--dir", default="/tmp/lfmkit-load-bench")
    ap.add_argument("--no-transformers", action="store_true")
    args = ap.parse_args()
    directory = Path(args.dir) / args.preset
    file = directory / "model.safetensors"
    if not file.exists():
        write_checkpoint(LFM2Config.from_preset(args.preset), directory)
    size = file.stat().st_size
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    print(f"{args.preset} bf16 checkpoint: {size / 2**30:.2f} GiB")
    engines = ["lfmkit"] + ([] if args.no_transformers else ["transformers"])
    for which in engines:
        peak, seconds = measure(which, directory)
        print(f"{which:>12}: peak +{peak / 2**30:.2f} GiB = {peak / size:.2f}x file size, load {seconds:.1f} s")


if __name__ == "__main__":
    main()
