"""XENVER_get_features: the XENFEAT_* bits a PVH guest of pyxen gets."""

from __future__ import annotations

from .domain import Domain
from .public import features as F
from .public.features import XENFEAT_NR_SUBMAPS

__all__ = ["submap", "XENFEAT_NR_SUBMAPS"]


def submap(domain: Domain, idx: int) -> int:
    if idx != 0:
        return 0
    bits = (F.XENFEAT_writable_page_tables, F.XENFEAT_auto_translated_physmap,
            F.XENFEAT_supervisor_mode_kernel, F.XENFEAT_hvm_safe_pvclock,
            F.XENFEAT_hvm_callback_vector)  # event upcalls on a vector (event_channel.py)
    return sum(1 << b for b in bits)
