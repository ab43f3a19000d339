"""IDX files (the MNIST family's format): write, and read with every check."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

_DTYPES = {0x08: np.uint8}  # IDX type codes this project reads (MNIST-family files are all unsigned bytes)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file, gzipped when the name ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    if str(path).endswith(".gz"):  # no name, mtime 0: the same array gives the same bytes
        with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
            f.write(header + array.tobytes())
    else:
        with open(path, "wb") as f:
            f.write(header + array.tobytes())


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not), validating magic number, dimensions and length."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run `dvc repro download` first") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: bad magic number {raw[:4].hex() or 'empty'} (an IDX file starts 0000 08 0N)")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise DataError(f"{path}: IDX element type 0x{code:02x} unsupported (expected 0x08, unsigned byte)")
    if not 1 <= ndim <= 4 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: bad IDX header ({ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"{path}: header says {'x'.join(map(str, dims))} = {int(np.prod(dims))} bytes of data, "
                        f"file has {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def validate_idx(path: Path) -> None:
    """Header/length check for files with no known checksum (the `idx` dataset)."""
    read_idx(path)
