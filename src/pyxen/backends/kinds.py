"""The PV device kinds a domain's VMM serves: xenstore backend directory name -> the
XenbusDevice class (backends/xenbus_backend.py). One line per kind, no import-time
registration."""

from __future__ import annotations

from .xenbus_backend import XenbusDevice


def device_kinds() -> dict[str, type[XenbusDevice]]:
    kinds: dict[str, type[XenbusDevice]] = {}
    try:
        from .blkback import Blkback
    except ImportError:  # blkback lands in the next commit
        pass
    else:
        kinds["vbd"] = Blkback  # xen/io/blkif.h
    from .netback import Netback

    kinds["vif"] = Netback  # xen/io/netif.h
    return kinds
