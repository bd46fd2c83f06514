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


def fast_entry(ev: GuestEventChannels, port: int) -> int:
    """The eventfd the C vCPU loop would write for a send on port, or -1 (FastSend)."""
    a = ev.fast_send.area
    p = a.port[port]
    return p.fd if p.gen == a.gen else -1


def test_fast_send_entries_follow_the_ports(setup) -> None:
    """A send to a dom0 backend enters the port for the C vCPU loop; closing either end
    (and any close at all) drops every entry before the backend's eventfd can close."""
    _, ev, dom0, _ = setup
    a, b = ev.alloc_unbound(0), ev.alloc_unbound(0)
    ep_a, ep_b = dom0.connect(7, a), dom0.connect(7, b)
    assert fast_entry(ev, a) == fast_entry(ev, b) == -1  # entered by a send only
    ev.send(a)
    ev.send(b)
    assert (fast_entry(ev, a), fast_entry(ev, b)) == (ep_a.fd, ep_b.fd)
    ipi = ev.bind_ipi(0)
    ev.send(ipi)  # delivered to the guest itself: never done in C
    assert fast_entry(ev, ipi) == -1
    ev.close(ipi)  # any close drops every entry
    assert fast_entry(ev, a) == fast_entry(ev, b) == -1
    ev.send(a)
    ev.send(b)
    ep_b.close()  # the backend goes: entries are dropped before its eventfd closes
    assert fast_entry(ev, a) == fast_entry(ev, b) == -1
    ev.send(b)  # unbound now: dropped, as in Xen, and not entered
    ev.send(a)
    assert (fast_entry(ev, a), fast_entry(ev, b)) == (ep_a.fd, -1)
    ev.close(a)
    assert fast_entry(ev, a) == -1
    # guest-to-guest (here: the guest with itself) is no backend's eventfd
    x = ev.alloc_unbound(DOMID_SELF)
    y = ev.bind_interdomain(DOMID_SELF, x)
    ev.send(x)
    assert fast_entry(ev, x) == fast_entry(ev, y) == -1


def test_fast_send_invalidate_waits_for_a_writer(setup) -> None:
    """invalidate() returns only once no vCPU thread is inside its eventfd write (`busy`),
    so the fd it looked up is still open while it writes."""
    import threading
    import time

    _, ev, _, _ = setup
    a = ev.fast_send.area
    a.busy = 1  # a C writer inside
    t0 = time.monotonic()
    threading.Timer(0.2, lambda: setattr(a, "busy", 0)).start()
    gen = a.gen
    ev.fast_send.invalidate()
    assert time.monotonic() - t0 >= 0.15 and a.gen != gen


def test_fast_send_generation_wraps_without_reviving_entries(setup) -> None:
    _, ev, dom0, _ = setup
    a, b = ev.alloc_unbound(0), ev.alloc_unbound(0)
    ep_a, _ = dom0.connect(7, a), dom0.connect(7, b)
    ev.send(a)  # entered in generation 1
    ev.fast_send.area.gen = 0xFFFFFFFF
    ev.send(b)  # entered in the last generation before the wrap
    ev.fast_send.invalidate()
    assert ev.fast_send.area.gen == 1 and fast_entry(ev, a) == fast_entry(ev, b) == -1
    ev.send(a)
    assert fast_entry(ev, a) == ep_a.fd


def test_fast_send_layout_matches_the_c_loop() -> None:
    from pyxen.arch.x86 import _vcpuloop
    from pyxen.hypervisor.event_channel import _FastSendArea

    assert _FastSendArea.sends.offset == _vcpuloop.FAST_SEND_SENDS_OFFSET
    assert _FastSendArea.port.offset == _vcpuloop.FAST_SEND_PORT_OFFSET


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


# --- 2-level on a 32-bit guest's shared_info ------------------------------------------------


def test_two_level_on_a_32bit_shared_info(setup, dom: Domain) -> None:
    """has_32bit_shinfo: 32-bit words, so port 33's selector bit is 1 (not 0) in a 32-bit
    evtchn_pending_sel at offset 4; the mask bitmap starts 128 bytes after the pending
    one; 1024 ports. Read back through the ctypes twin of the 32-bit layout."""
    from pyxen.hypervisor.public.xen import compat_shared_info
    from pyxen.hypervisor.shared_info import COMPAT, map_shared_info

    _, ev, _, injected = setup
    dom.evtchn = ev
    dom.has_32bit_shinfo = True
    map_shared_info(dom, 0x10)
    ev.callback_vector = 0xF3
    ports = [ev.bind_ipi(1) for _ in range(40)]
    assert ports[32] == 33
    ev.send(33)
    si = compat_shared_info.from_address(ev.shared_info_addr())
    assert si.evtchn_pending[1] == 1 << 1  # port 33 = word 1, bit 1
    assert si.vcpu_info[1].evtchn_pending_sel == 1 << 1
    assert si.vcpu_info[1].evtchn_upcall_pending == 1 and injected == [(1, 0xF3)]
    assert si.vcpu_info[1].arch.cr2 == 0  # where a 64-bit selector word would have gone
    # a masked port: pending, no selector bit; unmask delivers it
    si.evtchn_mask[1] |= 1 << 4  # port 36
    ev.send(36)
    assert si.evtchn_pending[1] & (1 << 4)
    si.vcpu_info[1].evtchn_pending_sel = 0
    si.vcpu_info[1].evtchn_upcall_pending = 0
    ev.unmask_port(36)
    assert si.vcpu_info[1].evtchn_pending_sel == 1 << 1 and injected[-1] == (1, 0xF3)
    assert ev.is_pending(36) and atomic.test_bit(ev.shared_info_addr() + COMPAT.pending_off, 36)
    # register_vcpu_info's "everything pending" is a 32-bit word here
    ev.vcpu_info_moved(0)
    assert si.vcpu_info[0].evtchn_pending_sel == 0xFFFFFFFF and si.vcpu_info[0].arch.cr2 == 0
    assert ev.max_evtchns() == EC.EVTCHN_2L_NR_CHANNELS_COMPAT


def test_32bit_shared_info_port_limit(dom: Domain) -> None:
    dom.has_32bit_shinfo = True
    ev = GuestEventChannels(EvtchnHost(), dom, max_port=5000)
    for _ in range(1023):
        ev.bind_ipi(0)
    with pytest.raises(EvtchnError) as e:
        ev.bind_ipi(0)
    assert e.value.errno == E.ENOSPC
    assert len(ev.ports) == 1024


def test_wallclock_follows_the_latched_layout(dom: Domain) -> None:
    """hvm_latch_shinfo_size: the wallclock is written where the layout has it (32-bit:
    wc_sec_hi in arch_shared_info), each time the layout is latched."""
    import time

    from pyxen.hypervisor.public.xen import compat_shared_info, shared_info
    from pyxen.hypervisor.shared_info import latch_shinfo_size, map_shared_info

    map_shared_info(dom, 0x20)
    addr = dom.memory.hva + 0x20000
    native = shared_info.from_address(addr)
    assert native.wc_version == 2 and abs(native.wc_sec - time.time()) < 600
    latch_shinfo_size(dom, long_mode=False)
    compat = compat_shared_info.from_address(addr)
    assert dom.has_32bit_shinfo
    assert compat.wc_version == 2 and abs(compat.wc_sec - time.time()) < 600
    assert compat.arch.wc_sec_hi == 0 and compat.wc_nsec < 10**9
    latch_shinfo_size(dom, long_mode=True)
    assert not dom.has_32bit_shinfo and native.wc_version == 4


# --- FIFO ----------------------------------------------------------------------------------

CB_GFN, ARRAY_GFN = 0x100, 0x101


@pytest.fixture
def fifo(setup, dom: Domain):
    from pyxen.hypervisor.event_fifo import EvtchnFifo

    _, ev, _, injected = setup
    dom.evtchn = ev
    ev.vstate[0].upcall_vector = 0xF3
    assert ev.init_control(0, CB_GFN, 8) == EC.EVTCHN_FIFO_LINK_BITS
    ev.expand_array(ARRAY_GFN)
    assert isinstance(ev.abi, EvtchnFifo)
    return ev, injected


def word(dom: Domain, port: int) -> int:
    return int.from_bytes(dom.memory.read((ARRAY_GFN << 12) + 4 * port, 4), "little")


def set_word(dom: Domain, port: int, value: int) -> None:
    dom.memory.write((ARRAY_GFN << 12) + 4 * port, value.to_bytes(4, "little"))


def control_block(dom: Domain) -> EC.evtchn_fifo_control_block:
    return EC.evtchn_fifo_control_block.from_buffer_copy(
        dom.memory.read((CB_GFN << 12) + 8, ctypes.sizeof(EC.evtchn_fifo_control_block)))


P, M, L, B = (1 << 31), (1 << 30), (1 << 29), (1 << 28)


def test_fifo_links_a_queue_in_arrival_order(fifo, dom: Domain) -> None:
    ev, injected = fifo
    a, b, c = ev.bind_ipi(0), ev.bind_ipi(0), ev.bind_ipi(0)
    for p in (c, a, b):
        ev.send(p)
    cb = control_block(dom)
    assert cb.head[7] == c and cb.ready == 1 << 7
    assert word(dom, c) == P | L | a and word(dom, a) == P | L | b and word(dom, b) == P | L
    assert injected == [(0, 0xF3)]  # one upcall: READY went 0 -> 1 once
    ev.send(a)  # already pending and linked: nothing changes
    assert word(dom, a) == P | L | b and injected == [(0, 0xF3)]
    # another priority: its own queue and READY bit
    ev.set_priority(a, 3)
    d = ev.bind_ipi(0)
    ev.set_priority(d, 3)
    ev.send(d)
    assert control_block(dom).head[3] == d and control_block(dom).ready == (1 << 7) | (1 << 3)
    with pytest.raises(EvtchnError) as e:
        ev.set_priority(d, 16)
    assert e.value.errno == E.EINVAL


def test_fifo_guest_emptied_queue_gets_a_new_head(fifo, dom: Domain) -> None:
    """The guest consumed the tail (cleared LINKED): the next event cannot be linked
    behind it, so it becomes the head and READY is raised again."""
    ev, injected = fifo
    a, b = ev.bind_ipi(0), ev.bind_ipi(0)
    ev.send(a)
    set_word(dom, a, 0)  # the guest took it: unlinked and handled
    dom.memory.write((CB_GFN << 12) + 8, b"\0\0\0\0")  # READY cleared by the guest
    ctypes.c_uint8.from_address(ev.vcpu_info_addr(0)).value = 0  # upcall_pending
    ev.send(b)
    assert control_block(dom).head[7] == b and word(dom, a) == 0 and word(dom, b) == P | L
    assert len(injected) == 2


def test_fifo_relinks_against_a_racing_guest(fifo, dom: Domain, monkeypatch) -> None:
    """The guest changes the tail word between Xen's read and cmpxchg (here: masks it):
    the link is retried with BUSY held, and lands with the guest's change kept."""
    from pyxen.hypervisor import event_fifo

    ev, _ = fifo
    a, b = ev.bind_ipi(0), ev.bind_ipi(0)
    ev.send(a)
    real = atomic.cmpxchg32
    seen: list[int] = []

    def racing(addr: int, old: int, new: int) -> int:
        if not seen:
            set_word(dom, a, word(dom, a) | M)  # the guest wins the first race
        seen.append(atomic.read_u32(addr))
        return real(addr, old, new)

    monkeypatch.setattr(event_fifo.atomic, "cmpxchg32", racing)
    ev.send(b)
    assert len(seen) == 2 and seen[1] & B  # second try with BUSY set
    assert word(dom, a) == P | M | L | b  # linked, masked kept, BUSY released


def test_fifo_priority_change_leaves_the_old_queue_empty(fifo, dom: Domain) -> None:
    """A port that was the tail of queue 7 and moves to queue 3 must stop being queue 7's
    tail, or the next event of queue 7 would be linked into queue 3."""
    ev, _ = fifo
    a, b = ev.bind_ipi(0), ev.bind_ipi(0)
    ev.send(a)
    set_word(dom, a, 0)  # consumed
    ev.set_priority(a, 3)
    ev.send(a)
    ev.send(b)
    cb = control_block(dom)
    assert cb.head[3] == a and cb.head[7] == b and word(dom, a) == P | L


def test_fifo_carries_2level_pending_over(setup, dom: Domain) -> None:
    """Ports pending under 2-level stay pending across init_control and are linked once
    the event array page holding their word arrives."""
    _, ev, _, injected = setup
    dom.evtchn = ev
    a, b = ev.bind_ipi(0), ev.bind_ipi(0)
    ev.send(a)
    ev.init_control(0, CB_GFN, 8)
    assert not ev.is_pending(a)  # no event word yet
    ev.send(b)  # remembered too
    ev.expand_array(ARRAY_GFN)
    assert word(dom, a) == P | L | b and word(dom, b) == P | L
    assert control_block(dom).head[7] == a


def test_fifo_without_control_block_and_busy_ports(fifo, dom: Domain) -> None:
    ev, _ = fifo
    p = ev.bind_ipi(1)  # vCPU 1 has no control block: pending, never queued
    ev.send(p)
    assert word(dom, p) == P and ev.abi.warnings == 1
    q = ev.bind_ipi(0)
    ev.send(q)
    ev.close(q)  # closed while still LINKED: not reused until the guest unlinks it
    assert word(dom, q) == L
    r = ev.bind_ipi(0)
    assert r != q
    set_word(dom, q, 0)
    ev.close(r)
    assert ev.bind_ipi(0) == q


def test_fifo_init_control_errors_leave_2level(setup, dom: Domain) -> None:
    from pyxen.hypervisor.event_2l import EvtchnTwoLevel

    _, ev, _, _ = setup
    for vid, gfn, off, errno in ((2, CB_GFN, 0, E.ENOENT), (0, CB_GFN, 4096 - 64, E.EINVAL),
                                 (0, CB_GFN, 4, E.EINVAL), (0, 1 << 40, 0, E.EINVAL)):
        with pytest.raises(EvtchnError) as e:
            ev.init_control(vid, gfn, off)
        assert e.value.errno == errno
    assert isinstance(ev.abi, EvtchnTwoLevel)
    with pytest.raises(EvtchnError) as e:
        ev.expand_array(ARRAY_GFN)
    assert e.value.errno == E.EOPNOTSUPP


def test_debug_key_e_shows_the_fifo_state(fifo, dom: Domain) -> None:
    """domain_dump_evtchn_info with FIFO: [p/m/ BUSY flag, LINK or '-' ] per port."""
    from pyxen.hypervisor.keyhandler import dump_evtchn

    ev, _ = fifo
    a, b, c = ev.bind_ipi(0), ev.bind_ipi(0), ev.bind_ipi(0)
    ev.send(a)
    ev.send(b)
    set_word(dom, c, M)  # masked by the guest: pending, never linked
    ev.send(c)
    lines = dump_evtchn(dom)
    assert f"    {a:4d} [1/0/  {b:<4d}]: s=6 n=0 x=0" in lines
    assert f"    {b:4d} [1/0/  0   ]: s=6 n=0 x=0" in lines  # the tail links nowhere
    assert f"    {c:4d} [1/1/  -   ]: s=6 n=0 x=0" in lines
