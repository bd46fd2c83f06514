"""Watches: (path, token) registrations that fire on the node and its subtree.

A change at /a/b/c fires watches registered at /a/b/c, /a/b, /a and /. Removing /a/b
also fires watches registered anywhere below /a/b, each with its own path. A watch
registered with a relative path gets relative event paths. The watcher must be able
to read the changed node, as in Xen, so watches do not leak what permissions hide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import path as P
from .perms import READ
from .store import Event

if TYPE_CHECKING:
    from .connection import Connection


class Watch:
    __slots__ = ("conn", "path", "token", "relative")

    def __init__(self, conn: Connection, path: str, token: bytes, relative: bool) -> None:
        self.conn = conn
        self.path = path
        self.token = token
        self.relative = relative

    def event_path(self, path: str) -> str:
        if self.relative:
            home = P.domain_path(self.conn.caller.domid) + "/"
            if path.startswith(home):
                return path[len(home):]
        return path


class WatchTable:
    def __init__(self) -> None:
        self.by_path: dict[str, list[Watch]] = {}

    def add(self, watch: Watch) -> None:
        self.by_path.setdefault(watch.path, []).append(watch)

    def find(self, conn: Connection, path: str, token: bytes) -> Watch | None:
        for w in self.by_path.get(path, ()):
            if w.conn is conn and w.token == token:
                return w
        return None

    def remove(self, watch: Watch) -> None:
        lst = self.by_path.get(watch.path)
        if lst and watch in lst:
            lst.remove(watch)
            if not lst:
                del self.by_path[watch.path]

    def matches(self, event: Event) -> Iterator[tuple[Watch, str]]:
        """(watch, absolute event path) pairs this change should notify."""
        by_path = self.by_path
        if not by_path:
            return
        path = event.path
        if path[0] == "@":
            for w in self.by_path.get(path, ()):
                if w.conn.caller.perm_for(event.perms) & READ:
                    yield w, path
            return
        for anc in P.ancestors_and_self(path):
            for w in by_path.get(anc, ()):
                if w.conn.caller.perm_for(event.perms) & READ:
                    yield w, path
        if event.removed:
            for wpath, watches in list(by_path.items()):
                if wpath != path and wpath[0] == "/" and P.is_under(wpath, path):
                    perms = event.removed.get(wpath, event.perms)
                    for w in watches:
                        if w.conn.caller.perm_for(perms) & READ:
                            yield w, wpath
