"""Hostile-hypercall fuzzing of pyxen's handlers, in process (no KVM).

A real `Domain` with real `GuestMemory` (a memfd), real event channels (plus dom0's table,
as the VMM builds them), a real grant table and real vCPU timers; guest pointers are
translated by the real page walker (`arch/x86/paging.py`) over page tables that live in
guest RAM (which the fuzzer may overwrite, like everything else). Calls go through
`hypervisor.hypercall.dispatch`, exactly as the vCPU loop makes them.

Shared by tests/vmm/test_vmm_hypercall_fuzz.py (hypothesis drives the `random.Random`) and
standalone use:

    python3 tests/vmm/fuzz_hypercalls.py --seconds 60 [--seed N]

What a hostile call may not do: raise (any exception would crash the domain in the VMM),
return anything but an int that is >= 0 or a negated errno of xen/errno.h, or leave the
domain's tables inconsistent (`check_invariants`).

Blocking: SCHEDOP_block and SCHEDOP_poll would sleep until an event or their timeout; the
`FuzzDomain` runs every block with a zero timeout (all argument checks still run first,
and the wake-up predicate is still evaluated once), so no call can stall the fuzzer.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable

from pyxen.arch.x86.paging import PagingState, translate
from pyxen.hypervisor import hypercall as HC
from pyxen.hypervisor.console import Console
from pyxen.hypervisor.domain import VCPU, Domain
from pyxen.hypervisor.event_channel import (
    ECS_FREE,
    ECS_INTERDOMAIN,
    ECS_IPI,
    ECS_RESERVED,
    ECS_UNBOUND,
    ECS_VIRQ,
    BackendEventChannels,
    EvtchnHost,
    GuestEventChannels,
)
from pyxen.hypervisor.grant_table import GrantTable, grant_to_status_frames
from pyxen.hypervisor.guest_access import GuestAccess
from pyxen.hypervisor.hypercall_table import dispatch
from pyxen.hypervisor.memory import LOWMEM_TOP, PAGE_SIZE, GuestMemory
from pyxen.hypervisor.public import errno as E
from pyxen.hypervisor.public import event_channel as EC
from pyxen.hypervisor.public import grant_table as G
from pyxen.hypervisor.public import hvm_op as H
from pyxen.hypervisor.public import xen as X
from pyxen.hypervisor.public.xen import DOMID_SELF, vcpu_info
from pyxen.hypervisor.timer import ETIME, DomainTimers, timer_event

U64 = (1 << 64) - 1
XEN_ERRNOS = {v for k, v in vars(E).items() if k.isupper() and isinstance(v, int)} | {ETIME}

# Implemented hypercalls and the sub-op range worth hitting for each (the fuzzer also
# draws out-of-range, negative and 64-bit sub-ops).
IMPLEMENTED: dict[int, int] = {
    X.__HYPERVISOR_xen_version: 12,
    X.__HYPERVISOR_console_io: 2,
    X.__HYPERVISOR_sched_op: 8,
    X.__HYPERVISOR_memory_op: 30,
    X.__HYPERVISOR_hvm_op: 25,
    X.__HYPERVISOR_vcpu_op: 14,
    X.__HYPERVISOR_event_channel_op: 14,
    X.__HYPERVISOR_grant_table_op: 13,
    X.__HYPERVISOR_set_timer_op: 0,
}

CONSOLE_IO = X.__HYPERVISOR_console_io
GRANT_TABLE_OP = X.__HYPERVISOR_grant_table_op
PML4, PDPT = 0x1000, 0x2000  # the fuzz guest's page tables (in its RAM, not protected)
GUEST_DOMID = 5


class FakePlatform:
    """What handlers ask of the arch layer (time only; kicks are no-ops: no vCPU threads)."""

    tsc_khz = 2_000_000

    def kick(self, vcpu_id: int) -> None:
        pass

    def guest_tsc(self, vcpu_id: int) -> int:
        return time.monotonic_ns() * 2


class FuzzDomain(Domain):
    """A Domain whose SCHEDOP_block/poll never sleep: every block has a zero timeout."""

    blocks = 0

    def block(self, v: VCPU, timeout_ns: int | None = None,
              ready: Callable[[], bool] | None = None) -> None:
        self.blocks += 1
        super().block(v, 0, ready)
        with self.cond:  # the vCPU is "back in the guest": not running in pyxen
            v.running = False
            self.cond.notify_all()


class World:
    """One fuzzed domain, its dom0 table and the guest-visible paging."""

    def __init__(self, rng: random.Random) -> None:
        self.ram = rng.choice([4 << 20, 8 << 20, 16 << 20])
        # Rarely, RAM above the 4 GiB hole as well (a sparse memfd: nothing is allocated
        # until touched).
        size = self.ram if rng.random() < 0.9 else LOWMEM_TOP + (2 << 20)
        self.mem = GuestMemory(size, name="pyxen-fuzz-ram")
        self.ram = size
        self.d = FuzzDomain(domid=GUEST_DOMID, name="fuzz", memory=self.mem,
                            max_vcpus=rng.choice([1, 2, 3]), max_memory=size + (4 << 20))
        d = self.d
        d.pause_count = 0
        d.console = Console()
        d.platform = FakePlatform()
        self.injected = 0
        self.host = EvtchnHost()
        self.full = rng.random() < 0.95  # else: no event channels/grants/timers (-ENOSYS)
        if self.full:
            d.evtchn = GuestEventChannels(self.host, d, inject=self._inject)
            self.dom0 = BackendEventChannels(self.host, 0)
            self.dom0_ports = [self.dom0.open_unbound(GUEST_DOMID) for _ in range(2)]
            d.grant_table = GrantTable(d)
            d.timers = DomainTimers(d, fire=lambda vid: timer_event(d, vid))
        d.console.feed(b"console input\n")
        # Page tables: PML4[0] and PML4[511] -> PDPT; PDPT[0] = 1 GiB writable page at 0,
        # PDPT[2] = the same 1 GiB read-only (CR0.WP is set), PDPT[1] not present.
        self.mem.write(PML4, struct.pack("<Q", PDPT | 3))
        self.mem.write(PML4 + 511 * 8, struct.pack("<Q", PDPT | 3))
        self.mem.write(PDPT, struct.pack("<Q", 0x83))
        self.mem.write(PDPT + 16, struct.pack("<Q", 0x81))
        self.calls = 0

    def _inject(self, vid: int, vector: int) -> None:
        self.injected += 1

    # --- pointers and values --------------------------------------------------------------

    def pointer(self, rng: random.Random) -> int:
        k = rng.randrange(12)
        if k < 5:  # in RAM (the first region)
            top = min(self.ram, LOWMEM_TOP)
            return rng.randrange(0x3000, top - 8) & ~rng.choice([0, 0, 3, 7, 0xFFF])
        if k == 5:  # straddling the end of RAM / of a page
            return rng.choice([min(self.ram, LOWMEM_TOP), PAGE_SIZE * rng.randrange(2, 64)]) \
                - rng.randrange(1, 40)
        if k == 6:  # mapped by the page tables but not RAM, or in the MMIO hole
            return rng.choice([self.ram + rng.randrange(1 << 20), LOWMEM_TOP + 0x1000,
                               (1 << 30) - 8, 0xFEE00000])
        if k == 7:  # the read-only alias / the high alias / not present
            return rng.choice([(2 << 30) + rng.randrange(0x3000, 0x10000),
                               0xFFFFFF8000000000 + rng.randrange(0x3000, 0x10000),
                               (1 << 30) + 0x1000])
        if k == 8:  # non-canonical and huge
            return rng.choice([0x0000800000000000, 0x00007FFFFFFFFFF8, 1 << 63, U64,
                               U64 - 7, rng.getrandbits(64)])
        if k == 9:
            return rng.randrange(0, 0x3000)  # low memory, including the page tables
        if k == 10:
            return rng.getrandbits(32)
        return 0

    def value(self, rng: random.Random, nbytes: int = 8) -> int:
        k = rng.randrange(10)
        if k < 3:
            v = rng.randrange(0, 70)  # ports, refs, vCPUs, sub-ops, small counts
        elif k == 3:
            v = rng.choice([DOMID_SELF, GUEST_DOMID, 0, 1, 0x7FF1, 0xFFFF])
        elif k == 4:
            v = self.pointer(rng)
        elif k == 5:
            v = rng.choice([1023, 1024, 4095, 4096, 4097, EC.EVTCHN_2L_NR_CHANNELS,
                            0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, U64])
        elif k == 6:
            v = rng.randrange(0, self.ram >> 12) if rng.random() < 0.8 else rng.getrandbits(40)
        else:
            v = rng.getrandbits(64)
        return v & ((1 << (8 * nbytes)) - 1)

    def blob(self, rng: random.Random, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            if rng.random() < 0.15:
                out += rng.randbytes(rng.randrange(1, 16))
            else:
                size = rng.choice([2, 4, 4, 8, 8, 8])
                out += self.value(rng, size).to_bytes(size, "little")
        return bytes(out[:n])

    def scribble(self, rng: random.Random, va: int, long_mode: bool) -> None:
        """Random bytes at the guest-physical place a pointer leads to (if any)."""
        gpa = va & 0xFFFFFFFF if not long_mode else va
        if long_mode:
            if (va >> 47) not in (0, 0x1FFFF):
                return
            gpa = va & ((1 << 30) - 1) if (va >> 30) & 0x1FF in (0, 2) else None
            if gpa is None:
                return
        n = rng.choice([8, 16, 32, 64, 256, 1024])
        for start in (gpa, gpa - 8):
            if self.mem.is_ram(start, n):
                self.mem.write(start, self.blob(rng, n))
                return

    # --- one call --------------------------------------------------------------------------

    def draw_call(self, rng: random.Random) -> tuple[int, tuple[int, ...], bool, int]:
        if rng.random() < 0.85:
            nr = rng.choice(list(IMPLEMENTED))
        else:
            nr = rng.randrange(0, 65)
        subs = IMPLEMENTED.get(nr, 8)
        args = []
        for i in range(5):
            k = rng.randrange(8)
            if i == 0 and k < 6:
                v = rng.randrange(0, subs + 2)
            elif k < 2:
                v = rng.choice([U64, U64 - 1, 0x80000000, 0xFFFFFFFF, (1 << 32) | 1,
                                rng.getrandbits(64)])
            elif k < 6:
                v = self.pointer(rng)
            else:
                v = self.value(rng)
            args.append(v)
        if nr == CONSOLE_IO:
            # A write costs time linear in its count (up to all of RAM, preemptible:
            # test_vmm_hypercall_fuzz.py checks pause); keep the fuzzer fast.
            args[1] &= rng.choice([0xFF, 0xFFFF])
        elif nr == GRANT_TABLE_OP and rng.random() < 0.95:
            args[2] &= 0x3F  # GNTTABOP_copy: likewise linear in its count
        long_mode = rng.random() < 0.8
        # Only an online vCPU makes hypercalls (vCPU 0 stands in if the guest downed all).
        online = [v.id for v in self.d.vcpus if v.online] or [0]
        vid = rng.choice(online)
        return nr, tuple(args), long_mode, vid

    def call(self, rng: random.Random) -> int:
        nr, args, long_mode, vid = self.draw_call(rng)
        for a in args:
            if rng.random() < 0.7:
                self.scribble(rng, a, long_mode)
        return self.run(nr, args, long_mode, vid)

    def run(self, nr: int, args: tuple[int, ...], long_mode: bool, vid: int = 0) -> int:
        if not long_mode:
            args = tuple(a & 0xFFFFFFFF for a in args)
            st = PagingState(cr0=0x11, cr3=0, cr4=0, efer=0)  # flat 32-bit, no paging
        else:
            st = PagingState(cr0=0x80010011, cr3=PML4, cr4=0x20, efer=0x500)
        mem = self.mem

        def make_guest() -> GuestAccess:
            return GuestAccess(mem, lambda va, w: translate(mem.read, st, va, w),
                               compat=not long_mode)

        d = self.d
        ctx = HC.HypercallContext(d, d.vcpus[vid], args, make_guest, long_mode,
                                  interrupts_enabled=True)
        self.calls += 1
        try:
            ret = dispatch(ctx, nr)
        except Exception as e:
            raise AssertionError(
                f"hypercall {nr} ({X.HYPERCALL_NAMES.get(nr, '?')}) args "
                f"{[hex(a) for a in args]} long_mode={long_mode} vcpu={vid} raised "
                f"{type(e).__name__}: {e}") from e
        assert isinstance(ret, int) and not isinstance(ret, bool), (nr, args, ret)
        assert -(1 << 63) <= ret < 1 << 64, (nr, args, ret)
        if ret < 0:
            assert -ret in XEN_ERRNOS, f"hypercall {nr} args {args}: not a Xen errno: {ret}"
        check_invariants(self)
        return ret

    def close(self) -> None:
        d = self.d
        with d.cond:
            d.dying = True
            d.cond.notify_all()
        if d.timers is not None:
            # the domain's timer thread survived whatever deadlines the guest set
            assert d.timers.queue._thread.is_alive(), "the domain's timer thread died"
            d.timers.destroy()
            d.timers.queue._thread.join(2)
            assert d.timers.queue.errors == 0, d.timers.queue.last_error
        for t in d.__dict__.get("watchdogs", {}).values():
            t.cancel()
        if d.grant_table is not None:
            d.grant_table.destroy()
        if d.evtchn is not None:
            d.evtchn.destroy()
            for ep in self.dom0_ports:
                ep.close()
        try:
            self.mem.view.release()
            self.mem.map.close()
        except BufferError:
            pass
        os.close(self.mem.fd)


def check_invariants(w: World) -> None:
    """What no sequence of guest hypercalls may break."""
    d = w.d
    mem = d.memory
    assert len(d.vcpus) == d.max_vcpus
    assert d.shared_info_gpa is None or (d.shared_info_gpa % PAGE_SIZE == 0
                                         and mem.is_ram(d.shared_info_gpa, PAGE_SIZE))
    for v in d.vcpus:
        assert v.vcpu_info_gpa is None or mem.is_ram(v.vcpu_info_gpa, ctypes.sizeof(vcpu_info))
        assert not v.blocked
    assert all(0 <= k < H.HVM_PARAM_NR for k in d.hvm_params)
    assert d.shutdown_reason is None or 0 <= d.shutdown_reason <= 255
    ev = d.evtchn
    if ev is not None:
        with ev.host.lock:
            assert ev.ports[0].state == ECS_RESERVED
            assert len(ev.ports) <= ev.max_port + 1
            for p, ch in enumerate(ev.ports):
                assert 0 <= ch.notify_vcpu < ev.nr_vcpus, (p, ch)
                if ch.state == ECS_VIRQ:
                    assert ev.virq_to_port.get((ch.notify_vcpu, ch.virq)) == p, (p, ch)
                elif ch.state == ECS_INTERDOMAIN:
                    rd = ev.host.tables[ch.remote_domid]
                    rch = rd.ports[ch.remote_port]
                    assert rch.state == ECS_INTERDOMAIN and rch.remote_domid == ev.domid \
                        and rch.remote_port == p, (p, ch, rch)
                elif ch.state == ECS_UNBOUND:
                    assert 0 <= ch.remote_domid <= 0xFFFF
                else:
                    assert ch.state in (ECS_FREE, ECS_RESERVED, ECS_IPI) or p == 0, (p, ch)
            for (vcpu, virq), p in ev.virq_to_port.items():
                ch = ev.ports[p]
                assert ch.state == ECS_VIRQ and ch.virq == virq and ch.notify_vcpu == vcpu
            for st in ev.vstate:
                assert st.poll is None  # nobody is polling once the call returned
    gt = d.grant_table
    if gt is not None:
        with gt.lock:
            assert 1 <= gt.nr_frames <= gt.max_frames
            assert len(gt.status) == (grant_to_status_frames(gt.nr_frames)
                                      if gt.version == 2 else 0)
            for page in gt.shared.pages + gt.status.pages:  # placed where the p2m says
                assert page.gfn is None or mem.p2m.lookup(page.gfn) is page
            assert not gt.maptrack  # no backend here
            # every pin is one of the guest's own grant mappings (copies pin nothing)
            pins = Counter((m.ref, bool(m.flags & G.GNTMAP_readonly))
                           for m in gt.host_maps.entries.values())
            for ref, act in gt.active.items():
                assert (act.readers, act.writers) == (pins[(ref, True)], pins[(ref, False)])
            assert sum(pins.values()) == sum(a.pins for a in gt.active.values())


def fuzz(rng: random.Random, calls: int, stats: Counter | None = None) -> World:
    """One domain, `calls` hostile hypercalls; the domain is closed afterwards."""
    w = World(rng)
    try:
        for _ in range(calls):
            ret = w.call(rng)
            if stats is not None:
                stats[ret if ret < 0 else "ok"] += 1
    finally:
        w.close()
    return w


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--calls-per-domain", type=int, default=300)
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(1 << 32)
    master = random.Random(seed)
    stats: Counter = Counter()
    deadline = time.monotonic() + a.seconds
    total = domains = blocks = 0
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        dseed = master.getrandbits(64)
        try:
            w = fuzz(random.Random(dseed), a.calls_per_domain, stats)
        except AssertionError as e:
            print(f"FAIL (seed {seed}, domain seed {dseed}): {e}", file=sys.stderr)
            raise
        total += w.calls
        blocks += w.d.blocks
        domains += 1
    dt = time.monotonic() - t0
    names = {v: k for k, v in vars(E).items() if k.isupper()} | {ETIME: "ETIME"}
    summary = ", ".join(f"{k if k == 'ok' else '-' + names.get(-k, str(-k))} {n}"
                        for k, n in stats.most_common())
    print(f"seed {seed}: {total} hypercalls on {domains} domains in {dt:.1f} s "
          f"({total / dt:.0f}/s), {blocks} block/poll; results: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
