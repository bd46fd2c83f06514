"""Quotas: Xen's defaults, overrides, EQUOTA for the domain at quota and no one else."""

from __future__ import annotations

import pytest

from pyxen.xenstore import Quotas, XenstoreError
from pyxen.xenstore.__main__ import parse_args


def test_defaults_are_xen_4_17s():
    q = Quotas()
    assert (q.nodes, q.node_size, q.watches, q.transactions, q.permissions,
            q.path_length, q.outstanding, q.transaction_nodes) == (
        1000, 2048, 128, 10, 5, 2048, 20, 1024)
    assert q.memory == 2 * 1024 * 1024 + 512 * 1024


def test_command_line_overrides():
    _args, q = parse_args(["--state-dir", "/tmp/x", "-E", "50", "--watch-nb", "7",
                           "-t", "3", "-S", "1000", "-Q", "outstanding=5",
                           "--quota", "memory=100000"])
    assert (q.nodes, q.watches, q.transactions, q.node_size, q.outstanding, q.memory) == (
        50, 7, 3, 1000, 5, 100000)
    with pytest.raises(SystemExit):
        parse_args(["--state-dir", "/tmp/x", "-Q", "bogus=1"])


def _home(host, domid):
    c = host.client()
    c.write(f"/local/domain/{domid}", "")
    c.set_perms(f"/local/domain/{domid}", [f"n{domid}"])
    return host.domu(domid)


def test_node_quota_hits_equota_only_for_that_domain(small_host):
    d5, d6 = _home(small_host, 5), _home(small_host, 6)
    n = 0
    with pytest.raises(XenstoreError) as e:
        for n in range(100):  # noqa: B007
            d5.write(f"k{n}", "v")
    assert e.value.name == "EQUOTA"
    assert 10 < n < 25  # quota 20 nodes, counting the home node the domain owns
    d6.write("still-fine", "1")  # another domain is unaffected
    dom0 = small_host.client()
    for i in range(50):  # dom0 is exempt
        dom0.write(f"/dom0stuff/{i}", "")
    d5.rm("k0")
    d5.write("again", "1")  # freed a slot


def test_node_size_watch_transaction_and_path_quotas(small_host):
    d5 = _home(small_host, 5)
    with pytest.raises(XenstoreError, match="EQUOTA"):
        d5.write("big", "x" * 300)
    d5.write("ok", "x" * 100)
    for i in range(4):
        d5.watch(f"w{i}", f"t{i}")
    with pytest.raises(XenstoreError, match="EQUOTA"):
        d5.watch("w4", "t4")
    t1, t2 = d5.transaction_start(), d5.transaction_start()
    with pytest.raises(XenstoreError, match="EQUOTA"):
        d5.transaction_start()
    d5.transaction_end(t1, False)
    d5.transaction_end(t2, False)
    d5.transaction_start()
    with pytest.raises(XenstoreError, match="EINVAL"):
        d5.write("a" * 100, "x")  # longer than the path-length quota
    with pytest.raises(XenstoreError, match="EQUOTA"):
        d5.set_perms("ok", ["n5", "r1", "r2", "r3", "r4", "r6", "r7"])


def test_control_quota_changes_limits_at_run_time(small_host):
    d5 = _home(small_host, 5)
    small_host.client().control("quota", "watches", "1")
    d5.watch("a", "a")
    with pytest.raises(XenstoreError, match="EQUOTA"):
        d5.watch("b", "b")
    usage = small_host.client().control("quota", "5")
    assert "watches" in usage and "1" in usage


def test_memory_quota(tmp_path):
    from xshost import Host

    h = Host(tmp_path / "xs", Quotas(memory=8192))
    try:
        d5 = _home(h, 5)
        with pytest.raises(XenstoreError, match="EQUOTA"):
            for i in range(100):
                d5.write(f"m{i}", "y" * 500)
        assert h.client().read("/local/domain/5/m0") == b"y" * 500
    finally:
        h.stop()
