"""``xl``: Xen's command-line toolstack, as a client of pyxen's hostd.

Commands, options, output formats and error wording follow xl(1) and tools/xl/*.c so
scripts written for Xen keep working. Every error is one line on stderr and a non-zero
exit status; hostd is started on first use.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from pyxen.cli.xlconsole import console_session
from pyxen.cli.xlcore import G, XlError, call, connect, fail, one_line
from pyxen.toolstack.client import HostdClient, HostdError

__all__ = ["G", "XlError", "call", "connect", "console_session", "fail", "one_line"]


def wait_for_domain(c: HostdClient, domid: int) -> str:
    """`wait` for one domain; if hostd goes away meanwhile (killed, restarted), ask the
    next one, which adopts the domain and finishes the job (toolstack/recovery.py)."""
    for _ in range(5):
        try:
            return str(c.request("wait", domid=domid).get("reason"))
        except HostdError as e:
            if "closed the connection" not in str(e):
                fail(str(e))
        except OSError:
            pass
        c.close()
        c = connect()
    fail("hostd kept going away while waiting for the domain")


class XlGroup(click.Group):
    """Keep commands in xl's help order."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(cls=XlGroup, context_settings=CONTEXT)
def cli() -> None:
    """Xen management tool (pyxen: the Xen hypervisor on Linux KVM)."""


# ------------------------------------------------------------------------- create

@cli.command(context_settings={**CONTEXT, "ignore_unknown_options": False})
@click.option("-c", "console", is_flag=True, help="Connect to the console after creation.")
@click.option("-n", "dryrun", is_flag=True, help="Dry run: print the configuration as JSON.")
@click.option("-p", "paused", is_flag=True, help="Leave the domain paused after creation.")
@click.option("-q", "quiet", is_flag=True, help="Quiet.")
@click.option("-f", "cfgfile", metavar="FILE", help="Use the given configuration file.")
@click.argument("args", nargs=-1)
def create(console: bool, dryrun: bool, paused: bool, quiet: bool, cfgfile: str | None,
           args: tuple[str, ...]) -> None:
    """Create a domain from config file <filename>; key=value pairs override it."""
    from pyxen.cli.xl_create import create as create_domain  # shared with xl's lean path
    rc = create_domain(console, dryrun, paused, quiet, cfgfile, args)
    if rc:
        sys.exit(rc)


# ------------------------------------------------------------------------- list

LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"


@cli.command("list", context_settings=CONTEXT)
@click.option("-l", "--long", "long_", is_flag=True, help="Output all configuration as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Also show UUID and shutdown reason.")
@click.option("-Z", "--context", is_flag=True, help="Also show the security label.")
@click.option("-c", "--cpupool", is_flag=True, help="Also show the cpupool.")
@click.option("-n", "--numa", is_flag=True, help="Also show the NODE affinity.")
@click.argument("domains", nargs=-1)
def list_(long_: bool, verbose: bool, context: bool, cpupool: bool, numa: bool,
          domains: tuple[str, ...]) -> None:
    """List information about all/some domains."""
    doms = call("list", domains=list(domains))["domains"]
    if long_:
        from pyxen.cli import xlconf
        xlconf.check_output_format()
        from pyxen.toolstack.libxl_json import config_json
        out = [{"domid": d["domid"], "config": config_json(d["config"])}
               for d in doms if d["config"]]
        click.echo(json.dumps(out, indent=4))
        return
    header = LIST_HEADER + ("   UUID                            Reason-Code\tSecurity Label"
                            if verbose else "   Security Label" if context else "")
    extra, tails = _xl_dom.list_columns(doms, cpupool, numa)  # -c, -n: cli/xl_dom.py
    lines = [header + extra]
    for d, tail in zip(doms, tails, strict=True):
        line = (f"{d['name']:<40} {d['domid']:>5} {d['memory']:>5} {d['vcpus']:>5}     "
                f"{d['state']}  {d['cpu_time']:>8.1f}")
        if verbose:
            code = REASON_CODES.get(d.get("shutdown_reason") or "")
            line += f" {d['uuid']} " + (f"{code:>8x}" if code is not None else f"{'-':>8}")
        if verbose or context:  # no XSM label (Xen without FLASK prints "-")
            line += f" {'-':>16}"
        lines.append(line + tail)
    click.echo("\n".join(lines))


REASON_CODES = {"poweroff": 0, "reboot": 1, "suspend": 2, "crash": 3, "watchdog": 4,
                "soft_reset": 5}


# ------------------------------------------------------------------------- lifecycle

@cli.command(context_settings=CONTEXT)
@click.option("-f", "force", is_flag=True, help="Permit destroying domain 0.")
@click.argument("domain")
def destroy(force: bool, domain: str) -> None:
    """Terminate a domain immediately."""
    if domain in ("0", "Domain-0"):  # xl_vmcontrol.c main_destroy
        if not force:
            fail("Not destroying domain 0; use -f to force. This can only be done when "
                 "using a disaggregated hardware domain and toolstack.")
        fail("destroy failed (rc=-3): pyxen's domain 0 is the host itself")
    call("destroy", domain=domain)


@cli.command(context_settings=CONTEXT)
@click.argument("domain")
def pause(domain: str) -> None:
    """Pause execution of a domain."""
    call("pause", domain=domain)


@cli.command(context_settings=CONTEXT)
@click.argument("domain")
def unpause(domain: str) -> None:
    """Unpause a paused domain."""
    call("unpause", domain=domain)


def _shutdown(reason: str, domains: tuple[str, ...], all_: bool, wait: bool,
              force: bool) -> None:
    verb = "Shutting down" if reason == "poweroff" else "Rebooting"
    if all_:
        if domains:
            fail(f"xl {'shutdown' if reason == 'poweroff' else 'reboot'}: "
                 "-a does not take a domain")
        targets = [str(d["domid"]) for d in call("list")["domains"] if d["domid"] != 0]
    else:
        if len(domains) != 1:
            fail(f"xl {'shutdown' if reason == 'poweroff' else 'reboot'}: "
                 "exactly one domain expected")
        targets = list(domains)
    domids = []
    with connect() as c:
        for t in targets:
            try:
                domid = int(c.request("console", domain=t)["domid"])
                click.echo(f"{verb} domain {domid}", err=True)
                c.request("shutdown", domain=t, reason=reason, force=force)
            except HostdError as e:
                fail(str(e))
            domids.append(domid)
        if wait and domids:  # xl's wait_for_domain_deaths(): shut down, or destroyed
            click.echo(f"Waiting for {len(domids)} domains", err=True)
            for domid in domids:
                got = wait_for_domain(c, domid)
                if got in REASON_CODES:
                    click.echo(f"Domain {domid} has been shut down, reason code "
                               f"{REASON_CODES[got]}", err=True)
                else:
                    click.echo(f"Domain {domid} has been destroyed", err=True)


@cli.command(context_settings=CONTEXT)
@click.option("-a", "--all", "all_", is_flag=True, help="Shutdown all guest domains.")
@click.option("-w", "--wait", is_flag=True, help="Wait for guest(s) to complete shutdown.")
@click.option("-F", "force", is_flag=True,
              help="Without PV control, fall back to an ACPI power button event.")
@click.argument("domains", nargs=-1)
def shutdown(all_: bool, wait: bool, force: bool, domains: tuple[str, ...]) -> None:
    """Issue a shutdown signal to a domain."""
    _shutdown("poweroff", domains, all_, wait, force)


@cli.command(context_settings=CONTEXT)
@click.option("-a", "--all", "all_", is_flag=True, help="Reboot all guest domains.")
@click.option("-w", "--wait", is_flag=True, help="Wait for guest(s) to complete the reboot.")
@click.option("-F", "force", is_flag=True,
              help="Without PV control, fall back to an ACPI reset button event.")
@click.argument("domains", nargs=-1)
def reboot(all_: bool, wait: bool, force: bool, domains: tuple[str, ...]) -> None:
    """Issue a reboot signal to a domain."""
    _shutdown("reboot", domains, all_, wait, force)


# ------------------------------------------------------------------------- console

@cli.command(context_settings=CONTEXT)
@click.option("-t", "ctype", type=click.Choice(["pv", "serial"]), default=None,
              help="Console type (pyxen has one console per domain).")
@click.option("-n", "num", type=int, default=0, help="Console number (only 0).")
@click.argument("domain")
def console(ctype: str | None, num: int, domain: str) -> None:
    """Attach to domain's console (Ctrl-] detaches)."""
    reply = call("console", domain=domain)
    if ctype == "serial" or num != 0:  # a PVH domain has PV console 0 only (no emulated UART)
        fail(f"Unable to attach console: domain {reply['domid']} has no "
             f"{ctype or 'pv'} console {num}")
    sys.exit(console_session(int(reply["domid"]), Path(reply["path"])))


# ------------------------------------------------------------------------- info, dmesg

@cli.command(context_settings=CONTEXT)
@click.option("-n", "--numa", is_flag=True, help="Numa topology information.")
@click.argument("name", required=False)
def info(numa: bool, name: str | None) -> None:
    """Get information about Xen host."""
    reply = call("info", numa=True) if numa else call("info")
    for key, value in reply["info"]:
        line = f"{key:<23}:{value}" if key == "virt_caps" else f"{key:<23}: {value}"
        if name is None:
            click.echo(line)
        elif key.startswith(name):
            click.echo(value.lstrip())
        if key == "free_cpus" and name is None:  # xl prints the topology here
            for text in reply.get("numa", []):
                click.echo(text)


@cli.command("mem-set", context_settings=CONTEXT)
@click.argument("domain")
@click.argument("size")
def mem_set(domain: str, size: str) -> None:
    """Set the current memory usage for a domain (the balloon target)."""
    call("mem_set", domain=domain, size=size)


@cli.command("mem-max", context_settings=CONTEXT)
@click.argument("domain")
@click.argument("size")
def mem_max(domain: str, size: str) -> None:
    """Set the maximum amount reservation for a domain."""
    call("mem_max", domain=domain, size=size)


@cli.command(context_settings=CONTEXT)
@click.option("-c", "--clear", is_flag=True, help="Clear the hypervisor log after reading.")
def dmesg(clear: bool) -> None:
    """Read and/or clear dmesg buffer."""
    lines = call("dmesg", clear=clear)["lines"]
    if lines:
        click.echo("\n".join(lines))


@cli.command("debug-keys", context_settings=CONTEXT)
@click.argument("keys", required=False)
def debug_keys(keys: str | None) -> None:
    """Send debug keys to Xen."""
    if not keys:  # xl's SWITCH_FOREACH_OPT: too few arguments, exit status 2
        from pyxen.cli import xlmain
        sys.exit(xlmain.usage_error(xlmain._commands(sys.modules[__name__]), "debug-keys", 1))
    with connect() as c:
        try:
            c.request("debug_keys", keys=keys)
        except HostdError:
            fail(f"cannot send debug keys: {keys}")


# ------------------------------------------------------------------------- network

@cli.command("network-attach", context_settings=CONTEXT)
@click.argument("domain")
@click.argument("vifspec", nargs=-1)
def network_attach(domain: str, vifspec: tuple[str, ...]) -> None:
    """Create a new virtual network device (xl-network-configuration items)."""
    from pyxen.cli import xlconf
    from pyxen.toolstack.vifspec import NicSpec, VifSpecError, apply_item, check
    nic = NicSpec()
    try:
        for item in vifspec:
            apply_item(nic, item)
        nic = NicSpec.from_json(xlconf.vif_defaults(nic.to_json()))
        check(nic)
    except VifSpecError as e:
        fail(str(e))
    if G.dryrun:  # xl -N network-attach: print the device, attach nothing
        click.echo(json.dumps(nic.to_json(), indent=4))
        return
    call("network_attach", domain=domain, nic=nic.to_json())


@cli.command("network-list", context_settings=CONTEXT)
@click.argument("domains", nargs=-1, required=True)
def network_list(domains: tuple[str, ...]) -> None:
    """List virtual network interfaces for a domain."""
    click.echo(f"{'Idx':<3} {'BE':<2} {'Mac Addr.':<17} {'handle':<6} {'state':<5} "
               f"{'evt-ch':<6} {'tx-':>5}/{'rx-ring-ref':<5} {'BE-path':<30}")
    for d in domains:
        with connect() as c:
            try:
                rows = c.request("network_list", domain=d)["nics"]
            except HostdError as e:
                _one_line(str(e))
                continue
        for r in rows:
            click.echo(f"{r['devid']:<3d} {r['backend_id']:<2d} {r['mac']}{r['devid']:6d} "
                       f"{r['state']:5d} {r['evtch']:6d} {r['rref_tx']:5d}/"
                       f"{r['rref_rx']:<11d} {r['backend']:<30}")


@cli.command("network-detach", context_settings=CONTEXT)
@click.argument("domain")
@click.argument("device")
def network_detach(domain: str, device: str) -> None:
    """Destroy a domain's virtual network device (by devid or MAC)."""
    call("network_detach", domain=domain, device=device)


# ------------------------------------------------------------------------- block devices

@cli.command("block-attach", context_settings=CONTEXT)
@click.argument("domain")
@click.argument("spec", nargs=-1, required=True)
def block_attach(domain: str, spec: tuple[str, ...]) -> None:
    """Create a new virtual block device: <Domain> <disk-spec-component(s)>..."""
    from pyxen.toolstack.xldisk import DiskSpecError, parse_disk

    try:
        disk = parse_disk(",".join(spec), "command line")
    except DiskSpecError as e:
        fail(str(e))
    if disk.target and not os.path.isabs(disk.target):
        disk.target = os.path.abspath(disk.target)
    if G.dryrun:  # xl -N block-attach: print the disk, attach nothing
        click.echo(json.dumps(disk.to_json(), indent=4))
        return
    call("block_attach", domain=domain, disk=disk.to_json())


@cli.command("block-list", context_settings=CONTEXT)
@click.argument("domains", nargs=-1, required=True)
def block_list(domains: tuple[str, ...]) -> None:
    """List virtual block devices for a domain."""
    click.echo(f"{'Vdev':<5} {'BE':<3} {'handle':<6} {'state':<5} {'evt-ch':<6} "
               f"{'ring-ref':<8} {'BE-path':<30}")
    with connect() as c:
        for d in domains:
            try:
                rows = c.request("block_list", domain=d)["disks"]
            except HostdError as e:
                _one_line(str(e))
                continue
            for r in rows:
                click.echo(f"{r['devid']:<5} {r['backend_id']:<3} {r['frontend_id']:<6} "
                           f"{r['state']:<5} {r['evtch']:<6} {r['rref']:<8} "
                           f"{r['backend']:<30}")


@cli.command("block-detach", context_settings=CONTEXT)
@click.option("-f", "force", is_flag=True, help="Force the removal (do not wait for the "
              "guest to release the device).")
@click.argument("domain")
@click.argument("device")
def block_detach(force: bool, domain: str, device: str) -> None:
    """Destroy a domain's virtual block device: <Domain> <DevId|vdev>."""
    call("block_detach", domain=domain, device=device, force=force)


# ------------------------------------------------------------------------- entry

from types import ModuleType  # noqa: E402

from pyxen.cli import xl_dom as _xl_dom  # noqa: E402 - domid, rename, uptime, sysrq, ...
from pyxen.cli import xl_migrate as _xl_migrate  # noqa: E402 - migrate, migrate-receive
from pyxen.cli import xl_save as _xl_save  # noqa: E402 - save, restore
from pyxen.cli import xl_sched as _xl_sched  # noqa: E402 - sched-*, vcpu-*, cpupool-*
from pyxen.cli import xl_top as _xl_top  # noqa: E402 - xl top


def _adopt(module: ModuleType) -> None:
    """A subcommand module's commands join xl's group; the module reaches xl's helpers
    (call, fail, connect) through its `_xl`, set here because xl may run as __main__."""
    module._xl = sys.modules[__name__]
    for name, cmd in module.cli.commands.items():
        cli.add_command(cmd, name)


for _module in (_xl_sched, _xl_dom, _xl_top, _xl_migrate, _xl_save):
    _adopt(_module)


def main(argv: list[str] | None = None) -> int:
    """Run xl (global options, help, prefix matching, errors: cli/xlmain.py)."""
    from pyxen.cli import xlmain
    return xlmain.main(argv, xl_module=sys.modules[__name__])


def _one_line(msg: str) -> None:
    one_line(msg)


if __name__ == "__main__":
    sys.exit(main())
