"""Log-dirty mode for live migration (Xen's paging_log_dirty / XEN_DOMCTL_SHADOW_OP_CLEAN).

Two sources of dirty pages, as on Xen where both the guest's own writes (through the
p2m's write protection) and the hypervisor's copies into guest memory
(`paging_mark_pfn_dirty` in `hvm_copy_to_guest_phys`, grant copies and unmaps) are logged:

- **the guest's writes**: KVM's dirty log on the RAM window slots (`KVM_MEM_LOG_DIRTY_PAGES`,
  fetched with `KVM_GET_DIRTY_LOG`). With `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` the fetch
  does not re-protect pages; `KVM_CLEAR_DIRTY_LOG` re-arms exactly the pages fetched, so a
  fetch costs the write faults of the pages that were really dirty.
- **pyxen's writes**: the hypervisor and the backends write guest RAM through the VMM's
  mapping of the memfd (`GuestMemory.write`, grant copies, writable grant mappings, event
  channel bits in a vcpu_info in RAM). KVM never sees those, so `GuestMemory` marks them
  here (`mark_range`) while logging is on.

Only RAM windows are logged: pages placed outside them (grant frames, firmware) are the
hypervisor's and travel in its own records, not as page data.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

from ..arch.x86 import kvm_abi as K
from ..arch.x86.kvm import KvmError, Vm
from ..hypervisor.p2m import P2M, PAGE_SHIFT, PAGE_SIZE

_BITS = 64


@dataclass
class _Slot:
    slot: int
    gfn: int
    pages: int
    hva: int
    bitmap: ctypes.Array  # one bit per page, in 64-bit words (KVM's layout)


def bitmap_gfns(bitmap: bytes | bytearray | ctypes.Array, base_gfn: int) -> list[int]:
    """The gfns whose bits are set (bit i of 64-bit little-endian word w: page 64*w + i)."""
    words = memoryview(bitmap).cast("B").cast("Q")
    out: list[int] = []
    for w, word in enumerate(words):
        if not word:
            continue
        g = base_gfn + w * _BITS
        while word:
            low = word & -word
            out.append(g + low.bit_length() - 1)
            word ^= low
    return out


class DirtyLog:
    """Log-dirty mode over a domain's RAM windows (KVM slots 0..n-1, see hypervisor/p2m.py)."""

    def __init__(self, vm: Vm, p2m: P2M) -> None:
        self.vm = vm
        self.p2m = p2m
        self.slots = []
        for i, w in enumerate(p2m.windows):
            words = (w.pages + _BITS - 1) // _BITS
            self.slots.append(_Slot(i, w.gfn, w.pages, p2m.store.hva + w.offset,
                                    (ctypes.c_uint64 * words)()))
        self.manual = False
        self.enabled = False
        self._lock = threading.Lock()
        self._user: set[int] = set()  # gfns pyxen wrote since the last fetch
        self.stats = {"fetches": 0, "guest_pages": 0, "pyxen_pages": 0}

    # --- on / off ----------------------------------------------------------------------------

    def enable(self) -> None:
        """Start logging: from now on every write to RAM is recorded."""
        try:
            self.vm.enable_cap(K.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                               K.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
            self.manual = True
        except KvmError:  # older KVM: GET_DIRTY_LOG fetches and re-protects in one go
            self.manual = False
        with self._lock:
            self._user.clear()
        self.enabled = True
        with self.p2m.lock:
            for s in self.slots:
                self.vm.set_memory_region(s.slot, s.gfn << PAGE_SHIFT, s.pages * PAGE_SIZE,
                                          s.hva, K.KVM_MEM_LOG_DIRTY_PAGES)
        # Whatever KVM logged before (nothing: logging was off) is dropped.
        self.fetch()

    def disable(self) -> None:
        """Stop logging (migration finished or cancelled): the slots lose the flag."""
        if not self.enabled:
            return
        self.enabled = False
        with self.p2m.lock:
            for s in self.slots:
                self.vm.set_memory_region(s.slot, s.gfn << PAGE_SHIFT, s.pages * PAGE_SIZE,
                                          s.hva, 0)
        if self.manual:
            try:
                self.vm.enable_cap(K.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, 0)
            except KvmError:
                pass
        with self._lock:
            self._user.clear()

    # --- pyxen's own writes ----------------------------------------------------------------

    def mark(self, gfn: int) -> None:
        if self.enabled:
            with self._lock:
                self._user.add(gfn)

    def mark_range(self, gpa: int, n: int) -> None:
        """Guest-physical [gpa, gpa+n) was written by pyxen (not through the guest's MMU)."""
        if self.enabled and n > 0:
            first, last = gpa >> PAGE_SHIFT, (gpa + n - 1) >> PAGE_SHIFT
            with self._lock:
                self._user.update(range(first, last + 1))

    # --- one round --------------------------------------------------------------------------

    def fetch(self) -> list[int]:
        """Fetch and clear: the sorted gfns written since the previous fetch (or enable).
        Pages are re-armed before the caller reads them, so a write racing with the copy
        shows up in the next fetch (Xen's CLEAN op has the same order)."""
        out: set[int] = set()
        for s in self.slots if self.enabled else ():
            self.vm.get_dirty_log(s.slot, s.bitmap)
            gfns = bitmap_gfns(s.bitmap, s.gfn)
            if gfns and self.manual:
                self.vm.clear_dirty_log(s.slot, 0, s.pages, s.bitmap)
            out.update(gfns)
        self.stats["guest_pages"] += len(out)
        with self._lock:
            user, self._user = self._user, set()
        self.stats["pyxen_pages"] += len(user)
        self.stats["fetches"] += 1
        out |= user
        return sorted(out)
