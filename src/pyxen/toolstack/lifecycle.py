"""A domain's life after creation: pause, PV control (shutdown/reboot), wait, destroy and
teardown, VMM events, and the on_poweroff/on_reboot/on_crash policy. A mixin of
hostd.Hostd."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid as uuidlib
from typing import Any

from . import devices, xsdomain
from .config import ConfigError, DomainConfig
from .domain import (
    DESTROY_TIMEOUT_S,
    GRAVEYARD,
    REASON_LETTERS,
    Domain,
    OpError,
    _rmtree,
    pvcontrol_ack_timeout,
)


class Lifecycle:
    """Methods of hostd.Hostd (self is the Hostd)."""

    domains: dict[int, Domain]

    async def _vmm(self, dom: Domain, op: str, **args: Any) -> dict[str, Any]:
        if dom.ctl is None:
            raise OpError(f"domain {dom.domid} has no running VMM")
        reply = await dom.ctl.request(op, **args)
        if not reply.get("ok"):
            raise OpError(str(reply.get("error") or f"{op} failed"))
        return reply

    async def pause(self, dom: Domain, pause: bool) -> None:
        if dom.state in ("shutdown", "crashed", "dying"):
            raise OpError(f"domain {dom.domid} ({dom.config.name}) has shut down: "
                          f"{'pause' if pause else 'unpause'} does not apply")
        if not pause:
            from .builder import introduced
            await introduced(dom)
        await self._vmm(dom, "pause" if pause else "unpause")
        dom.state = "paused" if pause else "running"

    async def shutdown(self, dom: Domain, reason: str, force: bool) -> dict[str, Any]:
        """libxl_domain_shutdown / libxl_domain_reboot (Xen 4.17 libxl_domain.c): if the
        guest has PV control, write control/shutdown = reason and wait (up to 60 s) for
        the guest to acknowledge it by clearing the node; else ERROR_NOPARAVIRT, which xl
        reports with its message (-F: xl's ACPI button fallback, see below).
        libxl__domain_pvcontrol_available asks only HVM guests (HVM_PARAM_CALLBACK_IRQ):
        PV and PVH guests always have PV control, so a PVH guest without PV drivers gets
        the request written and the acknowledgement times out, as on Xen."""
        if dom.state in ("shutdown", "crashed", "dying"):
            return {"already": True}
        info = await self._vmm(dom, "info")
        if dom.config.type == "hvm" and not info.get("pv_control"):
            acpi = "power" if reason == "poweroff" else "reset"
            if not force:
                what = "shutdown" if reason == "poweroff" else "reboot"
                raise OpError(f"PV control interface not available: external graceful {what} "
                              f'not possible. Use "-F" to fallback to ACPI {acpi} event.')
            # xl -F sends an ACPI button event (XEN_DOMCTL_SENDTRIGGER_*); for a PVH guest
            # Xen accepts it and does nothing (no emulated ACPI PM block: has_vpm() is false).
            self.xen_log(f"Domain {dom.domid} ({dom.config.name}): -F {reason} refused: "
                         "no PV control and no ACPI")
            raise OpError(f"PV control interface not available, and -F cannot help: a PVH "
                          f"guest has no ACPI {acpi} button to press (use \"xl destroy\" "
                          "to stop it)")
        if self.xs is None:
            raise OpError("xenstored is not running: cannot write control/shutdown")
        path = f"{xsdomain.dom_path(dom.domid)}/control/shutdown"
        self.xen_log(f"Domain {dom.domid} ({dom.config.name}): {reason} requested "
                     "(control/shutdown)")
        try:
            self.xs.write(path, reason)
        except Exception as e:  # noqa: BLE001 - xenstored's error, as libxl returns it
            raise OpError(f"cannot write {path}: {e}") from e
        timeout = pvcontrol_ack_timeout()
        if not await self._pvcontrol_acked(dom, path, timeout):
            raise OpError(f"guest didn't acknowledge control request ({reason}) within "
                          f"{timeout:g} s")
        return {}

    async def _pvcontrol_acked(self, dom: Domain, path: str, timeout: float) -> bool:
        """libxl's pvcontrol_cb: done once the node reads "" or is gone (the guest took
        the request), or the domain has already shut down or gone."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        self._ack_seq += 1
        token = f"pyxen-pvcontrol-{dom.domid}-{self._ack_seq}"

        def fired(_path: str, _token: str) -> None:
            loop.call_soon_threadsafe(changed.set)

        watching = False
        with contextlib.suppress(Exception):
            self.xs.watch(path, token, fired)
            watching = True
        deadline = loop.time() + timeout
        try:
            while True:
                changed.clear()
                if dom.handled_shutdown or dom.destroying or dom.domid not in self.domains:
                    return True
                try:
                    if self.xs.read(path) == b"":
                        return True
                except Exception:  # noqa: BLE001 - ENOENT: removed, as acknowledged
                    return True
                left = deadline - loop.time()
                if left <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    # the watch wakes us; the bound only covers a shutdown without a write
                    await asyncio.wait_for(changed.wait(), min(left, 0.5))
        finally:
            if watching:
                with contextlib.suppress(Exception):
                    self.xs.unwatch(path, token)

    async def wait(self, domid: int) -> str:
        """Until the domain has shut down (preserved) or is gone; returns the reason."""
        dom = self.domains.get(domid)
        if dom is None:
            return self.graveyard.get(domid, "gone")
        if dom.handled_shutdown and not dom.destroying and dom.shutdown_reason:
            return dom.shutdown_reason
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        dom.waiters.append(fut)
        return await fut

    def _wake(self, dom: Domain, reason: str) -> None:
        for fut in dom.waiters:
            if not fut.done():
                fut.set_result(reason)
        dom.waiters.clear()

    def graveyard_add(self, domid: int, reason: str) -> None:
        self.graveyard[domid] = reason
        while len(self.graveyard) > GRAVEYARD:
            self.graveyard.popitem(last=False)

    async def destroy(self, dom: Domain, reason: str) -> None:
        if dom.destroying:
            while dom.domid in self.domains:
                await asyncio.sleep(0.02)
            return
        dom.destroying = True
        dom.state = "dying"
        await self._teardown(dom)
        self.domains.pop(dom.domid, None)
        self.graveyard_add(dom.domid, dom.shutdown_reason or reason)
        self.xen_log(f"Domain {dom.domid} ({dom.config.name}) destroyed")
        self._wake(dom, dom.shutdown_reason or reason)

    async def _teardown(self, dom: Domain) -> None:
        """Stop the VMM, then remove xenstore entries, release, remove the domain dir."""
        dom.destroying = True
        from .builder import introduced
        await introduced(dom)  # a restored domain's introduction finishes first
        if dom.ctl is not None:
            with contextlib.suppress(Exception):
                await dom.ctl.request("destroy", timeout=DESTROY_TIMEOUT_S)
        proc = dom.proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), DESTROY_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wait(), DESTROY_TIMEOUT_S)
        if proc is None and dom.adopted_pid is not None:  # not our child: poll it
            from .recovery import wait_gone
            await wait_gone(dom.adopted_pid, DESTROY_TIMEOUT_S)
        if dom.ctl is not None:
            dom.ctl.close()
        if dom.pid is not None:  # anything the VMM left in its session goes too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(dom.pid, signal.SIGKILL)
        if self.xs is not None:
            with contextlib.suppress(Exception):  # libxl__devices_destroy (forced)
                await asyncio.get_running_loop().run_in_executor(
                    None, devices.destroy_all, self.xs, dom.domid)
            with contextlib.suppress(Exception):
                xsdomain.remove_domain(self.xs, dom.domid, dom.config.uuid)
            self._release(dom)
        from .schedops import domain_gone
        domain_gone(self, dom)
        _rmtree(dom.dir)

    def _release(self, dom: Domain) -> None:
        """Fires @releaseDomain, as Xen's xenstored does when a domain dies."""
        with contextlib.suppress(Exception):
            if self.xs_server.is_domain_introduced(dom.domid):
                self.xs_server.release_domain(dom.domid)

    def _fire_release_watch(self, dom: Domain) -> None:
        """The domain has shut down: @releaseDomain fires (C xenstored on VIRQ_DOM_EXC),
        and once more when it is destroyed and released."""
        with contextlib.suppress(Exception):
            self.xs_server.fire_release_domain_watch(dom.domid)

    def vmm_event(self, dom: Domain, msg: dict[str, Any]) -> None:
        ev = msg.get("event")
        if ev == "log":
            line = str(msg.get("line", "")).rstrip("\n")
            if line:
                self.log.append(line)
        elif ev == "migrate_suspend":  # end of pre-copy: toolstack/migrate.py
            from .migrate import suspend_requested
            suspend_requested(self, dom)  # type: ignore[arg-type]
        elif ev in ("restored", "restore_failed"):  # restore mode: builder._restored
            fut = getattr(dom, "restore_done", None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif ev == "shutdown":
            reason = msg.get("reason")
            if reason not in REASON_LETTERS:
                reason = "crash"
            code = msg.get("code")
            asyncio.create_task(self.domain_shutdown(dom, reason, code))

    def vmm_gone(self, dom: Domain, why: str) -> None:
        """The VMM went away without being asked to: Xen would call that a crash."""
        fut = getattr(dom, "restore_done", None)
        if fut is not None and not fut.done():  # died while reading an image
            fut.set_result({"event": "restore_failed",
                            "message": f"the VMM exited while restoring ({why})"})
        if dom.destroying or dom.state == "building" or dom.domid not in self.domains:
            return
        if dom.handled_shutdown and dom.state in ("shutdown", "crashed"):
            dom.state = "crashed" if dom.shutdown_reason == "crash" else "shutdown"
            return
        self.xen_log(f"Domain {dom.domid} ({dom.config.name}): VMM exited unexpectedly "
                     f"({why}): treating it as a crash")
        asyncio.create_task(self.domain_shutdown(dom, "crash", None))

    async def _watch_process(self, dom: Domain) -> None:
        proc = dom.proc
        if proc is None:
            return
        rc = await proc.wait()
        if dom.state != "building":
            self.vmm_gone(dom, f"exit status {rc}")

    async def domain_shutdown(self, dom: Domain, reason: str, code: Any) -> None:
        if dom.handled_shutdown or dom.destroying:
            return
        dom.handled_shutdown = True
        dom.shutdown_reason, dom.shutdown_code = reason, code
        dom.state = "crashed" if reason == "crash" else "shutdown"
        self._fire_release_watch(dom)
        cfg = dom.config
        action = {"poweroff": cfg.on_poweroff, "reboot": cfg.on_reboot,
                  "crash": cfg.on_crash, "watchdog": cfg.on_watchdog}.get(reason, "preserve")
        self.xen_log(f"Domain {dom.domid} ({cfg.name}) shut down, reason {reason}"
                     + (f" code {code}" if code is not None else "") + f": action {action}")
        try:
            if action == "destroy":
                await self.destroy(dom, reason)
            elif action == "restart":
                await self.destroy(dom, reason)
                await self._recreate(dom, cfg)
            elif action == "rename-restart":
                self._preserve_renamed(dom)
                self._wake(dom, reason)
                await self._recreate(dom, cfg)
            else:  # preserve (and suspend): stays, as the list shows, until xl destroy
                self._wake(dom, reason)
        except Exception as e:  # noqa: BLE001
            self.xen_log(f"Domain {dom.domid} ({cfg.name}): {action} failed: {e}")

    async def _recreate(self, dom: Domain, cfg: DomainConfig) -> None:
        if dom.destroy_requested or self.stopping.is_set():
            return
        try:
            dom = await self.create(cfg)
            self.xen_log(f"Domain {cfg.name} restarted as domain {dom.domid}")
        except (OpError, ConfigError) as e:
            self.xen_log(f"Domain {cfg.name}: restart failed: {e}")

    def _preserve_renamed(self, dom: Domain) -> None:
        """xl's preserve_domain(): rename to NAME-YYYYmmddTHHMMZ with a new uuid."""
        old = dom.config
        suffix = time.strftime("-%Y%m%dT%H%MZ", time.gmtime())
        name = old.name + suffix
        taken = {d.config.name for d in self.domains.values()}
        if name in taken:
            name = f"{name}-{dom.domid}"
        new_uuid = str(uuidlib.uuid4())
        if self.xs is not None:
            with contextlib.suppress(Exception):
                xsdomain.rename_domain(self.xs, dom.domid, old.uuid, new_uuid, name)
        dom.config = DomainConfig(**{**old.to_json(), "name": name, "uuid": new_uuid,
                                     "on_poweroff": "preserve", "on_reboot": "preserve",
                                     "on_crash": "preserve", "on_watchdog": "preserve"})
        self.xen_log(f"Preserving domain {dom.domid} {old.name} with suffix{suffix}")
