"""Every ctypes mirror of a Xen struct matches the real C header, byte for byte.

A C program compiled against Xen 4.17's public headers (Debian's libxen-dev) prints the
size of each mirrored type and the offset of each of its fields; pyxen's ctypes classes
must agree. Mirrors declare `_xen_c_type_` (the C type) and `_xen_header_` (what to
#include); their ctypes field names are the C member names.
"""

from __future__ import annotations

import ctypes
import importlib
import pkgutil
import subprocess
from pathlib import Path

import pytest

import pyxen.hypervisor.public as public_pkg

XEN_INCLUDE = Path("/usr/include/xen/xen.h")


def _mirrors() -> list[type]:
    found: dict[str, type] = {}
    packages = [public_pkg]
    try:
        packages.append(importlib.import_module("pyxen.xenstore"))
    except ImportError:
        pass
    for pkg in packages:
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, ctypes.Structure | ctypes.Union)
                    and vars(obj).get("_xen_c_type_")
                ):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def _fields(cls: type) -> list[str]:
    """Named (non-anonymous, non-padding) fields that C can take offsetof() of."""
    anonymous = set(getattr(cls, "_anonymous_", ()))
    skip = set(getattr(cls, "_xen_skip_fields_", ()))
    names = []
    for entry in cls._fields_:
        name = entry[0]
        if name in anonymous or name in skip or name.startswith("_pad") or len(entry) == 3:
            continue
        names.append(name)
    return names


def _c_program(mirrors: list[type]) -> str:
    headers = ["xen/xen.h"] + sorted({m._xen_header_ for m in mirrors} - {"xen/xen.h"})
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <stdint.h>"]
    lines += [f"#include <{h}>" for h in headers]
    lines.append("int main(void) {")
    for m in mirrors:
        ctype = m._xen_c_type_
        lines.append(f'  printf("%s|sizeof|%zu\\n", "{ctype}", sizeof({ctype}));')
        for f in _fields(m):
            lines.append(
                f'  printf("%s|{f}|%zu\\n", "{ctype}", offsetof({ctype}, {f}));'
            )
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def _expected(mirrors: list[type], tmp_path: Path, m32: bool) -> dict[tuple[str, str], int]:
    tag = "m32" if m32 else "m64"
    src = tmp_path / f"layout_{tag}.c"
    src.write_text(_c_program(mirrors))
    exe = tmp_path / f"layout_{tag}"
    build = subprocess.run(
        ["gcc", *(["-m32"] if m32 else []),
         "-D__XEN_INTERFACE_VERSION__=__XEN_LATEST_INTERFACE_VERSION__",
         "-o", str(exe), str(src)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    expected: dict[tuple[str, str], int] = {}
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        ctype, field, value = line.split("|")
        expected[(ctype, field)] = int(value)
    return expected


def _mismatches(mirrors: list[type], expected: dict[tuple[str, str], int], abi: str) -> list[str]:
    out = []
    for m in mirrors:
        ctype = m._xen_c_type_
        if ctypes.sizeof(m) != expected[(ctype, "sizeof")]:
            out.append(f"{abi} sizeof({ctype}) [{m.__name__}]: pyxen {ctypes.sizeof(m)}, "
                       f"C {expected[(ctype, 'sizeof')]}")
        for f in _fields(m):
            ours = getattr(m, f).offset
            if ours != expected[(ctype, f)]:
                out.append(f"{abi} offsetof({ctype}, {f}) [{m.__name__}]: pyxen {ours}, "
                           f"C {expected[(ctype, f)]}")
    return out


def _is_compat(cls: type) -> bool:
    return vars(cls).get("_xen_abi_", getattr(cls, "_xen_abi_", "")) == "x86_32"


@pytest.mark.skipif(not XEN_INCLUDE.exists(), reason="needs libxen-dev (scripts/setup installs it)")
def test_mirrors_match_xen_headers(tmp_path: Path) -> None:
    """x86_64: every native mirror against the headers as a 64-bit guest sees them."""
    mirrors = [m for m in _mirrors() if not _is_compat(m)]
    assert len(mirrors) >= 10, "expected pyxen to mirror the Xen structs it uses"
    expected = _expected(mirrors, tmp_path, m32=False)
    mismatches = _mismatches(mirrors, expected, "x86_64")
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.skipif(not XEN_INCLUDE.exists(), reason="needs libxen-dev (scripts/setup installs it)")
def test_compat_mirrors_match_xen_headers_m32(tmp_path: Path) -> None:
    """x86_32: each compat twin, and each native mirror that has none (its layout must then
    be the same for a 32-bit guest), against the headers compiled with -m32."""
    natives = [m for m in _mirrors() if not _is_compat(m)]
    twins = [m for m in _mirrors() if _is_compat(m)]
    for t in twins:
        assert any(vars(n).get("_compat_") is t for n in natives), \
            f"{t.__name__} is not linked to a native mirror with @compat_of"
    checked = twins + [n for n in natives if "_compat_" not in vars(n)]
    expected = _expected(checked, tmp_path, m32=True)
    mismatches = _mismatches(checked, expected, "x86_32")
    assert not mismatches, "\n".join(mismatches)
