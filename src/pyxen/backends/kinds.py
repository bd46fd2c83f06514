"""The PV device kinds a domain's VMM serves: xenstore backend directory name -> the
XenbusDevice class (backends/xenbus_backend.py). One line per kind, no import-time
registration."""

from __future__ import annotations

from .xenbus_backend import XenbusDevice


def device_kinds() -> dict[str, type[XenbusDevice]]:
    from .blkback import Blkback
    from .netback import Netback

    return {
        "vbd": Blkback,  # xen/io/blkif.h
        "vif": Netback,  # xen/io/netif.h
    }
