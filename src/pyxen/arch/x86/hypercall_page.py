"""The hypercall page pyxen writes into a guest (format: docs/hypercalls.md).

One 32-byte stub per hypercall number:

    b8 NN NN NN NN    mov  $nr, %eax
    e7 PP             out  %eax, $HYPERCALL_PORT
    c3                ret
    cc ...            int3 padding

The `out` exits to the VMM, which reads the number from the I/O data and the arguments
from the registers, runs the handler and puts the result in %rax before resuming. The same
bytes decode identically in 32- and 64-bit mode. Stub 23 (__HYPERVISOR_iret, PV only) is
`ud2`, as in Xen's HVM hypercall page.
"""

from __future__ import annotations

HYPERCALL_PORT = 0x9E
STUB_SIZE = 32
PAGE_SIZE = 4096
NR_STUBS = PAGE_SIZE // STUB_SIZE
IRET = 23


def stub(nr: int, port: int = HYPERCALL_PORT) -> bytes:
    if nr == IRET:
        code = b"\x0f\x0b"
    else:
        code = b"\xb8" + nr.to_bytes(4, "little") + bytes([0xE7, port]) + b"\xc3"
    return code + b"\xcc" * (STUB_SIZE - len(code))


def hypercall_page(port: int = HYPERCALL_PORT) -> bytes:
    return b"".join(stub(nr, port) for nr in range(NR_STUBS))
