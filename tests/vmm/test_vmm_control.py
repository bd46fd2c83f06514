"""control.sock on a live (idle) guest: info, pause/unpause, destroy, bad requests."""

from __future__ import annotations

import json
import socket

import pytest


@pytest.mark.timeout(60)
def test_pause_unpause_info_destroy_idle_guest(boot) -> None:
    d = boot("mode=idle", vcpus=2, memory=48, maxmem=64)
    info = d.request("info")
    assert info == {"id": 1, "ok": True, "state": "paused", "cpu_time": info["cpu_time"],
                    "vcpus": 1, "max_vcpus": 2, "memory_kib": 48 * 1024,
                    "max_memory_kib": 64 * 1024, "shutdown_reason": None,
                    "shutdown_code": None, "pv_control": False}
    con = d.console()
    d.request("unpause")
    d.wait_log(lambda ln: ln == f"(d{d.domid}) pyxen hello: idle")
    blocked = d.wait_state("blocked")
    assert blocked["cpu_time"] > 0
    assert d.request("pause") == {"id": d._next, "ok": True}
    assert d.request("info")["state"] == "paused"
    assert d.request("unpause")["ok"]
    d.wait_state("blocked")
    assert d.request("destroy")["ok"]
    assert d.proc.wait(10) == 0
    con.settimeout(10)
    data = b""
    while chunk := con.recv(4096):
        data += chunk
    assert b"pyxen hello: idle" in data  # buffered output, then closed on destroy
    assert not (d.ddir / "control.sock").exists()
    assert not (d.ddir / "console.sock").exists()


@pytest.mark.timeout(60)
def test_bad_requests_get_errors(boot) -> None:
    d = boot("mode=idle")
    assert d.request("frobnicate") == {"id": 1, "ok": False, "error": "unknown op 'frobnicate'"}
    reply = d.request("shutdown_request", reason="poweroff")  # hostd's job now (xenstore)
    assert reply == {"id": 2, "ok": False, "error": "unknown op 'shutdown_request'"}
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(d.ddir / "control.sock"))
    s.sendall(b"this is not json\n")
    reply = json.loads(s.makefile("rb").readline())
    assert reply["ok"] is False and "malformed" in reply["error"]
    assert d.request("info")["state"] == "paused"  # still alive


@pytest.mark.timeout(60)
def test_events_reach_every_client(boot) -> None:
    d = boot("mode=poweroff")
    other = socket.socket(socket.AF_UNIX)
    other.connect(str(d.ddir / "control.sock"))
    d.request("info")  # both connections are registered by now
    d.request("unpause")
    d.wait_event("shutdown")
    seen = []
    for raw in other.makefile("rb"):
        ev = json.loads(raw)
        seen.append(ev)
        if ev.get("event") == "shutdown":
            break
    assert seen[-1] == {"event": "shutdown", "reason": "poweroff", "code": 0}
    assert {"event": "log", "line": f"(d{d.domid}) pyxen hello: shutting down (poweroff)"} \
        in seen


@pytest.mark.timeout(60)
def test_sigterm_destroys(boot) -> None:
    d = boot("mode=idle")
    d.request("unpause")
    d.wait_state("blocked")
    d.proc.terminate()
    assert d.proc.wait(10) == 0
    assert not (d.ddir / "control.sock").exists()


@pytest.mark.timeout(60)
def test_pause_kicks_a_vcpu_that_never_exits(boot) -> None:
    """A guest spinning in ring 3 never exits on its own: pause must kick it out of KVM_RUN."""
    d = boot("mode=spin")
    d.request("unpause")
    d.wait_log(lambda ln: ln == f"(d{d.domid}) pyxen hello: spinning in ring 3")
    assert d.request("info")["state"] == "running"
    # pause returns only once every vCPU is out of the guest: this one had to be kicked
    assert d.request("pause")["ok"]
    assert d.request("info")["state"] == "paused"
    assert d.request("unpause")["ok"]
    assert d.request("info")["state"] == "running"
    assert d.request("destroy")["ok"]
    assert d.proc.wait(10) == 0
