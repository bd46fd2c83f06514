"""Building a domain: spawn its VMM, wait for "built", write its xenstore entries,
introduce it to xenstored, add its disks (libxl's domain create, the Firecracker
"builder" part of hostd). A mixin of hostd.Hostd."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pyxen import paths

from . import devices, vbd, xsdomain
from .config import DomainConfig
from .domain import (
    BUILD_TIMEOUT_S,
    DOMID_FIRST_RESERVED,
    Domain,
    OpError,
    VmmControl,
    _last_line,
    _rmtree,
)
from .recovery import CREATING


class Builder:
    """Methods of hostd.Hostd (self is the Hostd)."""

    domains: dict[int, Domain]

    async def create(self, cfg: DomainConfig, paused: bool = False,
                     domid: int | None = None, restore_fd: int | None = None) -> Domain:
        if self.stopping.is_set():
            raise OpError("hostd is stopping: no new domains")
        if restore_fd is None:
            cfg.check_files()
        else:  # a restored domain boots no kernel: only its disks must be there
            from .config import DiskSpecError, check_disk_target
            for disk in cfg.disk_specs():
                try:
                    check_disk_target(disk)
                except DiskSpecError as e:
                    raise OpError(str(e)) from None
        if not os.path.exists("/dev/kvm"):
            raise OpError("/dev/kvm not found: pyxen needs KVM (load kvm_intel or kvm_amd, "
                          "or run on a host with virtualization)")
        for other in self.domains.values():
            if other.config.name == cfg.name:
                raise OpError(f'Domain with name "{cfg.name}" already exists.')
        free = self.free_memory_mib()
        if cfg.memory > free:
            raise OpError(f"failed to free memory for the domain: {cfg.name} needs "
                          f"{cfg.memory} MiB, the host has {free} MiB free")
        from .numa import auto_place
        self.xen_log(auto_place(cfg, [d.config for d in self.domains.values()]))
        if domid is None:
            domid = self._alloc_domid()
        ddir = paths.domain_dir(domid, self.root)
        dom = Domain(domid=domid, config=cfg, dir=ddir, creating=True)
        self.domains[domid] = dom  # reserves the name and the domid from here on
        try:
            await self._build(dom, restore_fd)
            _still_wanted(dom)
            await self._test_hold(dom, "built")
            if restore_fd is not None:  # the VMM reads the image now (vmm/restore.py)
                from .schedops import domain_built
                await domain_built(self, dom)
                await self._restored(dom)
            else:
                await self._place_and_describe(dom)
            _still_wanted(dom)
            if dom.config.disks or dom.config.vifs:
                await introduced(dom)
            await self._test_hold(dom, "described")
            await self._attach_disks(dom)
            from .netops import attach_vifs
            await attach_vifs(self, dom)
            _still_wanted(dom)
            if not paused:
                await introduced(dom)
                await self._vmm(dom, "unpause")
            dom.state = "paused" if paused else "running"
            (dom.dir / CREATING).unlink(missing_ok=True)  # done: a new hostd adopts it from here on
        except BaseException as e:
            self._keep_vmm_log(dom, e)
            await self._teardown(dom)
            self.domains.pop(domid, None)
            self.graveyard_add(domid, "destroyed")
            if isinstance(e, OpError):
                raise
            if isinstance(e, Exception):
                raise OpError(f"domain creation failed: {e}") from e
            raise
        finally:
            dom.creating = False
        self.xen_log(f"Domain {domid} ({cfg.name}) created: {cfg.vcpus} vCPU(s), "
                     f"{cfg.memory} MiB, kernel {cfg.kernel}")
        return dom

    async def _test_hold(self, dom: Domain, stage: str) -> None:
        """Tests only: PYXEN_TEST_HOLD_CREATE=STAGE (spawned, built, described) in
        hostd's environment stops every creation there for an hour, once it has touched
        $RUNDIR/domains/N/held: a test kills hostd mid-create at a known point."""
        if os.environ.get("PYXEN_TEST_HOLD_CREATE") != stage:
            return
        (dom.dir / "held").touch()
        self.xen_log(f"Domain {dom.domid}: creation held at {stage!r} (PYXEN_TEST_HOLD_CREATE)")
        await asyncio.sleep(3600)

    async def _place_and_describe(self, dom: Domain) -> None:
        """Its cgroup, pool and pinning (schedops.domain_built) and its xenstore entries,
        side by side: both only wait on the kernel or xenstored (a create's largest
        parts after the VMM's build, bench/create.py), and the domain is still paused."""
        from .schedops import domain_built
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(domain_built(self, dom),
                                       loop.run_in_executor(None, self._write_xenstore, dom),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    def _keep_vmm_log(self, dom: Domain, err: BaseException) -> None:
        """The domain dir goes (nothing left behind); its vmm.log goes to hostd.log."""
        self.xen_log(f"Domain {dom.domid} ({dom.config.name}) creation failed: {err}")
        with contextlib.suppress(OSError):
            text = (dom.dir / "vmm.log").read_text(errors="replace")
            if text.strip():
                print(f"--- vmm.log of domain {dom.domid} ---\n{text.rstrip()}\n---",
                      flush=True)

    async def _build(self, dom: Domain, restore_fd: int | None = None) -> None:
        ddir = dom.dir
        with contextlib.suppress(FileNotFoundError):
            _rmtree(ddir)
        ddir.mkdir(parents=True)
        (ddir / CREATING).touch()  # a new hostd removes what a dead one half built
        cfg_path = ddir / "config.json"
        cfg_path.write_text(dom.config.dumps() + "\n")
        reader, pipe = await self._start_vmm(dom, cfg_path, restore_fd)
        from .schedops import domain_spawned
        domain_spawned(self, dom)  # its cgroups, while it builds (domain_built waits)
        await self._test_hold(dom, "spawned")
        try:
            line = await asyncio.wait_for(reader.readline(), BUILD_TIMEOUT_S)
        except TimeoutError as e:
            raise OpError(f"domain {dom.domid}: the VMM did not report within "
                          f"{BUILD_TIMEOUT_S:.0f} s (see {ddir / 'vmm.log'})") from e
        finally:
            if pipe is not None:
                pipe.close()
        msg: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            msg = json.loads(line) if line.strip() else {}
        if not isinstance(msg, dict):
            msg = {}
        if msg.get("event") == "error":
            raise OpError(str(msg.get("message") or "the VMM failed to build the domain"))
        if msg.get("event") != "built":
            status = await self._vmm_exit_status(dom)
            tail = _last_line(ddir / "vmm.log")
            raise OpError(f"domain {dom.domid}: the VMM exited while building the domain"
                          + (f": {tail}" if tail else f" ({status})"))
        if msg.get("restoring"):  # resolved by the VMM's restored/restore_failed event
            dom.restore_done = asyncio.get_running_loop().create_future()  # type: ignore[attr-defined]
        dom.store = {k: msg[k] for k in ("store_port", "store_mfn", "console_port",
                                         "console_mfn") if isinstance(msg.get(k), int)}
        reader, writer = await asyncio.open_unix_connection(str(ddir / "control.sock"),
                                                            limit=1 << 24)
        dom.ctl = VmmControl(self, dom, reader, writer)
        dom.state = "paused"

    async def _start_vmm(self, dom: Domain, cfg_path: Path, restore_fd: int | None = None
                         ) -> tuple[asyncio.StreamReader, asyncio.BaseTransport | None]:
        """Fork the VMM from the template (toolstack/template.py), or else start
        `python -m pyxen.vmm`; the reader of its stdout (the "built" line). A restore
        (an image fd to hand over) takes the fresh interpreter: the template's protocol
        passes only the VMM's stdout and log."""
        vmm_log = os.open(dom.dir / "vmm.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            rfd, wfd = os.pipe2(os.O_CLOEXEC)
            try:
                pid = (None if restore_fd is not None else
                       await self.template.spawn(dom.domid, cfg_path, wfd, vmm_log))
            finally:
                os.close(wfd)
            if pid is not None:
                dom.adopted_pid = pid  # not hostd's child: followed by control.sock and pid
                loop = asyncio.get_running_loop()
                reader = asyncio.StreamReader()
                transport, _ = await loop.connect_read_pipe(
                    lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(rfd, "rb", 0))
                return reader, transport
            os.close(rfd)
            env = dict(os.environ, PYXEN_RUNDIR=str(self.root))
            dom.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pyxen.vmm", "--domid", str(dom.domid),
                "--config", str(cfg_path),
                *(() if restore_fd is None else ("--restore-fd", str(restore_fd))),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=vmm_log, env=env, start_new_session=True,
                pass_fds=() if restore_fd is None else (restore_fd,))
        finally:
            os.close(vmm_log)
        asyncio.create_task(self._watch_process(dom))
        assert dom.proc.stdout is not None
        return dom.proc.stdout, None

    async def _vmm_exit_status(self, dom: Domain) -> str:
        if dom.proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dom.proc.wait(), 5)
            return f"status {dom.proc.returncode}"
        if dom.adopted_pid is not None:
            from .recovery import wait_gone
            await wait_gone(dom.adopted_pid, 5)
        return "no status: forked by the template"

    async def _restored(self, dom: Domain) -> None:
        """A restored domain: its xenstore entries while the image streams in, then the
        VMM's `restored` (or `restore_failed`: an OpError, the caller tears down), then
        the introduction (xenstored maps the store ring as the image left it)."""
        fut = dom.restore_done  # type: ignore[attr-defined]
        from . import netops  # noqa: F401 - imported while waiting, not after the image
        if self.xs is not None:
            xsdomain.write_domain(self.xs, dom.domid, dom.config,
                                  store_port=dom.store.get("store_port"),
                                  store_mfn=dom.store.get("store_mfn"),
                                  console_port=dom.store.get("console_port"),
                                  console_mfn=dom.store.get("console_mfn"))
        msg = await fut
        if msg.get("event") != "restored":
            raise OpError(str(msg.get("message") or "the VMM could not restore the image"))
        dom.restored_times = {"image_end_at": msg.get("end_at"),  # type: ignore[attr-defined]
                              "vmm_restored_at": msg.get("at"), "hostd_at": time.time()}
        if self.xs is not None:
            # The introduction (xenstored maps the ring from the VMM: two process hops,
            # 2-8 ms here) goes on beside the rest, for a live migration the reply and
            # xl's handshake; the domain stays paused until it is done: an unpause, a
            # device attach and a teardown wait for it (introduced()).
            dom.introducing = asyncio.get_running_loop().run_in_executor(  # type: ignore[attr-defined]
                None, self._introduce, dom)

    def _write_xenstore(self, dom: Domain) -> None:
        if self.xs is None:
            return
        xsdomain.write_domain(self.xs, dom.domid, dom.config,
                              store_port=dom.store.get("store_port"),
                              store_mfn=dom.store.get("store_mfn"),
                              console_port=dom.store.get("console_port"),
                              console_mfn=dom.store.get("console_mfn"))
        self._introduce(dom)

    async def _attach_disks(self, dom: Domain) -> None:
        """libxl__add_disks: each ``disk =`` entry's device, before the guest runs."""
        if self.xs is None:
            if dom.config.disks:
                raise OpError("xenstored is not running: cannot add the domain's disks")
            return
        loop = asyncio.get_running_loop()
        for disk in dom.config.disk_specs():
            try:
                await loop.run_in_executor(None, vbd.attach, self.xs, dom.domid, disk)
            except devices.DeviceError as e:
                raise OpError(str(e)) from None

    def _introduce(self, dom: Domain) -> None:
        """Tell xenstored the domain exists (as XS_INTRODUCE; fires @introduceDomain).

        The guest's ring (store_mfn/store_port from the VMM's "built" event, when it has
        one) is served by xenstored through its ring mapper."""
        try:
            self.xs_server.introduce_domain(dom.domid, gfn=int(dom.store.get("store_mfn", 0)),
                                            port=int(dom.store.get("store_port", 0)))
        except Exception as e:  # noqa: BLE001 - the domain runs without xenstore then
            self.xen_log(f"d{dom.domid}: xenstore introduce failed: {e}")

    def _alloc_domid(self) -> int:
        for _ in range(DOMID_FIRST_RESERVED):
            domid = self.next_domid
            self.next_domid = domid + 1 if domid + 1 < DOMID_FIRST_RESERVED else 1
            if domid not in self.domains and not (self.root / "domains" / str(domid)).exists():
                return domid
        raise OpError("no free domain id")


async def introduced(dom: Domain) -> None:
    """Wait for a restored domain's xenstore introduction (Builder._restored) if it is
    still going on: before the domain runs or goes away."""
    fut = getattr(dom, "introducing", None)
    if fut is not None and not fut.done():
        with contextlib.suppress(Exception):
            await asyncio.shield(fut)


def _still_wanted(dom: Domain) -> None:
    """`xl destroy` of a domain still being built (e.g. the next incarnation of an
    on_reboot="restart" domain) is carried out by its builder, between two steps: the
    create's own error path tears down whatever exists by then, VMM included."""
    if dom.destroy_requested:
        raise OpError(f"domain {dom.domid} ({dom.config.name}) destroyed while being created")
