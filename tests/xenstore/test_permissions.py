"""Xen's permission model, seen from unprivileged domains.

Debian's xenstore-utils only speak as dom0, so domU connections come from
XenstoreServer.listen_as_domain(): a socket whose server-side identity is domain N
(and from guest rings, see test_ring.py). pyxs is used over the same sockets.
"""

from __future__ import annotations

import queue

import pytest
from pyxs import Client as PyxsClient
from pyxs.exceptions import PyXSError

from pyxen.xenstore import XenstoreError


@pytest.fixture
def layout(dom0):
    """What libxl writes for a domain: home owned by the domain, readable by dom0."""
    dom0.write("/local/domain/5/name", "guest5")
    dom0.set_perms("/local/domain/5", ["n5"])
    dom0.set_perms("/local/domain/5/name", ["n0", "r5"])
    dom0.write("/secret/key", "s3cr3t")
    dom0.write("/public/info", "hello")
    dom0.set_perms("/public", ["n0", "r5"])
    dom0.set_perms("/public/info", ["n0", "r5"])
    return dom0


def test_unprivileged_read_refused_where_xen_refuses(host, layout):
    d5 = host.domu(5)
    with pytest.raises(XenstoreError, match="EACCES"):
        d5.read("/secret/key")
    # A missing node under an unreadable parent does not reveal it is missing.
    with pytest.raises(XenstoreError, match="EACCES"):
        d5.read("/secret/nothing")
    assert d5.read("/public/info") == b"hello"
    with pytest.raises(XenstoreError, match="ENOENT"):
        d5.read("/public/nothing")
    with pytest.raises(XenstoreError, match="EACCES"):
        d5.write("/public/info", "overwrite")
    with pytest.raises(XenstoreError, match="EACCES"):
        d5.write("/secret/new", "x")
    with pytest.raises(XenstoreError, match="EACCES"):
        d5.rm("/public/info")
    assert d5.read("name") == b"guest5"  # relative to /local/domain/5


def test_domain_owns_what_it_creates(host, layout):
    d5 = host.domu(5)
    d5.write("data/x", "1")  # /local/domain/5 is n5: the domain may write below
    assert layout.get_perms("/local/domain/5/data/x") == ["n5"]
    d5.set_perms("data/x", ["n5", "r6"])
    with pytest.raises(XenstoreError, match="EPERM"):
        d5.set_perms("data/x", ["n6"])  # only dom0 gives nodes away
    with pytest.raises(XenstoreError, match="EACCES"):
        d5.set_perms("name", ["n0", "b5"])  # read-only to us, not ours


def test_other_domains_are_isolated(host, layout):
    d5, d6 = host.domu(5), host.domu(6)
    d5.write("private", "mine")
    with pytest.raises(XenstoreError, match="EACCES"):
        d6.read("/local/domain/5/private")
    layout.write("/local/domain/5/shared", "")
    layout.set_perms("/local/domain/5/shared", ["n5", "b6"])
    d6.write("/local/domain/5/shared", "from6")
    assert d5.read("shared") == b"from6"


def test_privileged_operations_refused(host, layout):
    d5 = host.domu(5)
    for fn in (lambda: d5.introduce(9, 1, 1), lambda: d5.release(5),
               lambda: d5.set_target(5, 6), lambda: d5.control("print", "x"),
               lambda: d5.resume(5)):
        with pytest.raises(XenstoreError, match="EACCES"):
            fn()
    assert d5.get_domain_path(5) == "/local/domain/5"


def test_set_target_gives_stubdom_its_targets_rights(host, layout):
    host.server.introduce_domain(5)
    stub = host.domu(6)
    with pytest.raises(XenstoreError, match="EACCES"):
        stub.read("/local/domain/5/name")
    layout.set_target(6, 5)
    assert stub.read("/local/domain/5/name") == b"guest5"  # r5 applies to 5's stubdom
    stub.write("/local/domain/5/device-model", "running")  # n5 home: owner rights


def test_watch_does_not_leak_unreadable_changes(host, layout):
    d5 = host.domu(5)
    q: queue.Queue = queue.Queue()
    d5.watch("/", "all", q)
    assert q.get(timeout=5) == ("/", "all")
    layout.write("/secret/key", "changed")  # d5 cannot read it: no event
    layout.write("/public/info", "changed")
    assert q.get(timeout=5) == ("/public/info", "all")
    assert q.empty()


def test_pyxs_as_dom0_and_as_domu(host, layout):
    with PyxsClient(unix_socket_path=host.socket) as c:
        c.write(b"/pyxs/a", b"1")
        assert c.read(b"/pyxs/a") == b"1"
        assert c.list(b"/pyxs") == [b"a"]
        assert c.exists(b"/pyxs/a")
        c.set_perms(b"/pyxs/a", [b"n0", b"r5"])
        assert c.get_perms(b"/pyxs/a") == [b"n0", b"r5"]
        assert c.get_domain_path(5) == b"/local/domain/5"
    host.domu(5)  # creates the dom5 socket
    with PyxsClient(unix_socket_path=str(host.state_dir / "dom5.sock")) as u:
        assert u.read(b"/pyxs/a") == b"1"
        with pytest.raises(PyXSError):
            u.write(b"/pyxs/a", b"2")
        with pytest.raises(PyXSError):
            u.read(b"/secret/key")
        u.write(b"/local/domain/5/pyxs", b"ok")
