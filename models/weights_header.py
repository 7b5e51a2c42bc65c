"""The header of a safetensors file, read and checked without touching the tensors' data.

Layout: an 8-byte little-endian length N, N bytes of JSON {name: {"dtype", "shape", "data_offsets"},
"__metadata__": {str: str}}, then the tensors' bytes. What the header declares is checked against the
file's real size before anyone trusts it: a reader can then compare a network with the tensors, and
weigh what loading them would cost, before allocating anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from gencc.runtime.errors import GenccError
from gencc.runtime.jsonfile import parse_json, short

MAX_HEADER_BYTES = 1 << 24   # gencc's own headers are a few KB (about 100 tensors)
MAX_TENSORS = 1024           # gencc's largest network has 113 tensors; a bound on building what a config asks
MAX_RANK = 8
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class WeightsHeader:
    tensors: dict[str, tuple[str, tuple[int, ...]]]   # name -> (dtype, shape)
    metadata: dict[str, str]

    @property
    def nbytes(self) -> int:
        return sum(DTYPE_BYTES[d] * math.prod(s) for d, s in self.tensors.values())

    @property
    def largest_dim(self) -> int:
        return max((max(s, default=1) for _, s in self.tensors.values()), default=0)


def read_header(file: str | Path) -> WeightsHeader:
    """The checked header of safetensors `file`; a GenccError naming the file for anything malformed."""
    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            prefix = f.read(8)
            n = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 0 < n <= min(MAX_HEADER_BYTES, size - 8):
                raise GenccError(f"weights {str(file)!r} are corrupt: a header of {max(n, 0)} bytes in a file of "
                                 f"{size} (at most {MAX_HEADER_BYTES})")
            text = f.read(n)
    except OSError as e:
        raise GenccError(f"cannot read weights {str(file)!r}: {e.strerror}") from None
    raw = parse_json(text, f"the header of weights {str(file)!r}")
    if not isinstance(raw, dict):
        raise GenccError(f"weights {str(file)!r} are corrupt: the header is not an object")
    metadata = raw.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise GenccError(f"weights {str(file)!r} are corrupt: __metadata__ must map names to strings")
    if len(raw) > MAX_TENSORS:
        raise GenccError(f"weights {str(file)!r} declare {len(raw)} tensors, more than the {MAX_TENSORS} "
                         "any gencc network has")
    tensors, end = {}, 0
    for name, entry in raw.items():
        tensors[name], stop = _entry(file, name, entry)
        end = max(end, stop)
    if 8 + n + end != size:
        raise GenccError(f"weights {str(file)!r} are corrupt: the header accounts for {8 + n + end} bytes, "
                         f"the file has {size}")
    return WeightsHeader(tensors, metadata)


def _entry(file: Path, name: str, e) -> tuple[tuple[str, tuple[int, ...]], int]:
    """(dtype, shape) of one header entry, and where its data ends; its byte range must fit its shape."""
    ok = isinstance(e, dict) and e.get("dtype") in DTYPE_BYTES and isinstance(e.get("shape"), list) \
        and len(e["shape"]) <= MAX_RANK and all(type(d) is int and d >= 0 for d in e["shape"]) \
        and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2 \
        and all(type(o) is int and o >= 0 for o in e["data_offsets"])
    if ok:
        begin, stop = e["data_offsets"]
        ok = stop - begin == DTYPE_BYTES[e["dtype"]] * math.prod(e["shape"])
    if not ok:
        raise GenccError(f"weights {str(file)!r} are corrupt: tensor {short(name)} has the header entry {short(e)}")
    return (e["dtype"], tuple(e["shape"])), stop
