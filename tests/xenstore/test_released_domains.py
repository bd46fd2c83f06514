"""What a released domain leaves behind, as in Xen 4.17 (XSA-322, XSA-419).

Xen's xenstored forgets a domain completely when it goes away: nodes it owns are
removed (with -K/--keep-orphans: handed to dom0), and ACL entries naming it elsewhere
are marked XS_PERM_IGNORE, so a new domain that gets the same domid inherits nothing.
GET_PERMS still lists ignored entries (xenstore_perm_to_string() masks the flag).
"""

from __future__ import annotations

import json
import queue

import pytest
from pyxs import Client as PyxsClient
from pyxs.exceptions import PyXSError

from pyxen.xenstore import XenstoreClient, XenstoreError, XenstoreServer


def _usage(client: XenstoreClient, domid: int) -> dict[str, int]:
    out = client.control("quota", str(domid))
    return {k: int(v) for k, v in (line.split() for line in out.splitlines() if line)}


@pytest.fixture
def shared(dom0):
    """A dom0 node that domain 5 may read and write, and domain 6 may read."""
    dom0.write("/shared/data", "for-dom5")
    dom0.set_perms("/shared/data", ["n0", "b5", "r6"])
    return dom0


def test_new_domain_with_the_same_id_inherits_no_acl_entry(host, shared):
    old5 = host.domu(5)
    assert old5.read("/shared/data") == b"for-dom5"
    old5.write("/shared/data", "written-by-old-5")
    host.server.release_domain(5)
    host.server.introduce_domain(5)  # a new domain that got the same domid
    new5 = host.client(host.state_dir / "dom5.sock")
    with pytest.raises(XenstoreError, match="EACCES"):
        new5.read("/shared/data")
    with pytest.raises(XenstoreError, match="EACCES"):
        new5.write("/shared/data", "hijack")
    with pytest.raises(XenstoreError, match="EACCES"):
        new5.get_perms("/shared/data")
    # Xen still lists the ignored entry; only its effect is gone.
    assert shared.get_perms("/shared/data") == ["n0", "b5", "r6"]
    assert shared.read("/shared/data") == b"written-by-old-5"
    # Entries for domains that are still there keep working.
    assert host.domu(6).read("/shared/data") == b"written-by-old-5"
    with PyxsClient(unix_socket_path=str(host.state_dir / "dom5.sock")) as u:
        with pytest.raises(PyXSError):
            u.read(b"/shared/data")
        with pytest.raises(PyXSError):
            u.write(b"/shared/data", b"hijack")
    # A fresh SET_PERMS names the new domain 5: that entry counts again.
    shared.set_perms("/shared/data", ["n0", "b5"])
    assert new5.read("/shared/data") == b"written-by-old-5"


def test_ignored_entries_spread_to_nothing_and_hide_watch_events(host, shared):
    host.domu(5)
    host.server.release_domain(5)
    shared.write("/shared/data/child", "x")  # inherits the ACL, ignored entry included
    assert shared.get_perms("/shared/data/child") == ["n0", "b5", "r6"]
    host.server.introduce_domain(5)
    new5 = host.client(host.state_dir / "dom5.sock")
    with pytest.raises(XenstoreError, match="EACCES"):
        new5.read("/shared/data/child")
    q: queue.Queue = queue.Queue()
    new5.watch("/shared", "w", q)
    assert q.get(timeout=5) == ("/shared", "w")  # the initial event, as in Xen
    shared.write("/shared/data", "changed")
    new5.get_domain_path(5)  # a round trip on the watcher's connection: an event sent
    # for the write would have arrived before this reply
    assert q.empty()


def test_nodes_owned_by_the_released_domain_are_removed_and_unaccounted(host, shared):
    shared.write("/local/domain/5", "")
    shared.set_perms("/local/domain/5", ["n5"])
    shared.write("/open", "")
    shared.set_perms("/open", ["n0", "b5"])
    d5 = host.domu(5)
    d5.write("data/a", "1")
    d5.write("data/b", "2" * 100)
    d5.write("/open/mine", "outside the home")  # owned by 5, outside its home
    shared.write("/local/domain/5/data/by-dom0", "dom0's node under 5's")
    shared.set_perms("/local/domain/5/data/by-dom0", ["n0"])  # goes with the subtree
    before = _usage(shared, 5)
    assert before["nodes"] == 5 and before["memory"] > 100
    q: queue.Queue = queue.Queue()
    shared.watch("/open", "o", q)
    assert q.get(timeout=5) == ("/open", "o")
    host.server.release_domain(5)
    assert q.get(timeout=5) == ("/open/mine", "o")
    for gone in ("/local/domain/5", "/open/mine"):
        assert not shared.exists(gone)
    assert shared.exists("/open") and shared.exists("/local/domain")
    assert shared.read("/shared/data") == b"for-dom5"  # dom0's nodes stay
    after = _usage(shared, 5)
    assert (after["nodes"], after["memory"]) == (0, 0)
    assert shared.control("check") == "OK"


def test_node_quota_is_free_for_the_new_domain(small_host):
    dom0 = small_host.client()
    dom0.write("/local/domain/5", "")
    dom0.set_perms("/local/domain/5", ["n5"])
    d5 = small_host.domu(5)
    with pytest.raises(XenstoreError, match="EQUOTA"):
        for i in range(30):
            d5.write(f"k{i}", "v")
    small_host.server.release_domain(5)
    small_host.server.introduce_domain(5)
    dom0.write("/local/domain/5", "")
    dom0.set_perms("/local/domain/5", ["n5"])
    new5 = small_host.client(small_host.state_dir / "dom5.sock")
    for i in range(15):
        new5.write(f"k{i}", "v")  # the old domain's nodes no longer count
    assert _usage(dom0, 5)["nodes"] == 16


def test_keep_orphans_gives_nodes_to_dom0(tmp_path):
    srv = XenstoreServer(tmp_path / "xs", keep_orphans=True).start()
    clients: list[XenstoreClient] = []
    try:
        dom0 = XenstoreClient(srv.socket_path)
        clients.append(dom0)
        dom0.write("/local/domain/5", "")
        dom0.set_perms("/local/domain/5", ["n5", "r6"])
        srv.introduce_domain(5)
        d5 = XenstoreClient(srv.listen_as_domain(5, tmp_path / "dom5.sock"))
        clients.append(d5)
        d5.write("data", "kept")
        assert _usage(dom0, 5)["nodes"] == 2
        srv.release_domain(5)
        assert dom0.read("/local/domain/5/data") == b"kept"
        # The owner is dom0 now, the default letter unchanged (Xen changes only the id).
        assert dom0.get_perms("/local/domain/5") == ["n0", "r6"]
        assert dom0.get_perms("/local/domain/5/data") == ["n0", "r6"]
        assert _usage(dom0, 5)["nodes"] == 0
        assert dom0.control("check") == "OK"
        srv.introduce_domain(5)
        new5 = XenstoreClient(tmp_path / "dom5.sock")
        clients.append(new5)
        with pytest.raises(XenstoreError, match="EACCES"):
            new5.read("/local/domain/5/data")
        with pytest.raises(XenstoreError, match="EACCES"):
            new5.write("/local/domain/5/data", "mine again?")
    finally:
        for c in clients:
            c.close()
        srv.stop()


def test_special_node_acls_lose_the_domain(host, dom0):
    dom0.set_perms("@releaseDomain", ["n0", "r5", "r6"])
    dom0.set_perms("@introduceDomain", ["n5", "r6"])
    host.server.introduce_domain(5)
    host.server.release_domain(5)
    assert dom0.get_perms("@releaseDomain") == ["n0", "r6"]
    assert dom0.get_perms("@introduceDomain") == ["n0", "r6"]


def test_ignored_entries_survive_a_restart(host, shared):
    host.domu(5)
    host.server.release_domain(5)
    shared.read("/shared/data")  # a round trip: the journal is written by now
    journal = (host.state_dir / "journal").read_text()
    assert '"!b5"' in journal
    host.restart()
    host.server.introduce_domain(5)
    dom0 = host.client()
    assert dom0.get_perms("/shared/data") == ["n0", "b5", "r6"]
    snap = json.loads((host.state_dir / "tree.json").read_text())
    assert ["/shared/data", "for-dom5", ["n0", "!b5", "r6"]] in snap["nodes"]
    new5 = host.client(host.server.listen_as_domain(5, host.state_dir / "dom5-new.sock"))
    with pytest.raises(XenstoreError, match="EACCES"):
        new5.read("/shared/data")
    host.restart()  # and once more, from the snapshot alone
    assert host.client().get_perms("/shared/data") == ["n0", "b5", "r6"]


def test_transactions_are_not_disturbed_by_the_marking(host, shared):
    host.domu(5)
    tx = shared.transaction_start()
    assert shared.read("/shared/data", tx) == b"for-dom5"
    shared.write("/shared/other", "x", tx)
    host.server.release_domain(5)
    assert shared.transaction_end(tx, True)  # marking an entry is no conflict
    assert shared.read("/shared/other") == b"x"
