"""Debian's xenstore-utils against pyxen's xenstored, found through XENSTORED_PATH."""

from __future__ import annotations

import subprocess
import time

import pytest

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "xenstore-read"], capture_output=True).returncode != 0,
    reason="xenstore-utils not installed")


def test_write_read_ls_list_exists_rm(host):
    host.tool("xenstore-write", "/vm/abc/name", "guest1", "/vm/abc/memory", "512")
    assert host.tool("xenstore-read", "/vm/abc/name").stdout == "guest1\n"
    assert host.tool("xenstore-list", "/vm/abc").stdout.split() == ["name", "memory"]
    ls = host.tool("xenstore-ls", "/vm").stdout
    assert 'name = "guest1"' in ls and 'memory = "512"' in ls
    assert host.tool("xenstore-exists", "/vm/abc/name").returncode == 0
    assert host.tool("xenstore-exists", "/vm/nope", check=False).returncode != 0
    host.tool("xenstore-rm", "/vm/abc/name")
    assert host.tool("xenstore-exists", "/vm/abc/name", check=False).returncode != 0
    r = host.tool("xenstore-read", "/vm/abc/name", check=False)
    assert r.returncode != 0


def test_relative_paths_are_dom0_home(host, dom0):
    host.tool("xenstore-write", "name", "Domain-0")
    assert dom0.read("/local/domain/0/name") == b"Domain-0"


def test_chmod_and_perms_listing(host, dom0):
    host.tool("xenstore-write", "/local/domain/3/device", "")
    host.tool("xenstore-chmod", "/local/domain/3/device", "n3", "r0")
    assert dom0.get_perms("/local/domain/3/device") == ["n3", "r0"]
    out = host.tool("xenstore-ls", "-p", "/local/domain/3").stdout
    assert "(n3,r0)" in out


def test_watch_fires_on_subtree_writes(host):
    w = subprocess.Popen(["xenstore-watch", "-n", "3", "/backend"], env=host.env,
                         stdout=subprocess.PIPE, text=True)
    try:
        # The first event is the one Xen fires at registration; then our two writes.
        time.sleep(0.3)
        host.tool("xenstore-write", "/backend/vbd/1/51712/state", "1")
        host.tool("xenstore-write", "/backend/vif/1/0/state", "4")
        out, _ = w.communicate(timeout=20)
    finally:
        w.kill()
    lines = out.split()
    assert lines[0] == "/backend"
    assert "/backend/vbd/1/51712/state" in lines and "/backend/vif/1/0/state" in lines


def test_read_only_socket_refuses_writes(host, dom0):
    dom0.write("/ro/test", "1")
    ro = str(host.server.ro_socket_path)
    assert host.tool("xenstore-read", "/ro/test", path=ro).stdout == "1\n"
    r = host.tool("xenstore-write", "/ro/test", "2", path=ro, check=False)
    assert r.returncode != 0
    r = host.tool("xenstore-rm", "/ro/test", path=ro, check=False)
    assert r.returncode != 0
    assert dom0.read("/ro/test") == b"1"


def test_restart_keeps_tree_owners_and_perms(host):
    host.tool("xenstore-write", "/local/domain/7/name", "d7", "/local/domain/7/data/x", "y")
    host.tool("xenstore-chmod", "/local/domain/7/data", "n7", "r0")
    host.server.introduce_domain(7)
    host.restart()
    assert host.tool("xenstore-read", "/local/domain/7/name").stdout == "d7\n"
    assert host.tool("xenstore-read", "/local/domain/7/data/x").stdout == "y\n"
    c = host.client()
    assert c.get_perms("/local/domain/7/data") == ["n7", "r0"]
    assert c.is_domain_introduced(7)


def test_restart_after_kill_keeps_acknowledged_writes(host, tmp_path):
    """The journal: a daemon that dies without stop() still has every acked write."""
    c = host.client()
    for i in range(50):
        c.write(f"/j/k{i}", str(i))
    c.rm("/j/k3")
    host.close_clients()
    # Simulate a crash: abandon the server without stop() (no snapshot written).
    from pyxen.xenstore import XenstoreServer

    crashed = host.server
    crashed.loop.running = False
    crashed.loop._wake()
    crashed.loop.thread.join(5)
    host.server = XenstoreServer(host.state_dir).start()
    c = host.client()
    assert c.read("/j/k49") == b"49"
    assert not c.exists("/j/k3")
    assert len(c.directory("/j")) == 49
