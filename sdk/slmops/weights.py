"""Model files: check that a model folder is whole before it is registered or served, and fingerprint its weights.

    from slmops import weights
    hashes = weights.verify_weights(folder)   # {"model/model.safetensors": "<sha256>", ...}; UserError naming a
                                              # truncated or damaged file (safetensors header, config, shard index)
    weights.check_files(folder)               # the same checks without hashing (serving a local folder)
    weights.check_hashes(folder, hashes)      # UserError naming the first file whose bytes differ from `hashes`

Works on the three layouts slmops moves around: a Hugging Face folder (`config.json`, `*.safetensors`), the
finetune step's MLflow model (`MLmodel`, `model/...`) and an ONNX Runtime GenAI folder (`genai_config.json`,
`model.onnx`, `model.onnx.data`, and `adapters/<name>.onnx_adapter` beside them). Only the standard library: serving
checks a model without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path

from slmops.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".onnx.data", ".onnx_data",
                   ".onnx_adapter")  # .onnx_adapter: an adapter file of a multi-adapter ORT GenAI folder
CONFIG_NAMES = ("config.json", "genai_config.json", "generation_config.json", "model.safetensors.index.json")
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_FIX = "re-export or re-download the model (a copy cut short by a full disk or an interrupted transfer looks like this)"


def weight_files(folder: Path) -> list[Path]:
    """The weight files under `folder` (any depth), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_safetensors(path: Path) -> None:
    """UserError unless `path` is a whole safetensors file: its header parses and its tensors exactly fill the rest."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise UserError(f"{path}: {size} bytes, shorter than a safetensors header; {_FIX}")
        n = struct.unpack("<Q", prefix)[0]
        if n > min(size - 8, _MAX_HEADER):
            raise UserError(f"{path}: its header claims {n} bytes but the file has {size}; not a whole safetensors "
                            f"file; {_FIX}")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: the safetensors header is not valid JSON ({exc}); {_FIX}") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: the safetensors header is not a JSON object; {_FIX}")
    data_len, covered = size - 8 - n, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            width = _DTYPE_BYTES.get(info["dtype"])  # None for dtypes this table lacks (sub-byte ones): no size check
            want = end - begin if width is None else width * math.prod(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: tensor {name!r} has a malformed entry in the safetensors header; "
                            f"{_FIX}") from None
        if not 0 <= begin <= end or end - begin != want:
            raise UserError(f"{path}: tensor {name!r} spans bytes {begin}..{end}, which does not match its dtype and "
                            f"shape ({want} bytes); {_FIX}")
        covered = max(covered, end)
    if covered != data_len:
        what = "truncated" if covered > data_len else "has trailing bytes"
        raise UserError(f"{path}: {what}: the header describes {covered} bytes of tensor data, the file holds "
                        f"{data_len}; {_FIX}")


def _check_config(path: Path) -> None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc}); {_FIX}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: holds a JSON {type(value).__name__}, not an object; {_FIX}")
    if path.name == "model.safetensors.index.json":
        missing = sorted({s for s in (value.get("weight_map") or {}).values() if not (path.parent / s).is_file()})
        if missing:
            raise UserError(f"{path}: names shard(s) {missing} that are not in {path.parent}; {_FIX}")


def check_files(folder: str | os.PathLike) -> list[Path]:
    """Check every weight file and config under `folder` is whole, without hashing; return the weight files.

    UserError naming the file for a truncated or damaged safetensors file, an empty weight file, a config that does
    not parse, a shard index naming missing shards, or a folder with no weight files at all."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a model folder")
    for config in sorted(p for p in folder.rglob("*") if p.name in CONFIG_NAMES and p.is_file()):
        _check_config(config)
    files = weight_files(folder)
    if not files:
        raise UserError(f"{folder}: no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)}) in it; "
                        f"pass the folder the finetune or optimize step wrote")
    for path in files:
        if path.name.endswith(".safetensors"):
            check_safetensors(path)
        elif path.stat().st_size == 0:
            raise UserError(f"{path}: empty weight file; {_FIX}")
    return files


def verify_weights(folder: str | os.PathLike) -> dict[str, str]:
    """check_files(), then {path relative to `folder`: sha256} of every weight file (what register records)."""
    return {p.relative_to(folder).as_posix(): sha256(p) for p in check_files(folder)}


def check_hashes(folder: str | os.PathLike, expected: dict[str, str]) -> None:
    """UserError naming the first file under `folder` that is missing or whose sha256 differs from `expected`."""
    folder = Path(folder)
    for rel, want in sorted(expected.items()):
        path = folder / rel
        if not path.is_file():
            raise UserError(f"{path}: missing; the registered model had it (sha256 {want[:16]}...); delete {folder} "
                            f"so the model is downloaded again, or re-register it")
        got = sha256(path)
        if got != want:
            raise UserError(f"{path}: sha256 {got[:16]}... differs from {want[:16]}... recorded when the model was "
                            f"registered: the file changed or is damaged; delete {folder} so the model is downloaded "
                            f"again, or re-register it")
