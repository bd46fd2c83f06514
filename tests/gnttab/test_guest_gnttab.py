"""Grant tables v2 and grants mapped by the guest itself, with a real guest
(guests/gnttab_test.c) in a real VMM (`python -m pyxen.vmm`); pyxen's loopback backend
is dom0's end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


def boot_gnttab_guest(boot, guests: Path, cmdline: str, **cfg):
    return boot(cmdline, kernel=str(guests / "gnttab_test.elf"), **cfg)


def run_to_shutdown(d) -> list[str]:
    ev = d.wait_event("shutdown")
    lines = d.guest_lines()
    assert ev["reason"] == "poweroff", "\n".join(d.log)
    return lines


V2_EXPECTED = [
    "v2: start version 1",
    "v2: v1 get_status_frames = -1",       # v1 has no status frames: GNTST_general_error
    "v2: v1 get_status_frames none = 0",
    "v2: v1 map status frame = -22",
    "v2: set_version 3 = -22 version 1",
    "v2: set_version 2 = 0 version 2",
    # reserved entry 1 translated (permit_access|readonly); entry 9 cleared
    "v2: get_version 2; ref 1 flags 5 domid 0 frame 1234; ref 9 flags 0",
    "v2: get_status_frames = 0 frame unmapped",
    "v2: map status frame = 0",
    "v2: get_status_frames = 0 frame ok",
    "v2: get_status_frames 2 = -1",
    "v2: map status frame 8 = -22 nr_frames 1",  # would need 72 grant frames (max 64)
    # the backend's writable map of the request page: reading|writing in the status word
    "v2: connected, request entry flags 1 status 18",
    "v2: set_version 1 while mapped = -16 version 2",  # -EBUSY
    # read-only map: GTF_reading; the guest's revoke sees it in use; unmap clears it
    "v2: map readonly = 0 flags 5 status 8 end_access -1; unmap = 0 status 0",
    "v2: map readonly for write = -1",
    'v2: copy sub-page = 0 "sub-page" status 0',
    "v2: copy outside sub-page = -1",
    "v2: copy beyond page = -10",
    "v2: map sub-page = -1",
    "v2: map transitive = -1",
    "v2: copy transitive = -1 status 0",
    "v2: map foreign = -1",
    "v2: backend gone, request status 0",
    "v2: set_version 1 with a wide reserved entry = -34 version 2",  # -ERANGE
    "v2: set_version 1 = 0 version 1; ref 1 flags 5 domid 0 frame 1234",
    "v2: back in v1 get_status_frames = -1",
    "v2: done",
]


@pytest.mark.timeout(120)
def test_v2_versions_status_frames_and_backend(boot, guests: Path) -> None:
    d = boot_gnttab_guest(boot, guests, "mode=v2")
    assert d.request("unpause")["ok"]
    first = d.wait_log(lambda ln: "v2: port=" in ln)
    m = re.search(r"port=(\d+) gref=(\d+)", first)
    assert m, first
    reply = d.request("loopback_attach", port=int(m.group(1)), gref=int(m.group(2)))
    assert reply["ok"], reply
    lines = run_to_shutdown(d)
    got = [ln for ln in lines if ln.startswith("v2: ") and not ln.startswith("v2: port=")]
    assert got == V2_EXPECTED
