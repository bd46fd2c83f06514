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


@pytest.mark.skipif(not XEN_INCLUDE.exists(), reason="needs libxen-dev (scripts/setup installs it)")
def test_mirrors_match_xen_headers(tmp_path: Path) -> None:
    mirrors = _mirrors()
    assert len(mirrors) >= 10, "expected pyxen to mirror the Xen structs it uses"
    src = tmp_path / "layout.c"
    src.write_text(_c_program(mirrors))
    exe = tmp_path / "layout"
    build = subprocess.run(
        ["gcc", "-D__XEN_INTERFACE_VERSION__=__XEN_LATEST_INTERFACE_VERSION__",
         "-o", str(exe), str(src)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    expected: dict[tuple[str, str], int] = {}
    for line in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines():
        ctype, field, value = line.split("|")
        expected[(ctype, field)] = int(value)

    mismatches = []
    for m in mirrors:
        ctype = m._xen_c_type_
        if ctypes.sizeof(m) != expected[(ctype, "sizeof")]:
            mismatches.append(f"sizeof({ctype}): pyxen {ctypes.sizeof(m)}, C {expected[(ctype, 'sizeof')]}")
        for f in _fields(m):
            ours = getattr(m, f).offset
            if ours != expected[(ctype, f)]:
                mismatches.append(f"offsetof({ctype}, {f}): pyxen {ours}, C {expected[(ctype, f)]}")
    assert not mismatches, "\n".join(mismatches)
