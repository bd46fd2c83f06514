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
    "v2: old status frame gfn copy = -9",   # a hole now: GNTST_bad_page
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


MAP_EXPECTED = [
    "map: hole before: ff",                 # beyond RAM: nothing there (reads all ones)
    # handle 0 (Xen's first), dev_bus_addr the page, GTF_reading|GTF_writing on the entry
    "map: map = 0 handle 0 bus ok flags 19",
    "map: read through map ok, write seen ok, revoke while mapped -1",
    "map: set_version 2 while mapped = -16 version 1",
    "map: unmap bad handle = -4",           # GNTST_bad_handle
    "map: unmap wrong bus address = -1",
    "map: unmap wrong gfn = -1",
    "map: unmap_and_replace = -1",          # HVM: no replacement
    "map: map over a grant mapping = -1",
    "map: unmap = 0 flags 1 hole after: ff end_access 0",
    "map: unmap twice = -4",
    "map: map read-only grant writable = -1",
    'map: map read-only = 0 flags d reads "read-only grant"',
    "map: unmap read-only = 0 flags 5",
    "map: map no flags = -3",               # neither host_map nor device_map: bad_gntref
    "map: map device_map = -1",             # no device mapping in an HVM domain
    "map: map contains_pte = -1",
    "map: map DOMID_SELF = -2",             # looked up by id: GNTST_bad_domain
    "map: map dom0 = -2",
    "map: map unknown domain = -2",
    "map: map ref out of range = -3",
    "map: map ref granted to dom0 = -1",
    "map: map cache attribute = -1",
    "map: map bad frame = -9",              # GNTST_bad_page
    "map: flags after refusals 1 41 1",
    "map: v2 map = 0 flags 1 status 18 reads ok",
    "map: v2 map sub-page = -1",
    "map: v2 unmap = 0 status 0",
    "map: move frame 0 = 0 ref 30 there ok; old gfn copy = -9, new gfn copy = 0",
    "map: map frame beyond the address width = -22",
    "map: done",
]


@pytest.mark.timeout(120)
def test_guest_maps_its_own_grants_at_holes(boot, guests: Path) -> None:
    d = boot_gnttab_guest(boot, guests, "mode=map")
    assert d.request("unpause")["ok"]
    lines = run_to_shutdown(d)
    got = [ln for ln in lines if ln.startswith("map: ")]
    assert got == MAP_EXPECTED
