"""Benchmark data from local files, in the Hugging Face datasets' own layout, or from the
Hugging Face datasets cache (hub_data.py).

`--data DIR` holds `DIR/<task>/<split>.jsonl` (or `.json`, `.csv`, `.tsv`, `.parquet`) with the
dataset's own columns and split names, e.g. `DIR/mmlu/test.jsonl` + `DIR/mmlu/dev.jsonl`
(`cais/mmlu`, config `all`). Datasets published as one config per language keep one folder per
config: `DIR/mmmlu/FR_FR/test.jsonl`, `DIR/mgsm/de/test.jsonl`.

Nothing is downloaded. A missing file is one `EvalError` line that says which file to put where
and which Hugging Face dataset it comes from. Every file read is hashed (sha256 of its bytes),
so results name exactly the data they were computed on.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EvalError

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv", ".tsv")


@dataclass
class Split:
    """The rows of one split, where they came from (a file, or `hf:<dataset>/<config>/<split>`)
    and their sha256."""

    path: Path | str
    rows: list[dict]
    sha256: str


@dataclass
class DataFiles:
    """Every file a task read, for results.json: paths and one combined hash."""

    files: dict[str, str] = field(default_factory=dict)  # path -> sha256

    def add(self, split: Split) -> None:
        self.files[str(split.path)] = split.sha256

    def summary(self) -> dict:
        combined = hashlib.sha256("".join(f"{p}\0{h}\n" for p, h in sorted(self.files.items())).encode())
        return {"files": dict(sorted(self.files.items())), "sha256": combined.hexdigest()}


def find_split(folder: Path, split: str) -> Path | None:
    """`folder/<split>.<ext>` for the first extension present, else None."""
    for ext in EXTENSIONS:
        p = folder / f"{split}{ext}"
        if p.is_file():
            return p
    return None


def read_split(folder: Path, split: str, dataset: str, required: tuple[str, ...]) -> Split:
    """Rows of `folder/<split>.*`; EvalError naming the file to supply or the bad row."""
    path = find_split(folder, split)
    if path is None:
        raise EvalError(
            f"missing data: put {dataset}'s '{split}' split at {folder / (split + '.jsonl')} "
            f"(or .csv / .parquet) with its columns {', '.join(required)}"
        )
    return read_file(path, required, f"{dataset}'s columns")


def read_file(path: Path, required: tuple[str, ...], what: str = "columns") -> Split:
    """Rows of one .jsonl / .json / .csv / .tsv / .parquet file, each holding the `required` columns."""
    if path.suffix not in EXTENSIONS:
        raise EvalError(f"{path}: expected a {' / '.join(EXTENSIONS)} file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EvalError(f"{path}: no such file") from None
    rows = _parse(path, raw)
    check_columns(rows, required, str(path), what, "line" if path.suffix == ".jsonl" else "row")
    return Split(path, rows, hashlib.sha256(raw).hexdigest())


def check_columns(rows: list[dict], required: tuple[str, ...], where: str, what: str, unit: str = "row") -> None:
    """EvalError naming the first row that lacks one of the `required` columns."""
    for i, row in enumerate(rows):
        missing = [c for c in required if c not in row]
        if missing:
            raise EvalError(
                f"{where}: {unit} {i + 1} has no column {missing[0]!r} (expected {what}: {', '.join(required)})"
            )


def _parse(path: Path, raw: bytes) -> list[dict]:
    try:
        text = raw.decode("utf-8") if path.suffix != ".parquet" else ""
    except UnicodeDecodeError as exc:
        raise EvalError(f"{path}: not UTF-8 text ({exc})") from None
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalError(f"{path}: line {n} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise EvalError(f"{path}: line {n} is not a JSON object")
            rows.append(row)
        return rows
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EvalError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        if not (isinstance(data, list) and all(isinstance(r, dict) for r in data)):
            raise EvalError(f"{path}: expected a JSON list of objects (one per row)")
        return data
    if path.suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix == ".tsv" else ",")
        return [_decode_cells(row) for row in reader]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EvalError(
            f"{path}: reading parquet needs pyarrow (pip install 'lfmkit[eval]'), or convert the file to .jsonl"
        ) from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own hierarchy
        raise EvalError(f"{path}: not a readable parquet file ({exc})") from None


def _decode_cells(row: dict) -> dict:
    """CSV cells holding JSON lists or objects (a `choices` column, IFEval's `kwargs`) are decoded."""
    out = {}
    for k, v in row.items():
        if isinstance(v, str) and v[:1] in "[{":
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        out[k] = v
    return out


def config_folders(folder: Path) -> list[Path]:
    """Sub-folders holding per-config splits (`DIR/mmmlu/FR_FR/`), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.*")))


@dataclass(frozen=True)
class HubDataset:
    """Where a task's data lives on the Hugging Face Hub: the dataset, its one config (None for
    the default), or the configs that are the task's subtasks (MMMLU's languages ...)."""

    path: str
    config: str | None = None
    configs: tuple[str, ...] = ()


class LocalFiles:
    """`DIR/<task>/<split>.<ext>`, or `DIR/<task>/<config>/<split>.<ext>` per config."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def describe(self, task: str) -> str:
        return str(self.root / task)

    def read(self, task: str, split: str, dataset: str, required: tuple[str, ...], config: str | None = None) -> Split:
        folder = self.root / task if config is None else self.root / task / config
        return read_split(folder, split, dataset, required)

    def configs(self, task: str, split: str) -> list[str | None]:
        """[None] when the split sits in the task's folder, else the config folders holding files."""
        folder = self.root / task
        if find_split(folder, split):
            return [None]
        return [p.name for p in config_folders(folder)]


__all__ = [
    "Split",
    "DataFiles",
    "HubDataset",
    "LocalFiles",
    "read_split",
    "read_file",
    "find_split",
    "check_columns",
    "config_folders",
    "EXTENSIONS",
]
