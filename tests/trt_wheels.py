"""The names each TensorRT version's Python API has, read from its bindings wheel without importing it.

The wheels (`tensorrt_bindings` 8.6, `tensorrt-cu12-bindings` 10.x/11.x) are plain files on PyPI; the
libraries their module links are not, so it cannot be imported here. `.ci/fetch-tensorrt-bindings`
downloads the versions listed in `.ci/tensorrt-bindings.txt` into `.ci/cache/tensorrt-bindings/` (git-
ignored); nothing is downloaded at test time.

The module is pybind11: every class, enum member, method, property and keyword-argument name is a C string
in its read-only data. Two readings, united: strings that are a whole identifier, and (because the linker
merges a string into the tail of a longer one, e.g. "INT8" into "UINT8") the identifier strings that the
x86-64 code points at with a RIP-relative `lea`, which is how the registration code passes each name to
pybind11. Names defined in the package's __init__.py (nptype, __version__) are added from its source. The
strings say which names exist, not on which class: the check is by name.
"""

from __future__ import annotations

import ast
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIST = REPO / ".ci" / "tensorrt-bindings.txt"
CACHE = REPO / ".ci" / "cache" / "tensorrt-bindings"

_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_WHOLE = re.compile(rb"(?<=\x00)[A-Za-z_][A-Za-z0-9_]*(?=\x00)")
_LEA_RIP = re.compile(rb"[\x48\x4c]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]", re.S)  # lea r64, [rip + disp32]


@dataclass(frozen=True)
class Bindings:
    version: str
    wheel: Path
    names: frozenset[str]

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def listed_versions() -> list[str]:
    """The versions .ci/tensorrt-bindings.txt pins ("tensorrt-cu12-bindings==10.3.0" -> "10.3.0")."""
    lines = (line.split("#")[0].strip() for line in LIST.read_text().splitlines())
    return [line.partition("==")[2] for line in lines if line]


def find_wheel(version: str, directory: Path = CACHE) -> Path | None:
    found = sorted(directory.glob(f"tensorrt*_bindings-{version}-*.whl")) if directory.is_dir() else []
    return found[0] if found else None


def read_bindings(wheel: Path) -> Bindings:
    with zipfile.ZipFile(wheel) as z:
        modules = [n for n in z.namelist() if re.fullmatch(r"tensorrt[a-z_]*/tensorrt(\.cpython-[^/]*)?\.so", n)]
        if len(modules) != 1:
            raise ValueError(f"{wheel.name}: expected one tensorrt*/tensorrt*.so, found {modules}")
        names = set(so_names(z.read(modules[0])))
        init = ast.parse(z.read(modules[0].rpartition("/")[0] + "/__init__.py"))
    version = None
    for node in ast.walk(init):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                    if target.id == "__version__" and isinstance(node.value, ast.Constant):
                        version = node.value.value
                elif isinstance(target, ast.Attribute):  # Logger.Severity = ILogger.Severity
                    names.add(target.attr)
    if version is None:
        raise ValueError(f"{wheel.name}: no __version__ in its __init__.py")
    return Bindings(version, wheel, frozenset(names))


def so_names(data: bytes) -> set[str]:
    names = {m.group().decode() for m in _WHOLE.finditer(data)}
    return names | _lea_targets(data)


def _lea_targets(data: bytes) -> set[str]:
    """Identifier strings in .rodata that .text loads with `lea reg, [rip+disp]` (ELF64 x86-64 only)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or struct.unpack_from("<H", data, 18)[0] != 62:
        return set()
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    entsize, count, strndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * entsize) for i in range(count)]
    strtab = headers[strndx][4]
    sections = {data[strtab + h[0]: data.index(b"\0", strtab + h[0])].decode(): h[3:6] for h in headers}
    text_addr, text_off, text_size = sections[".text"]
    rodata = [v for k, v in sections.items() if k.startswith(".rodata")]
    found = set()
    for m in _LEA_RIP.finditer(data, text_off, text_off + text_size):
        at = m.start() - text_off
        target = text_addr + at + 7 + struct.unpack_from("<i", data, m.start() + 3)[0]
        for addr, off, size in rodata:
            if addr <= target < addr + size:
                start = off + target - addr
                end = data.find(b"\0", start, start + 128)
                if end > start and _IDENT.fullmatch(data, start, end):
                    found.add(data[start:end].decode())
                break
    return found
