"""What a hypercall handler gets (HypercallContext) and what happens to a number nobody
handles. Which handler serves which number is hypercall_table.py.

A handler gets a HypercallContext (domain, vCPU, the five argument registers and the one
guest-memory accessor) and returns the value for %rax. GuestFault becomes -EFAULT; a
number without a handler for the caller is counted and returns -ENOSYS; any other
exception propagates to the vCPU loop, which crashes this domain (only) with a report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .domain import VCPU, Domain
from .guest_access import GuestAccess
from .public import errno as E
from .public.xen import HYPERCALL_NAMES

Handler = Callable[["HypercallContext"], int]


@dataclass(slots=True)
class HypercallContext:
    domain: Domain
    vcpu: VCPU
    args: tuple[int, int, int, int, int]
    make_guest: Callable[[], GuestAccess]  # built on first use: most calls need none
    long_mode: bool = True
    interrupts_enabled: bool = True  # the guest's RFLAGS.IF (SCHEDOP_block/poll need it)
    _guest: GuestAccess | None = None

    @property
    def guest(self) -> GuestAccess:
        if self._guest is None:
            self._guest = self.make_guest()
        return self._guest

    @property
    def compat(self) -> bool:
        """A 32-bit caller: Xen's compat ABI (x86_32 struct layouts)."""
        return not self.long_mode

    def arg(self, i: int) -> int:
        return self.args[i]

    def sarg(self, i: int) -> int:
        """Argument i as a signed C int (sub-op numbers, counts)."""
        v = self.args[i] & 0xFFFFFFFF
        return v - (1 << 32) if v & 0x80000000 else v


def no_handler(ctx: HypercallContext, nr: int, why: str) -> int:
    """-ENOSYS, counted per number: the 1st, 2nd, 4th, ... call of each is logged, so a
    guest probing for features is visible without flooding the log (totals at shutdown)."""
    d = ctx.domain
    d.unknown_hypercalls[nr] += 1
    n = d.unknown_hypercalls[nr]
    if n & (n - 1) == 0:
        d.log(f"d{d.domid}v{ctx.vcpu.id} {why} hypercall {nr} "
              f"({HYPERCALL_NAMES.get(nr, 'unknown')}): -ENOSYS (x{n})")
    return -E.ENOSYS
