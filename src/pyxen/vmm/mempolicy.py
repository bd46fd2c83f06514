"""Guest RAM on the domain's NUMA nodes: mbind(2) on the store's mapping, as Xen allocates
a placed domain's memory from its node affinity. The store is a shared memfd mapping, so
the policy is the shmem object's: every page the guest touches later (populate, balloon
back in) comes from those nodes too."""

from __future__ import annotations

import ctypes
import os

SYS_MBIND = 237  # x86_64
MPOL_BIND = 2
MPOL_MF_MOVE = 1 << 1  # move pages already there


def mbind(addr: int, length: int, nodes: list[int]) -> None:
    """Bind [addr, addr+length) to `nodes` (OSError on refusal, e.g. a node that is not
    online on this host)."""
    if not nodes or min(nodes) < 0:
        raise ValueError("mbind needs node numbers")
    maxnode = max(nodes) + 1
    words = (maxnode + 63) // 64
    mask = (ctypes.c_ulong * words)()
    for n in nodes:
        mask[n // 64] |= 1 << (n % 64)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(SYS_MBIND), ctypes.c_ulong(addr), ctypes.c_ulong(length),
                      ctypes.c_long(MPOL_BIND), mask, ctypes.c_ulong(maxnode + 1),
                      ctypes.c_uint(MPOL_MF_MOVE))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def bind_guest_memory(mem, nodes: list[int]) -> str:
    """Bind the whole store (RAM windows and pool) to `nodes`; returns the log line."""
    size = len(mem.map)
    try:
        mbind(mem.hva, size, nodes)
    except (OSError, ValueError) as e:
        return f"NUMA: cannot bind guest memory to nodes {nodes}: {e}"
    return (f"NUMA: guest memory ({size >> 20} MiB mapping at {mem.hva:#x}) bound to "
            f"node(s) {','.join(map(str, nodes))}")


def bind_vnodes(mem, vnuma) -> str:
    """vnuma=: each vnode's memory ranges on that vnode's pnode (libxl's vNUMA with
    pnode=); the log line."""
    done = []
    for start, end, nid in vnuma.ranges:
        pnode = vnuma.pnodes[nid] if nid < len(vnuma.pnodes) else 0
        for r in mem.regions:
            lo, hi = max(start, r.gpa), min(end, r.gpa + r.size)
            if lo >= hi:
                continue
            try:
                mbind(mem.hva + r.offset + (lo - r.gpa), hi - lo, [pnode])
            except OSError as e:
                return f"NUMA: cannot bind vnode {nid} to node {pnode}: {e}"
            done.append(f"{lo:#x}-{hi:#x}:vnode{nid}->node{pnode}")
    return f"vNUMA: {vnuma.nr_vnodes} vnodes, guest memory bound {' '.join(done)}"
