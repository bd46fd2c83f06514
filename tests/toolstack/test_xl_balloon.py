"""Ballooning seen by the toolstack: a guest that gives pages back with
XENMEM_decrease_reservation shows less memory in `xl list` (the VMM's current
reservation), as Xen's tot_pages does."""

from __future__ import annotations

from pathlib import Path

import pytest
from xlhost import HELLO, Host, needs_vmm, needs_xenstored

pytestmark = [needs_vmm, needs_xenstored, pytest.mark.timeout(240)]


def test_xl_list_mem_drops_when_the_guest_balloons(host: Host, tmp_path: Path) -> None:
    cfg = tmp_path / "bal.cfg"
    cfg.write_text("\n".join([
        'name = "bal"', 'type = "pvh"', f'kernel = "{HELLO}"', "memory = 32", "vcpus = 1",
        'cmdline = "mode=balloon out=2048"']) + "\n")
    host.xl("create", str(cfg), check=True)
    # 32 MiB - 8 MiB given back, then the RAM page its shared info replaced: 24572 KiB
    host.wait_for(lambda: host.list().get("bal", {}).get("mem") == "23",
                  "xl list to show the ballooned domain at 23 MiB")
    log = host.xl("dmesg", check=True).stdout
    assert "balloon: gave back 2048 pages, reservation 6144" in log, log
    host.xl("destroy", "bal", check=True)
    host.assert_clean()
