"""Hostile hypercalls against the real handlers, in process (tests/vmm/fuzz_hypercalls.py:
real Domain, GuestMemory, event channels, grant table, timers and page walks; no KVM).
Every call must return an int (>= 0 or a negated Xen errno), raise nothing, and leave the
domain's tables consistent. Longer runs: `python3 tests/vmm/fuzz_hypercalls.py --seconds N`.
"""

from __future__ import annotations

import random
import struct
import sys
import threading
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzz_hypercalls as F  # noqa: E402

from pyxen.hypervisor.public import errno as E  # noqa: E402
from pyxen.hypervisor.public import vcpu as VC  # noqa: E402
from pyxen.hypervisor.public.xen import CONSOLEIO_write, __HYPERVISOR_vcpu_op  # noqa: E402

VCPU_OP = __HYPERVISOR_vcpu_op


@settings(max_examples=100, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False), calls=st.integers(1, 40))
def test_hostile_hypercalls_return_xen_errors(rng: random.Random, calls: int) -> None:
    F.fuzz(rng, calls)


def test_seeded_run_hits_every_implemented_hypercall() -> None:
    """A fixed-seed batch (reproducible), and it really exercises the handlers."""
    stats: F.Counter = F.Counter()
    rng = random.Random(20240611)
    seen: set[int] = set()
    orig = F.World.run

    def run(self, nr, args, long_mode, vid=0):  # type: ignore[no-untyped-def]
        seen.add(nr)
        return orig(self, nr, args, long_mode, vid)

    F.World.run = run  # type: ignore[method-assign]
    try:
        for _ in range(6):
            F.fuzz(rng, 200, stats)
    finally:
        F.World.run = orig  # type: ignore[method-assign]
    assert set(F.IMPLEMENTED) <= seen
    assert stats["ok"] > 50 and stats[-E.EFAULT] > 50 and stats[-E.ENOSYS] > 50


def test_long_console_write_is_preempted_by_pause() -> None:
    """A guest-sized console write does not hold up `pause`: between chunks the vCPU parks
    while the domain is paused (where Xen would preempt the call), then finishes it."""
    w = F.World(random.Random(1))
    try:
        d = w.d
        v = d.vcpus[0]
        count = min(w.ram, 8 << 20) - 0x3000
        written: list[int] = []
        d.guest_debug = lambda stream, data: written.append(len(data))  # the log's input
        result: list[int] = []
        v.running = True  # as the vCPU thread is while it runs the handler
        d.pause_count += 1  # a pause has been requested
        t = threading.Thread(target=lambda: result.append(
            w.run(F.CONSOLE_IO, (CONSOLEIO_write, count, 0x3000, 0, 0), True)), daemon=True)
        t.start()
        with d.cond:
            assert d.cond.wait_for(lambda: not v.running, timeout=30)
        assert t.is_alive() and sum(written) == 128  # parked after its first chunk
        d.unpause()
        t.join(60)
        assert result == [0] and sum(written) == count
    finally:
        w.close()


def test_far_future_singleshot_timer_keeps_the_timer_thread() -> None:
    """Found by the fuzzer: a deadline centuries away (2^63-1 ns) made the domain's timer
    thread die (Condition.wait overflowed time_t), stopping every timer of the domain. A
    deadline with bit 63 set is negative for Xen (s_time_t): in the past."""
    w = F.World(random.Random(2))
    try:
        assert w.full
        for deadline in ((1 << 63) - 1, F.U64):
            w.mem.write(0x5000, struct.pack("<QI", deadline, 0))
            assert w.run(VCPU_OP, (VC.VCPUOP_set_singleshot_timer, 0, 0x5000, 0, 0), True) == 0
        fired = threading.Event()
        w.d.timers.queue.add(time.monotonic_ns(), fired.set)
        assert fired.wait(30)  # the thread still serves timers
        assert w.d.timers.queue._thread.is_alive()
    finally:
        w.close()
