"""XSM: the one "may domain A act on domain B" check every hypercall naming a domain uses.

Xen looks the target up (rcu_lock_domain_by_any_id: DOMID_SELF or an existing domain, else
-ESRCH) and then asks the XSM policy (the dummy policy's XSM_TARGET: a domain may act on
itself; a privileged domain on anyone; else -EPERM). pyxen's guests are unprivileged and
dom0 is the host, so the answer for a guest is: itself yes, dom0 or another domain this
hypervisor instance knows of -EPERM, anything else -ESRCH.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .public import errno as E
from .public.xen import DOMID_SELF

if TYPE_CHECKING:
    from .domain import Domain


class XsmDenied(Exception):
    """The caller may not act on that domain: `errno` is -ESRCH or -EPERM's positive value."""

    def __init__(self, errno: int, domid: int) -> None:
        super().__init__(f"may not act on domain {domid}")
        self.errno = errno
        self.domid = domid


def domain_exists(src: Domain, domid: int) -> bool:
    """Domains this hypervisor instance can see from src: dom0 (the host) and those whose
    event-channel tables live beside src's (backends served by its VMM)."""
    if domid == 0 or domid == src.domid:
        return True
    ev = getattr(src, "evtchn", None)
    return ev is not None and domid in ev.host.tables


def xsm_target(src: Domain, domid: int) -> int:
    """The target domid (DOMID_SELF resolved) if src may act on it, else XsmDenied."""
    if domid in (DOMID_SELF, src.domid):
        return src.domid
    if not domain_exists(src, domid):
        raise XsmDenied(E.ESRCH, domid)
    if getattr(src, "privileged", False):
        return domid
    raise XsmDenied(E.EPERM, domid)


def target_error(src: Domain, domid: int) -> int:
    """0 when src may act on domid, else the negative Xen errno (for handlers returning it)."""
    try:
        xsm_target(src, domid)
        return 0
    except XsmDenied as e:
        return -e.errno
