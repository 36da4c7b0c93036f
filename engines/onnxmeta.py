"""An ONNX model's metadata_props (key -> value strings), read straight from the file.

Exporters write what the model needs to be run there: Ultralytics puts its class names, input size, task,
stride and keypoint shape in it. Reading it must not need the `onnx` package (not a runtime dependency) nor
loading the graph, so this walks the top level of the ModelProto protobuf and seeks past everything but
field 14 (metadata_props: repeated StringStringEntryProto {1: key, 2: value}).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

_METADATA_PROPS = 14
_MAX_ENTRY = 16 << 20  # one metadata entry larger than this is not metadata: stop reading


def _varint(f: BinaryIO) -> int | None:
    shift = value = 0
    while True:
        byte = f.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _entry(data: bytes) -> tuple[str, str]:
    """A StringStringEntryProto: field 1 key, field 2 value, both length-delimited."""
    key = value = b""
    i = 0
    while i < len(data):
        tag = data[i]
        i += 1
        length = shift = 0
        while True:
            b = data[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        if tag == 0x0A:
            key = data[i:i + length]
        elif tag == 0x12:
            value = data[i:i + length]
        i += length
    return key.decode("utf-8", "replace"), value.decode("utf-8", "replace")


def read_metadata(path: Path) -> dict[str, str]:
    """metadata_props of the ONNX file at `path`; {} when it has none or is not readable as ONNX."""
    out: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            while True:
                tag = _varint(f)
                if tag is None:
                    break
                field, wire = tag >> 3, tag & 7
                if wire == 0:
                    _varint(f)
                elif wire == 1:
                    f.seek(8, 1)
                elif wire == 5:
                    f.seek(4, 1)
                elif wire == 2:
                    length = _varint(f)
                    if length is None:
                        break
                    if field == _METADATA_PROPS and length <= _MAX_ENTRY:
                        key, value = _entry(f.read(length))
                        if key:
                            out[key] = value
                    else:
                        f.seek(length, 1)
                else:
                    raise ValueError(f"wire type {wire}")
    except (OSError, ValueError, IndexError) as exc:
        log.debug("no metadata read from %s: %s", path, exc)
    return out


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(tag: int, data: bytes) -> bytes:
    """One length-delimited field: its tag byte (field number << 3 | wire type 2), the length, the bytes."""
    return bytes([tag]) + _encode_varint(len(data)) + data


def append_metadata(onnx_path: Path, entries: dict[str, str]) -> None:
    """Add metadata_props to an ONNX file without the onnx package: a protobuf message's repeated field may
    come anywhere, so appending ModelProto field 14 entries ({1: key, 2: value}) to the file is valid."""
    with open(onnx_path, "ab") as f:
        for key, value in entries.items():
            entry = _field(0x0A, key.encode()) + _field(0x12, value.encode())
            f.write(_field(_METADATA_PROPS << 3 | 2, entry))
