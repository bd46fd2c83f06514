"""Start-up of the domain process: check the host, build the domain paused, announce it on
stdout with exactly one JSON line, then serve control.sock and console.sock."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import uuid as uuidlib

from .. import paths
from ..arch.x86 import acpi
from ..arch.x86.kvm import HostError, Kvm
from ..arch.x86.machine import X86Machine, install_kick_handler
from ..arch.x86.pvh import BuildError, build_pvh
from ..backends.pvdevices import PvDevices
from ..hypervisor.console import Console
from ..hypervisor.domain import Domain
from ..hypervisor.memory import GuestMemory
from .config import ConfigError, VmmConfig, load_config
from .events import init_event_services
from .server import VmmServer


def host_memory_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1 << 30


def build(domid: int, cfg: VmmConfig, log: list[dict],
          restore: bool = False) -> tuple[Domain, X86Machine]:
    kvm = Kvm()
    host = host_memory_mib()
    for key, mib in (("memory", cfg.memory_mib), ("maxmem", cfg.maxmem_mib)):
        if mib > host:
            raise BuildError(f"{key} = {mib} MiB is more than this host's {host} MiB of RAM: "
                             f"lower '{key}' in the domain config")
    mem = GuestMemory(cfg.memory_mib << 20, name=f"pyxen-d{domid}-ram",
                      max_size=cfg.maxmem_mib << 20)
    policy_log = None
    if cfg.vnuma is not None:
        from .mempolicy import bind_vnodes
        policy_log = bind_vnodes(mem, cfg.vnuma)
    elif cfg.numa_nodes:
        from .mempolicy import bind_guest_memory
        policy_log = bind_guest_memory(mem, list(cfg.numa_nodes))
    mem.add_firmware(acpi.ACPI_INFO_PHYSICAL_ADDRESS,
                     acpi.region_size(cfg.max_vcpus, cfg.vnuma), acpi.E820_ACPI)
    uid = uuidlib.UUID(cfg.uuid) if cfg.uuid else uuidlib.uuid4()
    d = Domain(domid=domid, name=cfg.name, memory=mem, max_vcpus=cfg.max_vcpus,
               max_memory=cfg.maxmem_mib << 20, uuid=uid, emit=log.append)
    d.vnuma = cfg.vnuma
    d.console = Console()
    machine = X86Machine(d, kvm)
    init_event_services(d, machine.vm.fd)
    if restore:  # no kernel: memory and vCPUs come from the image (vmm/domain_save.py)
        d.log(f"d{domid}: PVH domain '{cfg.name}' being restored: {cfg.memory_mib} MiB, "
              f"{cfg.max_vcpus} vCPU(s)")
        machine.boot(0, 0)
        return d, machine
    boot = build_pvh(mem, cfg.kernel, cfg.ramdisk, cfg.cmdline, cfg.vcpus, cfg.max_vcpus,
                     vnuma=cfg.vnuma)
    d.log(f"d{domid}: PVH domain '{cfg.name}': {cfg.memory_mib} MiB, "
          f"{cfg.max_vcpus} vCPU(s), kernel {cfg.kernel}")
    for line in boot.log:
        d.log(line)
    if policy_log:
        d.log(f"d{domid}: {policy_log}")
    machine.boot(boot.entry, boot.start_info)
    return d, machine


def start_device_backends(d: Domain) -> object | None:
    """blkback, netback, ...: the xenbus backend bus of this domain (docs/devices.md)."""
    from ..backends.kinds import device_kinds
    from ..backends.xenbus_backend import start_backends
    from .events import dom0_channels

    return start_backends(d, dom0_channels(d), str(paths.xenstored_socket()), device_kinds())


def announce(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()
    try:
        sys.stdout.close()
    finally:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyxen.vmm",
                                 description="pyxen domain process (one per domain)")
    ap.add_argument("--domid", type=int, required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--restore-fd", type=int, default=None,
                    help="build from a save image read from this fd (libxl stream on)")
    args = ap.parse_args(argv)
    return run(args.domid, args.config, args.restore_fd)


def run(domid: int, config: str, restore_fd: int | None = None) -> int:
    """The VMM from its parsed command line. The template's children come here directly
    (vmm/template.py): argparse's first run in a forked VMM would copy ~0.4 MiB of the
    template's pages (its code and gettext's), per domain."""
    ddir = paths.domain_dir(domid)
    install_kick_handler()
    backlog: list[dict] = []
    try:
        cfg = load_config(config)
        domain, machine = build(domid, cfg, backlog, restore_fd is not None)
        server = VmmServer(domain, machine, ddir, backlog)
        server.bind()
        try:  # PV console ring + xenstore page (Xen's special pages), served from here
            pv = PvDevices(domain, machine, ddir, paths.rundir())
        except BaseException:
            server.cleanup()
            raise
        server.backends.append(pv)  # closed at destruction with the other backends
        # The backend bus first: when the image comes from a live migration, everything
        # done after its last record is guest downtime (docs/migration.md).
        bus = start_device_backends(domain)
        if bus is not None:
            server.backends.append(bus)
    except (ConfigError, BuildError, HostError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"pyxen-vmm d{domid}: error: {msg}", file=sys.stderr)
        announce({"event": "error", "message": msg})
        return 2
    except Exception as e:  # still one actionable line, never a traceback on stdout
        import traceback

        traceback.print_exc()
        msg = f"internal error while building the domain: {type(e).__name__}: {e}"
        announce({"event": "error", "message": msg.splitlines()[0]})
        return 2
    if restore_fd is not None:  # the image streams in while hostd sets up (restore.py)
        from .restore import restore_in_background
        announce({"event": "built", "restoring": True, **pv.announce()})
        restore_in_background(domain, machine, restore_fd)
        return server.serve()
    announce({"event": "built", **pv.announce()})
    trim_heap()
    return server.serve()


def trim_heap() -> None:
    """Give the host back the heap the build used and freed (the kernel file, its copies):
    an idle domain's VMM then holds only what it keeps (bench/create.py)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
