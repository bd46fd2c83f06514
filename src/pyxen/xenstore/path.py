"""Xenstore path rules (xenstore.txt): characters, shape, length, relative resolution."""

from __future__ import annotations

import re

from .wire import XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX, XenstoreError

SPECIAL_PATHS = ("@introduceDomain", "@releaseDomain")
_VALID = re.compile(r"[A-Za-z0-9\-/_@]+\Z")
_LOCAL = re.compile(r"/local/domain/(\d{1,5})")


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def decode(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise XenstoreError("EINVAL", "non-ASCII path") from None


def resolve(raw: bytes | str, domid: int, *, special: bool = False,
            path_quota: int | None = None) -> str:
    """Absolute, validated form of a client path; EINVAL for anything Xen rejects.

    Relative paths are taken from the connection's home /local/domain/<domid>.
    ``special`` admits @introduceDomain/@releaseDomain (watches and perms only).
    ``path_quota`` bounds the part below /local/domain/N for unprivileged callers.
    """
    path = decode(raw) if isinstance(raw, bytes) else raw
    if special and path in SPECIAL_PATHS:
        return path
    if not path or not _VALID.match(path) or path[0] == "@":
        raise XenstoreError("EINVAL", "bad path")
    if path[0] != "/":
        if len(path) > XENSTORE_REL_PATH_MAX:
            raise XenstoreError("EINVAL", "relative path too long")
        path = f"/local/domain/{domid}/{path}"
    if len(path) > XENSTORE_ABS_PATH_MAX:
        raise XenstoreError("EINVAL", "path too long")
    if path != "/" and (path.endswith("/") or "//" in path):
        raise XenstoreError("EINVAL", "bad path")
    if path_quota is not None:
        m = _LOCAL.match(path)
        if len(path) - (m.end() if m else 0) > path_quota:
            raise XenstoreError("EINVAL", "path longer than the path-length quota")
    return path


def parent(path: str) -> str:
    i = path.rfind("/")
    return "/" if i <= 0 else path[:i]


def basename(path: str) -> str:
    return path[path.rfind("/") + 1:]


def join(parent_path: str, name: str) -> str:
    return f"/{name}" if parent_path == "/" else f"{parent_path}/{name}"


def ancestors_and_self(path: str):
    """'/a/b' -> '/a/b', '/a', '/'."""
    yield path
    while path != "/":
        path = parent(path)
        yield path


def is_under(path: str, top: str) -> bool:
    """True when path is top or inside top's subtree."""
    return path == top or top == "/" or path.startswith(top + "/")
