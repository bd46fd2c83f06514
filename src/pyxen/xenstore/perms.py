"""Xen's node permission model.

A node's ACL is a list of (domid, perm) entries written 'n0', 'r1', 'w2', 'b3'. The
first entry names the owner, and its letter is the default for every domain not listed
later. The owner, privileged connections, and a stub domain acting for its target
(SET_TARGET) get everything.

An entry may carry IGNORE (Xen's XS_PERM_IGNORE): it names a domain that has been
released since the entry was written, so it grants nothing, not even to a later domain
given the same domid (XSA-322). GET_PERMS still lists it, as Xen's
xenstore_perm_to_string() masks the flag; the persisted tree keeps the flag ("!r5").
"""

from __future__ import annotations

from dataclasses import dataclass

from .wire import XenstoreError

READ = 1
WRITE = 2
OWNER = 4
ALL = READ | WRITE | OWNER
IGNORE = 0x10  # XS_PERM_IGNORE: the entry names a released domain and grants nothing

_LETTER_BITS = {"n": 0, "r": READ, "w": WRITE, "b": READ | WRITE}
_BITS_LETTER = {v: k for k, v in _LETTER_BITS.items()}

Perms = tuple[tuple[int, int], ...]  # ((domid, bits), ...), first = owner/default

DOM0_DEFAULT: Perms = ((0, 0),)  # 'n0'
DOMID_MAX = 0x7FF0  # DOMID_FIRST_RESERVED


def parse_perm(text: str) -> tuple[int, int]:
    """'b3' -> (3, READ|WRITE); EINVAL for anything Xen would reject."""
    if len(text) < 2 or text[0] not in _LETTER_BITS or not text[1:].isdigit():
        raise XenstoreError("EINVAL", f"bad permission {text!r}")
    domid = int(text[1:])
    if domid > 0xFFFF:
        raise XenstoreError("EINVAL", f"bad domid in {text!r}")
    return domid, _LETTER_BITS[text[0]]


def parse_perms(items: list[str]) -> Perms:
    if not items:
        raise XenstoreError("EINVAL", "empty permission list")
    return tuple(parse_perm(t) for t in items)


def format_perms(perms: Perms) -> list[str]:
    """The wire form (GET_PERMS): ignored entries keep their letter, as in Xen."""
    return [f"{_BITS_LETTER[bits & (READ | WRITE)]}{domid}" for domid, bits in perms]


def dump_perms(perms: Perms) -> list[str]:
    """The persisted form: the wire form, with '!' before entries marked IGNORE."""
    return [("!" if bits & IGNORE else "") + f"{_BITS_LETTER[bits & (READ | WRITE)]}{domid}"
            for domid, bits in perms]


def load_perms(items: list[str]) -> Perms:
    """Inverse of dump_perms (also reads plain wire-form lists)."""
    out = []
    for t in items:
        ignored = t.startswith("!")
        domid, bits = parse_perm(t[1:] if ignored else t)
        out.append((domid, bits | IGNORE if ignored else bits))
    if not out:
        raise XenstoreError("EINVAL", "empty permission list")
    return tuple(out)


def ignore_domain(perms: Perms, domid: int) -> Perms:
    """Mark every non-owner entry naming `domid` IGNORE (Xen's domain_adjust_node_perms
    for a domain that no longer exists); returns `perms` itself when nothing changes."""
    if not any(d == domid and not b & IGNORE for d, b in perms[1:]):
        return perms
    return perms[:1] + tuple((d, b | IGNORE if d == domid else b) for d, b in perms[1:])


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the identity a connection carries into every permission check."""

    domid: int
    privileged: bool
    target: int | None = None  # SET_TARGET: the domain this stub domain acts for

    def perm_for(self, perms: Perms) -> int:
        """The rights this caller has on a node with these perms (Xen's perm_for_conn)."""
        if self.privileged:
            return ALL
        owner = perms[0][0]
        if owner == self.domid or (self.target is not None and owner == self.target):
            return ALL
        for domid, bits in perms[1:]:
            if bits & IGNORE:
                continue  # names a released domain: grants nothing (XSA-322)
            if domid == self.domid or (self.target is not None and domid == self.target):
                return bits
        return perms[0][1]


DOM0 = Caller(0, True)
