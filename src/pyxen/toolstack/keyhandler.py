"""`xl debug-keys KEYS` in hostd: Xen's XEN_SYSCTL_debug_keys, which runs
handle_keypress() for each key in turn (common/keyhandler.c). Output goes to the
hypervisor log (`xl dmesg`) as `(XEN) ` lines in Xen's wording.

hostd prints each handler's header and asks every domain's VMM (control op `debug_key`)
for that domain's part, in domid order. Domain-0 is pyxen's host and has no hypervisor
state to dump, so it is not listed. As in Xen, a key with no handler does nothing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..hypervisor.keyhandler import KEYS

if TYPE_CHECKING:
    from .hostd import Domain, Hostd

DEBUG_KEY_TIMEOUT_S = 10.0


async def debug_keys(hostd: Hostd, keys: Any) -> dict[str, Any]:
    from .hostd import OpError

    if not isinstance(keys, str) or not keys:
        raise OpError("debug_keys: 'keys' must be a non-empty string")
    for key in keys:
        await _press(hostd, key)
    return {}


async def _press(hostd: Hostd, key: str) -> None:
    if key not in KEYS:
        return  # handle_keypress(): no handler, nothing happens
    if key == "h":
        hostd.xen_log(f"'{key}' pressed -> showing installed handlers")
        for k in sorted(KEYS):
            hostd.xen_log(f" key '{k if k.isprintable() else ' '}' (ascii '{ord(k):02x}') "
                          f"=> {KEYS[k][0]}")
    elif key == "*":
        hostd.xen_log(f"'{key}' pressed -> firing all diagnostic keyhandlers")
        for k in sorted(KEYS):
            if KEYS[k][1]:
                hostd.xen_log(f"[{k}: {KEYS[k][0]}]")
                await _press(hostd, k)
    elif key == "q":
        now = int((time.time() - hostd.boot_time) * 1e9)  # Xen's NOW(): ns since boot
        hostd.xen_log(f"'{key}' pressed -> dumping domain info (now = {now})")
        notify: list[str] = []
        for dom in _domains(hostd):
            reply = await _ask(hostd, dom, key)
            for line in reply.get("lines", []):
                hostd.xen_log(str(line))
            notify += [str(x) for x in reply.get("notify", [])]
        for line in notify:
            hostd.xen_log(line)
    elif key == "e":
        hostd.xen_log(f"'{key}' pressed -> dumping event-channel info")
        for dom in _domains(hostd):
            for line in (await _ask(hostd, dom, key)).get("lines", []):
                hostd.xen_log(str(line))


def _domains(hostd: Hostd) -> list[Domain]:
    return [d for _, d in sorted(hostd.domains.items())
            if d.ctl is not None and not d.destroying and d.state != "building"]


async def _ask(hostd: Hostd, dom: Domain, key: str) -> dict[str, Any]:
    """The VMM's part; a VMM that cannot answer gets one line and is skipped."""
    from .hostd import OpError

    try:
        assert dom.ctl is not None
        reply = await dom.ctl.request("debug_key", timeout=DEBUG_KEY_TIMEOUT_S, key=key)
    except (OpError, ConnectionError, AssertionError) as e:
        hostd.xen_log(f"d{dom.domid}: no answer to debug key '{key}': {e}")
        return {}
    if not reply.get("ok"):
        hostd.xen_log(f"d{dom.domid}: debug key '{key}': {reply.get('error')}")
        return {}
    return reply
