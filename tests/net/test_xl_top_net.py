"""`xl top`'s network columns for a real guest: NETS, and with -n each vif's RX/TX
counters (the host interface's, from the guest's side, as xenstat reports them), moved
by pings from the host's side of the bridge."""

from __future__ import annotations

import re

from netlan import NETGUEST, Lan, needs_guest, needs_root_net
from xlhost import Host

pytestmark = [needs_root_net, needs_guest]


def test_xl_top_counts_a_guests_network_traffic(host: Host, lan: Lan) -> None:
    cfg = host.root.parent / "pinged.cfg"
    cfg.write_text(f'name = "pinged"\ntype = "pvh"\nmemory = 32\nkernel = "{NETGUEST}"\n'
                   f"vif = [ 'bridge={lan.bridge},ip={lan.ip(2)}' ]\n")
    host.xl("create", str(cfg), check=True)
    log = host.root / "console" / "guest-pinged.log"
    host.wait_for(lambda: log.exists() and "vif 0 connected" in log.read_text(errors="replace"),
                  "the guest's vif", timeout=60)
    lan.plug()
    r = lan.ping(lan.ip(2))
    assert r.returncode == 0, r.stdout + r.stderr
    out = host.xl("top", "-b", "-i", "1", "-d", "0.2", "-n", check=True).stdout
    row = next(ln.split() for ln in out.splitlines() if ln.split()[:1] == ["pinged"])
    assert row[9] == "1", row  # NETS
    m = re.search(r"^Net0 RX: +(\d+)bytes +(\d+)pkts TX: +(\d+)bytes +(\d+)pkts$", out, re.M)
    assert m, out
    rx_bytes, rx_pkts, tx_bytes, tx_pkts = (int(x) for x in m.groups())
    # the pings went in (the guest received them) and their replies came out
    assert rx_pkts >= 3 and tx_pkts >= 3 and rx_bytes >= 3 * 84 and tx_bytes >= 3 * 84, m[0]
