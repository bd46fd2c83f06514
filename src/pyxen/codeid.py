"""Which pyxen code a process runs: a fingerprint of the imported pyxen package.

hostd compares its own with the VMM template's when it adopts one (after a restart or an
upgrade in place: toolstack/template.py). A template of other code would fork that other
code, with the environment of the hostd that started it, for every new domain; so a
template whose fingerprint differs is replaced. Computed once per process, at first use
(the template: before it serves), from what was imported, not from what is on disk later.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path

import pyxen

#: settings a VMM inherits from the template's environment (PYXEN_RUNDIR is per request)
_ENV_PREFIXES = ("PYXEN_",)
_ENV_NAMES = ("PYTHONPATH",)


def _env_items() -> list[str]:
    return sorted(f"{k}={v}" for k, v in os.environ.items()
                  if (k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)) and k != "PYXEN_RUNDIR")


@functools.cache
def fingerprint() -> str:
    """``VERSION PACKAGE_DIR DIGEST``: the digest covers the interpreter, the package's
    files (names, sizes, modification times; __pycache__ aside) and the PYXEN_*
    settings. A checkout updated in place (git pull, a rebuilt extension) changes it."""
    pkg = Path(pyxen.__file__).resolve().parent
    h = hashlib.sha256()
    h.update(sys.executable.encode() + b"\0" + sys.version.encode() + b"\0")
    for dirpath, dirnames, filenames in os.walk(pkg):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            rel = os.path.relpath(path, pkg)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for item in _env_items():
        h.update(item.encode() + b"\0")
    return f"{pyxen.__version__} {pkg} {h.hexdigest()[:16]}"
