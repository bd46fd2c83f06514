"""Pure logic of the 2-level event channel ABI and v1 grant tables, on real guest memory
(a memfd) without KVM. Behaviour with real guests is in test_guest_*.py."""

from __future__ import annotations

import ctypes

import pytest

from pyxen.hypervisor import atomic
from pyxen.hypervisor.domain import Domain
from pyxen.hypervisor.event_channel import (
    BackendEventChannels,
    EvtchnError,
    EvtchnHost,
    GuestEventChannels,
)
from pyxen.hypervisor.grant_table import GrantError, GrantTable
from pyxen.hypervisor.memory import GuestMemory
from pyxen.hypervisor.public import errno as E
from pyxen.hypervisor.public import event_channel as EC
from pyxen.hypervisor.public import grant_table as G
from pyxen.hypervisor.public.xen import DOMID_SELF
from pyxen.hypervisor.shared_info import NATIVE

PENDING_OFF, MASK_OFF = NATIVE.pending_off, NATIVE.mask_off
PENDING_SEL_OFF, UPCALL_PENDING_OFF = NATIVE.pending_sel_off, NATIVE.upcall_pending_off


@pytest.fixture
def dom() -> Domain:
    return Domain(domid=7, name="t", memory=GuestMemory(4 << 20), max_vcpus=2,
                  max_memory=4 << 20)


@pytest.fixture
def setup(dom: Domain):
    host = EvtchnHost()
    injected: list[tuple[int, int]] = []
    ev = GuestEventChannels(host, dom, inject=lambda v, vec: injected.append((v, vec)))
    dom0 = BackendEventChannels(host)
    return host, ev, dom0, injected


def bits(ev: GuestEventChannels, off: int, nr: int) -> bool:
    return atomic.test_bit(ev.shared_info_addr() + off, nr)


def test_ports_start_at_one_and_virq_rules(setup) -> None:
    _, ev, _, _ = setup
    assert ev.bind_virq(EC.VIRQ_TIMER, 0) == 1
    assert ev.bind_virq(EC.VIRQ_TIMER, 1) == 2
    with pytest.raises(EvtchnError) as e:
        ev.bind_virq(EC.VIRQ_TIMER, 0)
    assert e.value.errno == E.EEXIST
    with pytest.raises(EvtchnError) as e:
        ev.bind_virq(EC.VIRQ_DOM_EXC, 1)  # global VIRQs bind on vCPU 0 only
    assert e.value.errno == E.EINVAL
    with pytest.raises(EvtchnError) as e:
        ev.bind_virq(EC.VIRQ_TIMER, 5)
    assert e.value.errno == E.ENOENT
    with pytest.raises(EvtchnError) as e:
        ev.bind_virq(EC.NR_VIRQS, 0)
    assert e.value.errno == E.EINVAL
    ev.close(1)
    assert ev.bind_ipi(0) == 1  # lowest free port is reused


def test_set_pending_order_and_upcall_edge(setup) -> None:
    _, ev, _, injected = setup
    ev.callback_vector = 0xF3
    port = ev.bind_ipi(1)
    ev.send(port)
    assert bits(ev, PENDING_OFF, port)
    vi = ev.vcpu_info_addr(1)
    assert atomic.test_bit(vi + PENDING_SEL_OFF, port // 64)
    assert atomic.test_bit(vi + UPCALL_PENDING_OFF, 0)
    assert injected == [(1, 0xF3)]
    ev.send(port)  # already pending: nothing more
    other = ev.bind_ipi(1)
    ev.send(other)  # upcall already pending: no second injection
    assert injected == [(1, 0xF3)]


def test_masked_port_then_unmask_delivers(setup) -> None:
    _, ev, _, injected = setup
    ev.callback_vector = 0x40
    port = ev.bind_ipi(0)
    atomic.test_and_set_bit(ev.shared_info_addr() + MASK_OFF, port)
    ev.send(port)
    assert bits(ev, PENDING_OFF, port) and not ev.upcall_pending(0) and not injected
    ev.unmask_port(port)
    assert ev.upcall_pending(0) and injected == [(0, 0x40)]
    with pytest.raises(EvtchnError) as e:
        ev.unmask_port(5000)
    assert e.value.errno == E.EINVAL


def test_interdomain_with_dom0_backend(setup) -> None:
    host, ev, dom0, injected = setup
    ev.callback_vector = 0x50
    gport = ev.alloc_unbound(0)
    ep = dom0.connect(7, gport)
    assert ep.consume() == 1  # Xen marks the freshly bound local port pending
    ev.send(gport)
    assert ep.wait(1.0) == 1
    ep.notify()
    assert bits(ev, PENDING_OFF, gport) and injected == [(0, 0x50)]
    st = ev.status(gport)
    assert (st.status, st.u.interdomain.dom, st.u.interdomain.port) == (
        EC.EVTCHNSTAT_interdomain, 0, ep.port)
    ev.close(gport)
    assert ep.state == 2  # ECS_UNBOUND: the guest went away
    assert ep.consume() == 1  # and the backend was woken to notice
    ep.notify()  # dropped, no error
    with pytest.raises(EvtchnError) as e:
        ev.send(gport)
    assert e.value.errno == E.EINVAL


def test_bind_interdomain_rules(setup) -> None:
    host, ev, dom0, _ = setup
    ep = dom0.open_unbound(remote_dom=9)  # for another domain
    with pytest.raises(EvtchnError) as e:
        ev.bind_interdomain(0, ep.port)
    assert e.value.errno == E.EINVAL
    with pytest.raises(EvtchnError) as e:
        ev.bind_interdomain(42, 1)
    assert e.value.errno == E.ESRCH
    with pytest.raises(EvtchnError) as e:
        ev.bind_interdomain(0, 100000)
    assert e.value.errno == E.EINVAL
    mine = dom0.open_unbound(remote_dom=7)
    lport = ev.bind_interdomain(0, mine.port)
    assert ev.is_pending(lport)
    # loopback within the guest
    a = ev.alloc_unbound(DOMID_SELF)
    b = ev.bind_interdomain(DOMID_SELF, a)
    ev.clear_pending(b)
    ev.send(a)
    assert ev.is_pending(b)


def test_destroy_frees_everything(setup) -> None:
    host, ev, dom0, _ = setup
    gport = ev.alloc_unbound(0)
    ep = dom0.connect(7, gport)
    ev.bind_virq(EC.VIRQ_TIMER, 0)
    ev.destroy()
    assert ep.state == 2
    with pytest.raises(EvtchnError) as e:
        dom0.bind_interdomain(7, gport)
    assert e.value.errno == E.ESRCH
    assert 7 not in host.tables


def test_port_limit(dom: Domain) -> None:
    ev = GuestEventChannels(EvtchnHost(), dom, max_port=70)
    ports = [ev.bind_ipi(0) for _ in range(70)]
    assert ports == list(range(1, 71))
    with pytest.raises(EvtchnError) as e:
        ev.bind_ipi(0)
    assert e.value.errno == E.ENOSPC


# --- grant tables ------------------------------------------------------------------------


def grant(gt: GrantTable, ref: int, domid: int, gfn: int, flags: int) -> None:
    e = gt.read_entry(ref)
    e.domid, e.frame = domid, gfn
    e.flags = flags


def test_grant_map_status_bits_and_checks(dom: Domain) -> None:
    gt = GrantTable(dom)
    page = 0x200
    dom.memory.write(page << 12, b"hello from the guest")
    grant(gt, 3, 0, page, G.GTF_permit_access)
    m = gt.map(3)
    assert bytes(m.buf[:20]) == b"hello from the guest"
    assert gt.read_entry(3).flags == G.GTF_permit_access | G.GTF_reading | G.GTF_writing
    m.buf[:5] = b"HELLO"
    m2 = gt.map(3, readonly=True)
    gt.unmap(m)
    assert gt.read_entry(3).flags == G.GTF_permit_access | G.GTF_reading
    gt.unmap(m2)
    assert gt.read_entry(3).flags == G.GTF_permit_access
    assert dom.memory.read(page << 12, 5) == b"HELLO"
    with pytest.raises(GrantError) as e:
        gt.unmap(m2.handle)
    assert e.value.status == G.GNTST_bad_handle

    cases = [
        (G.ENTRIES_PER_FRAME_V1, G.GNTST_bad_gntref),  # beyond one frame
    ]
    for ref, status in cases:
        with pytest.raises(GrantError) as e:
            gt.map(ref)
        assert e.value.status == status
    grant(gt, 4, 5, page, G.GTF_permit_access)  # granted to d5, not dom0
    grant(gt, 5, 0, page, G.GTF_permit_access | G.GTF_readonly)
    grant(gt, 6, 0, page, G.GTF_transitive)
    grant(gt, 7, 0, 0xFFFFFF, G.GTF_permit_access)  # not RAM
    for ref, ro, status in ((4, False, G.GNTST_general_error), (5, False, G.GNTST_general_error),
                            (6, True, G.GNTST_general_error), (7, True, G.GNTST_bad_page),
                            (8, True, G.GNTST_general_error)):
        with pytest.raises(GrantError) as e:
            gt.map(ref, readonly=ro)
        assert e.value.status == status, ref
    assert gt.read_entry(7).flags == G.GTF_permit_access  # undone after bad_page
    ro = gt.map(5, readonly=True)
    with pytest.raises(TypeError):
        ro.buf[0] = 1
    gt.unmap(ro)


def test_grant_copy_and_frames(dom: Domain) -> None:
    gt = GrantTable(dom)
    grant(gt, 1, 0, 0x300, G.GTF_permit_access)
    gt.copy_to(1, 100, b"xyz")
    assert gt.copy_from(1, 100, 3) == b"xyz"
    assert gt.read_entry(1).flags == G.GTF_permit_access
    with pytest.raises(GrantError) as e:
        gt.copy_from(1, 4000, 200)
    assert e.value.status == G.GNTST_bad_copy_arg
    # the table moves into guest memory when mapped, entries and all
    assert gt.map_frame(0, 0x100) == 0
    assert dom.memory.read((0x100 << 12) + 8, 8) == bytes(gt.read_entry(1))
    assert gt.map_frame(2, 0x101) == 0 and gt.nr_frames == 3
    assert gt.map_frame(64, 0x102) == -E.EINVAL
    assert gt.map_frame(1 << 31, 0x102) == -E.EINVAL
    gt.destroy()
    with pytest.raises(GrantError) as e:
        gt.map(1)
    assert e.value.status == G.GNTST_bad_domain


def test_cmpxchg32_swaps_only_on_match() -> None:
    buf = ctypes.create_string_buffer(8)
    assert atomic.cmpxchg32(ctypes.addressof(buf), 0, 0x12345678) == 0
    assert atomic.read_u32(ctypes.addressof(buf)) == 0x12345678
    assert atomic.cmpxchg32(ctypes.addressof(buf), 1, 2) == 0x12345678
    assert atomic.read_u32(ctypes.addressof(buf)) == 0x12345678


# --- timers and early events --------------------------------------------------------------


def test_periodic_timer_never_early(dom: Domain) -> None:
    import threading
    import time

    from pyxen.hypervisor.timer import DomainTimers

    fired: list[int] = []
    done = threading.Event()
    timers = DomainTimers(dom, fire=lambda vid: (fired.append(timers.now()),
                                                 len(fired) == 5 and done.set()))
    start = timers.now()
    timers.set_periodic(1, 2_000_000)
    assert done.wait(5)
    timers.set_periodic(1, 0)
    for n, t in enumerate(fired[:5], 1):
        assert t - start >= n * 2_000_000
    shot: list[int] = []
    timers.fire = lambda vid: shot.append(vid)
    timers.set_singleshot(0, timers.now() + 1_000_000)
    timers.set_singleshot(1, timers.now() + 1_000_000)
    timers.stop_singleshot(1)
    time.sleep(0.05)
    assert shot == [0]
    timers.destroy()


def test_events_before_shared_info_is_mapped(setup, dom: Domain) -> None:
    from pyxen.hypervisor.shared_info import map_shared_info

    _, ev, _, _ = setup
    dom.evtchn = ev
    port = ev.bind_ipi(0)
    ev.send(port)
    map_shared_info(dom, 0x10)
    assert ev.shared_info_addr() == dom.memory.hva + 0x10000
    assert ev.is_pending(port) and ev.upcall_pending(0)


def test_kvm_msi_matches_linux_header(tmp_path) -> None:
    import shutil
    import subprocess

    from pyxen.arch.x86.irq import KVM_SIGNAL_MSI, kvm_msi

    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    fields = [f[0] for f in kvm_msi._fields_]
    src = tmp_path / "msi.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\n"
                   "int main(void) {\n"
                   '  printf("%zu %lu\\n", sizeof(struct kvm_msi), (unsigned long)KVM_SIGNAL_MSI);\n'
                   + "".join(f'  printf("%zu\\n", offsetof(struct kvm_msi, {f}));\n'
                             for f in fields) + "  return 0;\n}\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "msi"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "msi")], check=True, capture_output=True,
                         text=True).stdout.split()
    assert int(out[0]) == ctypes.sizeof(kvm_msi) and int(out[1]) == KVM_SIGNAL_MSI
    assert [int(x) for x in out[2:]] == [getattr(kvm_msi, f).offset for f in fields]


def test_rearming_timers_does_not_grow_the_heap(dom: Domain) -> None:
    from pyxen.hypervisor.timer import DomainTimers

    timers = DomainTimers(dom, fire=lambda vid: None)
    far = timers.now() + 10**12
    for i in range(10000):
        timers.set_singleshot(0, far + i)
    assert len(timers.queue._heap) < 300
    timers.destroy()
