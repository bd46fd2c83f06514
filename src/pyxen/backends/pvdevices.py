"""A domain's PV console and xenstore connection, set up the way Xen's toolstack does it.

libxl/libxenguest put the console and xenstore pages at fixed special PFNs below
0xff000, publish them in HVM_PARAM_CONSOLE_PFN / STORE_PFN, allocate an unbound event
channel in the guest for each with dom0 as the remote (HVM_PARAM_*_EVTCHN), then hand
them to xenconsoled (which binds at once) and to xenstored (INTRODUCE, which binds then).
Here xenconsoled is backends.console in this VMM, and xenstored is reached through
backends.xenbus; hostd learns the ports and PFNs from the VMM's "built" event.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ..hypervisor.public import hvm_op as H
from .console import PvConsole
from .xenbus import (
    SOCKET_NAME,
    SPECIALPAGE_CONSOLE,
    SPECIALPAGE_XENSTORE,
    SpecialPage,
    StoreBridge,
    special_pfn,
)


def console_log_path(rundir: Path, name: str) -> Path:
    """xenconsoled's --log=guest file: $RUNDIR/console/guest-NAME.log (kept after the
    domain is gone, as /var/log/xen/console/ is)."""
    return rundir / "console" / f"guest-{name}.log"


def _event_channels(d: Any, machine: Any) -> tuple[Any, Any] | None:
    """(guest table, dom0 table) of this process, or None without event channels.

    Uses the tables the domain builder made; creates dom0's (d.dom0_evtchn) if missing.
    """
    try:
        from ..hypervisor.event_channel import (
            BackendEventChannels,
            EvtchnHost,
            GuestEventChannels,
        )
    except ImportError:
        return None
    ev = getattr(d, "evtchn", None)
    if ev is None:
        try:  # the builder did not create them: do it as it would (vmm/events.py)
            ev = GuestEventChannels(EvtchnHost(), d, machine.upcall_injector())
        except Exception:  # noqa: BLE001 - run without event channels (guests poll)
            return None
        d.evtchn = ev
    dom0 = getattr(d, "dom0_evtchn", None)
    if dom0 is None:
        t = ev.host.tables.get(0)
        dom0 = t if isinstance(t, BackendEventChannels) else BackendEventChannels(ev.host, 0)
        d.dom0_evtchn = dom0
    return ev, dom0


class PvDevices:
    """The console ring + backend and the xenstore page + bridge of one domain."""

    def __init__(self, d: Any, machine: Any, ddir: Path, rundir: Path) -> None:
        self.domain = d
        self.console_page = SpecialPage(f"pyxen-d{d.domid}-console",
                                        special_pfn(SPECIALPAGE_CONSOLE))
        self.store_page = SpecialPage(f"pyxen-d{d.domid}-xenstore",
                                      special_pfn(SPECIALPAGE_XENSTORE))
        for sp, kind in ((self.console_page, "console"), (self.store_page, "xenstore")):
            d.memory.p2m.map_page(sp.pfn, d.memory.import_page(sp.fd, 0, kind))  # the p2m's
        chans = _event_channels(d, machine)
        self.console_port = self.store_port = 0
        console_end = None
        bind = None
        if chans is not None:
            ev, dom0 = chans
            self.console_port = ev.alloc_unbound(0)
            self.store_port = ev.alloc_unbound(0)
            console_end = dom0.connect(d.domid, self.console_port)  # xenconsoled binds now
            store_port = self.store_port

            def bind() -> Any:  # xenstored binds when the domain is introduced
                return dom0.connect(d.domid, store_port)

        p = d.hvm_params
        p[H.HVM_PARAM_CONSOLE_PFN] = self.console_page.pfn
        p[H.HVM_PARAM_CONSOLE_EVTCHN] = self.console_port
        p[H.HVM_PARAM_STORE_PFN] = self.store_page.pfn
        p[H.HVM_PARAM_STORE_EVTCHN] = self.store_port

        con = d.console
        if not isinstance(con, PvConsole):
            con = PvConsole(console_log_path(rundir, d.name),
                            report=lambda msg: d.log(f"d{d.domid}: {msg}"))
            d.console = con
        con.attach_ring(self.console_page.map, console_end, name=f"d{d.domid}console")
        self.console = con
        self.bridge = StoreBridge(self.store_page, self.store_port, ddir / SOCKET_NAME,
                                  bind).start()

    def announce(self) -> dict[str, int]:
        """What hostd needs (the "built" event): libxl's store/console port and mfn."""
        return {"store_port": self.store_port, "store_mfn": self.store_page.pfn,
                "console_port": self.console_port, "console_mfn": self.console_page.pfn}

    def close(self) -> None:
        """The domain is going: flush the console, stop serving xenbus.sock."""
        with contextlib.suppress(Exception):
            self.console.close()
        with contextlib.suppress(Exception):
            self.bridge.close()
        for end in (self.console.port, self.bridge.port):  # dom0's ends of both channels
            if end is not None:
                with contextlib.suppress(Exception):
                    end.close()
