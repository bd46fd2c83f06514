"""The hypercall table (hypervisor/hypercall_table.py) as dispatch uses it: the caller's
mode picks the column. Pure logic on a real Domain and GuestMemory (no KVM)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyxen.hypervisor import hypercall_table as T
from pyxen.hypervisor.domain import Domain
from pyxen.hypervisor.guest_access import GuestAccess
from pyxen.hypervisor.hypercall import HypercallContext
from pyxen.hypervisor.memory import GuestMemory
from pyxen.hypervisor.public import errno as E
from pyxen.hypervisor.public import xen as X
from pyxen.hypervisor.timer import DomainTimers

# '-' in both HVM columns of Xen 4.17's xen/include/hypercall-defs.c
XEN_PV_ONLY = {
    "set_trap_table", "mmu_update", "set_gdt", "stack_switch", "set_callbacks",
    "fpu_taskswitch", "sched_op_compat", "set_debugreg", "get_debugreg", "update_descriptor",
    "update_va_mapping", "event_channel_op_compat", "physdev_op_compat",
    "update_va_mapping_otherdomain", "iret", "set_segment_base", "nmi_op", "callback_op",
    "xenoprof_op", "kexec_op", "mca",
}


@pytest.fixture
def domain() -> Iterator[Domain]:
    mem = GuestMemory(4 << 20, name="pyxen-table-test")
    log: list[dict] = []
    d = Domain(domid=7, name="t", memory=mem, max_vcpus=1, max_memory=4 << 20,
               emit=log.append)
    d.log_events = log  # type: ignore[attr-defined]
    d.timers = DomainTimers(d, fire=lambda vid: None)
    yield d
    d.timers.destroy()


def call(d: Domain, nr: int, args: tuple[int, ...], compat: bool) -> int:
    def no_pointers() -> GuestAccess:
        raise AssertionError("this call takes no pointer")

    ctx = HypercallContext(d, d.vcpus[0], (*args, 0, 0, 0, 0, 0)[:5], no_pointers,
                           long_mode=not compat)
    return T.dispatch(ctx, nr)


def test_every_known_hypercall_has_a_row_and_pv_only_rows_match_xen() -> None:
    assert set(T.HYPERCALLS) == set(X.HYPERCALL_NAMES)
    pv_only = {X.HYPERCALL_NAMES[nr] for nr, cols in T.HYPERCALLS.items()
               if cols == (T.PV_ONLY, T.PV_ONLY)}
    assert pv_only == XEN_PV_ONLY
    for cols in T.HYPERCALLS.values():
        for c in cols:
            assert callable(c) or c in (T.PV_ONLY, T.MISSING, T.WITHDRAWN)


def test_set_timer_op_column_by_mode(domain: Domain) -> None:
    """64-bit: one register holds the s_time_t; 32-bit: (lo, hi) in two registers."""
    far = (1 << 40) + 0xF0000000  # the low half alone is 4 s away: not fired meanwhile
    lo, hi = far & 0xFFFFFFFF, far >> 32
    assert call(domain, X.__HYPERVISOR_set_timer_op, (lo, hi), compat=True) == 0
    entry = domain.timers.vcpus[0].singleshot
    assert entry is not None and entry.when == far + domain.created_ns
    # the same registers from a 64-bit caller: the timeout is rdi alone (hi is ignored)
    assert call(domain, X.__HYPERVISOR_set_timer_op, (lo, hi), compat=False) == 0
    entry = domain.timers.vcpus[0].singleshot
    assert entry is not None and entry.when == lo + domain.created_ns
    assert call(domain, X.__HYPERVISOR_set_timer_op, (0, 0), compat=True) == 0
    assert domain.timers.vcpus[0].singleshot is None


@pytest.mark.parametrize("compat", [False, True])
def test_pv_only_and_unknown_numbers_are_enosys_and_counted(domain: Domain,
                                                            compat: bool) -> None:
    for _ in range(3):
        assert call(domain, X.__HYPERVISOR_event_channel_op_compat, (), compat) == -E.ENOSYS
    assert call(domain, X.__HYPERVISOR_multicall, (), compat) == -E.ENOSYS
    assert call(domain, 99, (), compat) == -E.ENOSYS
    assert domain.unknown_hypercalls == {16: 3, 13: 1, 99: 1}
    lines = [e["line"] for e in domain.log_events]  # type: ignore[attr-defined]
    assert lines == [  # the 1st, 2nd, 4th, ... call of each number
        "(XEN) d7v0 PV-only hypercall 16 (event_channel_op_compat): -ENOSYS (x1)",
        "(XEN) d7v0 PV-only hypercall 16 (event_channel_op_compat): -ENOSYS (x2)",
        "(XEN) d7v0 unimplemented hypercall 13 (multicall): -ENOSYS (x1)",
        "(XEN) d7v0 unimplemented hypercall 99 (unknown): -ENOSYS (x1)",
    ]
