"""The vCPU exit loop in C (arch/x86/_vcpuloop.c) and its pure-Python twin.

The C loop is driven directly on a tiny real-mode VM (no irqchip, so HLT exits too): the
exits it answers itself, the ones it hands back, the hypercall callable and %rax, the exit
counter the watchdog reads, the callback-vector flag, kicks, and an exception from a
handler. Then whole guests run on both loops: hypercalls on two vCPUs at once, every
misbehaviour of mode=misbehave, a triple fault's crash report.
"""

from __future__ import annotations

import ctypes
import errno
import mmap

import pytest

from pyxen.arch.x86 import kvm_abi as K
from pyxen.arch.x86 import machine
from pyxen.arch.x86.kvm import Kvm, Vm
from pyxen.arch.x86.watchdog import VcpuWatch

vcpuloop = pytest.importorskip("pyxen.arch.x86._vcpuloop")

HCALL, DEBUG = 0x9E, 0xE9
CODE = bytes.fromhex(
    "66b811000000"  # mov $17,%eax
    "66e79e"        # out %eax,$0x9e     hypercall 17 -> the callable, its result in %eax
    "e680"          # out %al,$0x80      ignored, in C
    "e480"          # in $0x80,%al       all ones, in C
    "e6e9"          # out %al,$0xe9      the debug port: back to Python
    "f4"            # hlt                (no irqchip: KVM_EXIT_HLT) back to Python
)


@pytest.fixture
def tiny_vm():
    """A real-mode vCPU at 0:0x1000 running CODE; yields (vcpu, ctl)."""
    kvm = Kvm()
    vm = Vm(kvm)
    vm.set_tss_addr(0xFFFBD000)
    ram = mmap.mmap(-1, 0x10000)
    ram[0x1000:0x1000 + len(CODE)] = CODE
    hva = ctypes.addressof(ctypes.c_char.from_buffer(ram))
    vm.set_memory_region(0, 0, 0x10000, hva)
    v = vm.create_vcpu(0)
    s = v.get_sregs()
    s.cs.base, s.cs.selector = 0, 0
    v.set_sregs(s)
    r = v.get_regs()
    r.rip, r.rflags, r.rax = 0x1000, 2, 0
    r.rbx, r.rcx, r.rdx, r.rsi, r.rdi = 1, 2, 3, 4, (1 << 32) | 5  # 32-bit: truncated
    v.set_regs(r)
    v.run_struct.kvm_valid_regs = K.KVM_SYNC_X86_REGS | K.KVM_SYNC_X86_SREGS
    w = VcpuWatch()
    yield v, w
    v.run_struct.kvm_valid_regs = 0


def run(v, w: VcpuWatch, hypercall) -> int:
    return vcpuloop.run(v.fd, v.run_addr, ctypes.addressof(w.ctl), hypercall, HCALL, DEBUG)


def test_c_loop_is_the_default(monkeypatch) -> None:
    monkeypatch.delenv(machine.PURE_LOOP_ENV, raising=False)
    assert machine.c_loop_available()
    monkeypatch.setenv(machine.PURE_LOOP_ENV, "1")
    assert not machine.c_loop_available()


def test_exits_answered_in_c_and_handed_back(tiny_vm) -> None:
    v, w = tiny_vm
    calls = []

    def hypercall(*args: int) -> int:
        calls.append(args)
        return -38  # -ENOSYS: a 32-bit caller gets the low 32 bits

    assert run(v, w, hypercall) == K.KVM_EXIT_IO  # the debug port write
    assert v.io.port == DEBUG
    # nr 17, five argument registers (ebx ecx edx esi edi: a 32-bit caller), flags 0
    assert calls == [(17, 1, 2, 3, 4, 5, 0)]
    # %eax = -ENOSYS (32-bit), then `in` replaced %al with all ones
    assert v.sync_regs.rax == 0xFFFFFFFF & ~0xFF | 0xFF
    assert w.exits == 4  # hypercall, ignored out, in, debug port
    assert run(v, w, hypercall) == K.KVM_EXIT_HLT
    assert w.exits == 5 and len(calls) == 1


def test_hypercall_result_goes_to_rax(tiny_vm) -> None:
    v, w = tiny_vm
    assert run(v, w, lambda *a: 0x12345678) == K.KVM_EXIT_IO
    assert v.sync_regs.rax == 0x123456FF  # %al then overwritten by `in`


def test_armed_callback_vector_returns_to_python(tiny_vm) -> None:
    v, w = tiny_vm
    w.armed = True
    assert w.ctl[1] == 1
    v.sync_regs.rflags = 0x202  # IF set: the vector could be taken now
    v.run_struct.kvm_dirty_regs = K.KVM_SYNC_X86_REGS
    assert run(v, w, lambda *a: 0) == vcpuloop.ARMED  # after the hypercall's exit
    assert w.exits == 1


def test_kick_returns_eintr(tiny_vm) -> None:
    v, w = tiny_vm
    v.run_struct.immediate_exit = 1
    assert run(v, w, lambda *a: 0) == -errno.EINTR
    assert w.exits == 1


def test_handler_exception_propagates(tiny_vm) -> None:
    v, w = tiny_vm

    def hypercall(*args: int) -> int:
        raise ValueError("handler bug")

    with pytest.raises(ValueError, match="handler bug"):
        run(v, w, hypercall)
    with pytest.raises(TypeError):
        vcpuloop.run(v.fd)


@pytest.fixture(params=["c", "pure"])
def loop(request, monkeypatch) -> str:
    if request.param == "pure":
        monkeypatch.setenv(machine.PURE_LOOP_ENV, "1")
    else:
        monkeypatch.delenv(machine.PURE_LOOP_ENV, raising=False)
    return request.param


@pytest.mark.timeout(120)
def test_hypercalls_on_two_vcpus_at_once(boot, loop: str) -> None:
    d = boot("mode=bench n=300 smp=1", vcpus=2)
    d.request("unpause")
    assert d.wait_event("shutdown")["reason"] == "poweroff", "\n".join(d.log)
    marks = [ln.split("pyxen bench: ")[1] for ln in d.guest_lines() if "pyxen bench: " in ln]
    assert marks == ["exit loop start n=300", "exit loop done",
                     "hypercall loop start n=300", "hypercall loop done",
                     "smp hypercall loop start n=300 vcpus=2", "smp hypercall loop done"]


@pytest.mark.timeout(120)
def test_misbehaviour_and_triple_fault(boot, loop: str) -> None:
    d = boot("mode=misbehave")
    d.request("unpause")
    assert d.wait_event("shutdown")["reason"] == "poweroff"
    got = [ln for ln in d.guest_lines() if ln.startswith("pyxen misbehave")]
    assert got[0] == "pyxen misbehave: xen_version(extraversion, unmapped pointer) = -14"
    assert "pyxen misbehave: hypercall 127 = -38" in got
    assert got[-1] == "pyxen misbehave: still alive, powering off"
    d = boot("mode=triplefault")
    d.request("unpause")
    assert d.wait_event("shutdown")["reason"] == "crash"
    assert f"(XEN) d{d.domid}v0 triple fault: crashing the domain" in "\n".join(d.log)
