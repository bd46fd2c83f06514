"""Random operation sequences against the daemon and a dict model of the tree."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyxen.xenstore import XenstoreError

_counter = itertools.count()
segment = st.sampled_from(["a", "b", "c"])
relpath = st.lists(segment, min_size=1, max_size=3).map("/".join)
value = st.binary(max_size=20)
op = st.one_of(
    st.tuples(st.just("write"), relpath, value),
    st.tuples(st.just("mkdir"), relpath, st.none()),
    st.tuples(st.just("rm"), relpath, st.none()),
    st.tuples(st.just("read"), relpath, st.none()),
    st.tuples(st.just("dir"), relpath, st.none()),
    st.tuples(st.just("tx"), st.lists(st.tuples(st.sampled_from(["write", "rm"]), relpath,
                                                value), max_size=4), st.booleans()),
)


class Model:
    """The xenstore.txt semantics in a dict: implicit parents, recursive rm."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.nodes: dict[str, bytes] = {root: b""}

    def _parents(self, p: str) -> None:
        parts = p.split("/")
        for i in range(len(parts) - 1, 0, -1):
            q = "/".join(parts[:i])
            if len(q) < len(self.root):
                break
            self.nodes.setdefault(q, b"")

    def write(self, p: str, v: bytes) -> None:
        self._parents(p)
        self.nodes[p] = v

    def mkdir(self, p: str) -> None:
        self._parents(p)
        self.nodes.setdefault(p, b"")

    def rm(self, p: str) -> str | None:
        if p not in self.nodes:
            return None if p.rsplit("/", 1)[0] in self.nodes else "ENOENT"
        for q in [q for q in self.nodes if q == p or q.startswith(p + "/")]:
            del self.nodes[q]
        return None

    def children(self, p: str) -> list[str]:
        return sorted(q[len(p) + 1:] for q in self.nodes
                      if q.startswith(p + "/") and "/" not in q[len(p) + 1:])


def _apply(c, model: Model, kind: str, path: str, val, tx: int = 0) -> None:
    if kind == "write":
        c.write(path, val, tx)
        model.write(path, val)
    elif kind == "mkdir":
        c.mkdir(path, tx)
        model.mkdir(path)
    elif kind == "rm":
        err = model.rm(path)
        if err:
            with pytest.raises(XenstoreError, match=err):
                c.rm(path, tx)
        else:
            c.rm(path, tx)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, max_size=25))
def test_daemon_matches_model(dom0, ops):
    root = f"/prop{next(_counter)}"
    dom0.mkdir(root)
    model = Model(root)
    for kind, arg, extra in ops:
        if kind == "tx":
            tx = dom0.transaction_start()
            shadow = Model(root)
            shadow.nodes = dict(model.nodes)
            for k, rel, v in arg:
                _apply(dom0, shadow, k, f"{root}/{rel}", v, tx)
            assert dom0.transaction_end(tx, commit=extra)
            if extra:
                model = shadow
            continue
        path = f"{root}/{arg}"
        if kind in ("write", "mkdir", "rm"):
            _apply(dom0, model, kind, path, extra)
        elif kind == "read":
            if path in model.nodes:
                assert dom0.read(path) == model.nodes[path]
            else:
                with pytest.raises(XenstoreError, match="ENOENT"):
                    dom0.read(path)
        elif kind == "dir":
            if path in model.nodes:
                assert sorted(dom0.directory(path)) == model.children(path)
            else:
                with pytest.raises(XenstoreError, match="ENOENT"):
                    dom0.directory(path)
    # Finally the whole subtree must agree.
    stack = [root]
    seen = {}
    while stack:
        p = stack.pop()
        seen[p] = dom0.read(p)
        stack.extend(f"{p}/{ch}" for ch in dom0.directory(p))
    assert seen == model.nodes
    dom0.rm(root)
