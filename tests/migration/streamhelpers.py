"""Images for the format tests: a small HVM context blob in Xen's save format, and a
whole image written through pyxen's SaveWriter."""

from __future__ import annotations

import io
import struct
from typing import Any

from pyxen.toolstack.migration import SaveWriter

CONFIG: dict[str, Any] = {
    "c_info": {"type": "pvh", "name": "counter", "uuid": "5f1a3c9e-0d52-4a0e-9d4b-1d5b7c7e9a01"},
    "b_info": {"max_vcpus": 1, "avail_vcpus": [0], "max_memkb": 32768,
               "target_memkb": 32768, "kernel": "/guests/hello.elf", "type.pvh": {}},
    "on_poweroff": "destroy", "on_reboot": "restart", "on_watchdog": "destroy",
    "on_crash": "destroy", "on_soft_reset": "soft_reset",
}


def hvm_blob(extra: int = 5) -> bytes:
    """HEADER (magic, version 1), one LAPIC-sized entry of ``extra`` octets, END: the
    descriptor chain of xen/include/public/hvm/save.h (not a loadable context)."""
    header = struct.pack("<IIQII", 0x54381286, 1, 0, 0x000806EA, 2_000_000)
    body = bytes(range(extra))
    return (struct.pack("<HHI", 1, 0, len(header)) + header
            + struct.pack("<HHI", 5, 0, len(body)) + body
            + struct.pack("<HHI", 0, 0, 0))


def page(pfn: int, salt: int = 0) -> bytes:
    """A 4 KiB page whose contents tell where it came from."""
    return struct.pack("<QQ", pfn, salt) * 256


def image(batches: list[list[int]] | None = None, *, xl_header: bool = True,
          config: dict[str, Any] | None = None, tsc=(0, 2_000_000, 123456789, 1),
          params: dict[int, int] | None = None, blob: bytes | None = None,
          policies: bool = False) -> bytes:
    out = io.BytesIO()
    w = SaveWriter(out, CONFIG if config is None else config, xl_header=xl_header)
    w.begin()
    if policies:
        w.cpuid_policy([(0, 0xFFFFFFFF, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69),
                        (7, 0, 0, 0x209, 0, 0)])
        w.msr_policy([(0xCE, 0, 0x80000000)])
    for i, pfns in enumerate(batches if batches is not None else [[0, 1, 2], [1, 7]]):
        w.page_data(pfns, b"".join(page(p, i) for p in pfns))
    w.tsc_info(*tsc)
    w.hvm_context(hvm_blob() if blob is None else blob)
    w.hvm_params({2: 0xFEFFF, 1: 0xFEFFE} if params is None else params)
    w.finish()
    data = out.getvalue()
    assert w.bytes_written == len(data)
    return data
