"""Atomic read-modify-write on guest memory shared with running vCPUs.

Event-channel bits and grant-entry flags are updated by the guest (natively, on another
CPU) at the same time as by pyxen, so plain Python read-modify-write would lose updates.
Xen uses locked bit operations and cmpxchg; so do we, through libatomic's lock-free
byte and 32-bit primitives (x86 `lock or/and/cmpxchg`). Byte-granular bit operations
never straddle a cache line, whatever alignment the guest chose for its vcpu_info.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_SEQ_CST = 5


def _load_libatomic() -> ctypes.CDLL:
    """libatomic ships with gcc (Debian's libatomic1), which pyxen needs anyway.

    Loaded as a PyDLL: these calls take nanoseconds, so they keep the GIL. A CDLL would
    drop and retake it around each one, handing it to whichever thread waits for it (a
    backend woken by the same notification) and stalling the caller until it comes back.
    """
    name = ctypes.util.find_library("atomic") or "libatomic.so.1"
    try:
        lib = ctypes.PyDLL(name)
    except OSError as e:
        raise ImportError(f"pyxen needs libatomic ({e}): apt-get install libatomic1") from None
    for fn in (lib.__atomic_fetch_or_1, lib.__atomic_fetch_and_1):
        fn.argtypes = [ctypes.c_void_p, ctypes.c_uint8, ctypes.c_int]
        fn.restype = ctypes.c_uint8
    lib.__atomic_compare_exchange_4.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                                ctypes.c_uint32, ctypes.c_int, ctypes.c_int]
    lib.__atomic_compare_exchange_4.restype = ctypes.c_bool
    return lib


_lib = _load_libatomic()
_fetch_or1 = _lib.__atomic_fetch_or_1
_fetch_and1 = _lib.__atomic_fetch_and_1
_cas4 = _lib.__atomic_compare_exchange_4


def fetch_or8(addr: int, bits: int) -> int:
    """Atomically *addr |= bits (one byte); returns the old byte."""
    return _fetch_or1(addr, bits, _SEQ_CST)


def fetch_and8(addr: int, bits: int) -> int:
    """Atomically *addr &= bits (one byte); returns the old byte."""
    return _fetch_and1(addr, bits, _SEQ_CST)


def cmpxchg32(addr: int, old: int, new: int) -> int:
    """Atomic compare-and-swap of the aligned u32 at addr; returns the value found there."""
    expected = ctypes.c_uint32(old)
    _cas4(addr, ctypes.addressof(expected), new, _SEQ_CST, _SEQ_CST)
    return expected.value


def test_and_set_bit(addr: int, nr: int) -> bool:
    """Xen's test_and_set_bit on a little-endian bitmap at addr."""
    return bool(fetch_or8(addr + (nr >> 3), 1 << (nr & 7)) & (1 << (nr & 7)))


def test_and_clear_bit(addr: int, nr: int) -> bool:
    mask = 1 << (nr & 7)
    return bool(fetch_and8(addr + (nr >> 3), 0xFF ^ mask) & mask)


def test_bit(addr: int, nr: int) -> bool:
    return bool(ctypes.c_uint8.from_address(addr + (nr >> 3)).value & (1 << (nr & 7)))


def read_u32(addr: int) -> int:
    return ctypes.c_uint32.from_address(addr).value


_libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the call keeps the GIL (see above)
_write = _libc.write
_write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_write.restype = ctypes.c_ssize_t
_ONE = ctypes.c_uint64(1)
_ONE_ADDR = ctypes.addressof(_ONE)


def eventfd_signal(fd: int) -> None:
    """os.eventfd_write(fd, 1) without letting go of the GIL: the write never blocks on
    a non-blocking eventfd, and the thread it wakes gets the GIL when the caller next
    blocks (for a vCPU thread: back in KVM_RUN) instead of in the middle of a hypercall."""
    if _write(fd, _ONE_ADDR, 8) != 8:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
