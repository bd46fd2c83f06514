"""/dev/kvm: the VM and vCPU file descriptors and the ioctls pyxen issues on them.

All ioctls go through libc via ctypes: several request numbers do not fit the signed int
that fcntl.ioctl accepts, and variable-length structs need real buffers. ctypes releases
the GIL, so a vCPU thread sitting in KVM_RUN never blocks the rest of the VMM.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os

from . import kvm_abi as K

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl.restype = ctypes.c_int

KVM_DEVICE = "/dev/kvm"
KVM_DEVICE_ENV = "PYXEN_KVM_DEVICE"  # tests point this elsewhere to see the error


class KvmError(OSError):
    pass


class HostError(Exception):
    """The host cannot run domains; the message says how to fix it (one line)."""


def ioctl(fd: int, request: int, arg: int | ctypes._CData | None = 0) -> int:
    if isinstance(arg, ctypes._SimpleCData | ctypes.Structure | ctypes.Union | ctypes.Array):
        ptr = ctypes.addressof(arg)
    else:
        ptr = arg or 0
    ret = _ioctl(fd, request, ptr)
    if ret < 0:
        e = ctypes.get_errno()
        raise KvmError(e, f"ioctl {request:#x}: {os.strerror(e)}")
    return ret


def open_kvm(path: str = KVM_DEVICE) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HostError(f"{path} does not exist: load the KVM module (modprobe kvm_intel or "
                        "kvm_amd) on a host with virtualization enabled") from None
    except PermissionError:
        raise HostError(f"no permission to open {path}: run as root or add this user to the "
                        "'kvm' group") from None
    except OSError as e:
        raise HostError(f"cannot open {path}: {e.strerror}") from None


class Kvm:
    """The system fd: capabilities and what the host's CPU offers."""

    def __init__(self, path: str | None = None) -> None:
        path = path or os.environ.get(KVM_DEVICE_ENV) or KVM_DEVICE
        self.fd = open_kvm(path)
        version = ioctl(self.fd, K.KVM_GET_API_VERSION)
        if version != 12:
            raise HostError(f"{path} speaks KVM API version {version}, pyxen needs 12")
        self.vcpu_mmap_size = ioctl(self.fd, K.KVM_GET_VCPU_MMAP_SIZE)

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, K.KVM_CHECK_EXTENSION, cap)

    def supported_cpuid(self) -> list[K.kvm_cpuid_entry2]:
        n = 64
        while True:
            buf = K.kvm_cpuid2(n)()
            buf.nent = n
            try:
                ioctl(self.fd, K.KVM_GET_SUPPORTED_CPUID, buf)
            except KvmError as e:
                if e.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise
            return [K.kvm_cpuid_entry2.from_buffer_copy(buf.entries[i]) for i in range(buf.nent)]

    def close(self) -> None:
        os.close(self.fd)


class Vm:
    def __init__(self, kvm: Kvm) -> None:
        self.kvm = kvm
        self.fd = ioctl(kvm.fd, K.KVM_CREATE_VM, 0)
        self._keep: list[object] = []

    def enable_cap(self, cap: int, *args: int) -> None:
        ec = K.kvm_enable_cap(cap=cap)
        for i, a in enumerate(args):
            ec.args[i] = a
        ioctl(self.fd, K.KVM_ENABLE_CAP, ec)

    def set_tss_addr(self, addr: int) -> None:
        ioctl(self.fd, K.KVM_SET_TSS_ADDR, addr)

    def create_irqchip(self) -> None:
        ioctl(self.fd, K.KVM_CREATE_IRQCHIP)

    def set_memory_region(self, slot: int, gpa: int, size: int, hva: int, flags: int = 0) -> None:
        region = K.kvm_userspace_memory_region(slot=slot, flags=flags, guest_phys_addr=gpa,
                                               memory_size=size, userspace_addr=hva)
        ioctl(self.fd, K.KVM_SET_USER_MEMORY_REGION, region)

    def get_dirty_log(self, slot: int, bitmap: ctypes.Array) -> None:
        """KVM_GET_DIRTY_LOG: the slot's dirty bitmap (one bit per page) into `bitmap`.
        Without manual protection this also clears the log and write-protects again."""
        ioctl(self.fd, K.KVM_GET_DIRTY_LOG,
              K.kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(bitmap)))

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int,
                        bitmap: ctypes.Array) -> None:
        """KVM_CLEAR_DIRTY_LOG (manual protection): re-arm logging of the pages whose bits
        are set; first_page and num_pages are multiples of 64 except at the slot's end."""
        ioctl(self.fd, K.KVM_CLEAR_DIRTY_LOG,
              K.kvm_clear_dirty_log(slot=slot, num_pages=num_pages, first_page=first_page,
                                    dirty_bitmap=ctypes.addressof(bitmap)))

    def set_msr_filter(self, ranges: list[tuple[int, int, int, bytes]]) -> None:
        """ranges: (flags, base, nmsrs, bitmap); a clear bit sends the access to user space."""
        f = K.kvm_msr_filter(flags=K.KVM_MSR_FILTER_DEFAULT_ALLOW)
        for i, (flags, base, nmsrs, bitmap) in enumerate(ranges):
            buf = ctypes.create_string_buffer(bitmap, len(bitmap))
            self._keep.append(buf)
            f.ranges[i].flags = flags
            f.ranges[i].base = base
            f.ranges[i].nmsrs = nmsrs
            f.ranges[i].bitmap = ctypes.addressof(buf)
        ioctl(self.fd, K.KVM_X86_SET_MSR_FILTER, f)

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        return Vcpu(self, vcpu_id)

    def close(self) -> None:
        os.close(self.fd)


class Vcpu:
    def __init__(self, vm: Vm, vcpu_id: int) -> None:
        self.vm = vm
        self.id = vcpu_id
        self.fd = ioctl(vm.fd, K.KVM_CREATE_VCPU, vcpu_id)
        self._map = mmap.mmap(self.fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_struct = K.kvm_run.from_buffer(self._map)
        self.run_addr = ctypes.addressof(self.run_struct)
        # Views into kvm_run kept once: the exit path reads them on every exit.
        self.sync_regs = self.run_struct.s.regs.regs
        self.sync_sregs = self.run_struct.s.regs.sregs
        self.io = self.run_struct.u.io

    def run(self) -> int:
        """One KVM_RUN; returns the exit reason (KVM_EXIT_INTR when kicked)."""
        ret = _ioctl(self.fd, K.KVM_RUN, 0)
        if ret < 0:
            e = ctypes.get_errno()
            if e in (errno.EINTR, errno.EAGAIN):
                return K.KVM_EXIT_INTR
            raise KvmError(e, f"KVM_RUN: {os.strerror(e)}")
        return self.run_struct.exit_reason

    def io_data(self, size: int, count: int = 1) -> memoryview:
        off = self.io.data_offset
        return memoryview(self._map)[off:off + size * count]

    def get_regs(self) -> K.kvm_regs:
        r = K.kvm_regs()
        ioctl(self.fd, K.KVM_GET_REGS, r)
        return r

    def set_regs(self, r: K.kvm_regs) -> None:
        ioctl(self.fd, K.KVM_SET_REGS, r)

    def get_sregs(self) -> K.kvm_sregs:
        s = K.kvm_sregs()
        ioctl(self.fd, K.KVM_GET_SREGS, s)
        return s

    def set_sregs(self, s: K.kvm_sregs) -> None:
        ioctl(self.fd, K.KVM_SET_SREGS, s)

    def set_cpuid(self, entries: list[K.kvm_cpuid_entry2]) -> None:
        buf = K.kvm_cpuid2(len(entries))()
        buf.nent = len(entries)
        for i, e in enumerate(entries):
            buf.entries[i] = e
        ioctl(self.fd, K.KVM_SET_CPUID2, buf)


    def get_msr(self, index: int) -> int:
        buf = K.kvm_msrs(1)()
        buf.nmsrs = 1
        buf.entries[0].index = index
        if ioctl(self.fd, K.KVM_GET_MSRS, buf) != 1:
            raise KvmError(errno.EINVAL, f"KVM_GET_MSRS {index:#x} failed")
        return buf.entries[0].data

    def set_mp_state(self, state: int) -> None:
        ioctl(self.fd, K.KVM_SET_MP_STATE, K.kvm_mp_state(state))

    def tsc_khz(self) -> int:
        return ioctl(self.fd, K.KVM_GET_TSC_KHZ)

    def close(self) -> None:
        del self.run_struct, self.sync_regs, self.sync_sregs, self.io
        self._map.close()
        os.close(self.fd)
