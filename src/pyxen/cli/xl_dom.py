"""xl's everyday domain commands (tools/xl/xl_misc.c, xl_vmcontrol.c, xl_list.c):
domid, domname, rename, uptime, vm-list, sysrq, trigger, dump-core. Output formats and
error lines are xl's; the work is hostd's (toolstack/domops.py)."""

from __future__ import annotations

import os
import time
from typing import Any

import click

CONTEXT = {"help_option_names": ["-h", "--help"]}
_xl: Any = None  # the xl module these commands belong to (it may be __main__)

cli = click.Group()  # collects the commands; cli/xl.py's _adopt() moves them onto xl's group



def call(op: str, **args: Any) -> dict[str, Any]:
    return _xl.call(op, **args)  # type: ignore[no-any-return]


def fail(msg: str) -> Any:
    _xl.fail(msg)


def _strtol(text: str) -> int | None:
    """C's strtol(text, &end, 10) as xl uses it: the leading integer, None if none."""
    s = text.lstrip()
    sign = 1
    if s[:1] in "+-" and s:
        sign, s = (-1 if s[0] == "-" else 1), s[1:]
    digits = len(s) - len(s.lstrip("0123456789"))
    return sign * int(s[:digits]) if digits else None


@cli.command("domid", context_settings=CONTEXT)
@click.argument("name")
def domid(name: str) -> None:
    """Convert a domain name to domain id."""
    click.echo(call("domid", name=name)["domid"])


@cli.command("domname", context_settings=CONTEXT)
@click.argument("domid")
def domname(domid: str) -> None:
    """Convert a domain id to domain name."""
    n = _strtol(domid)
    if n is None:
        fail("Invalid domain id.")
    click.echo(call("domname", domid=n)["name"])


@cli.command("rename", context_settings=CONTEXT)
@click.argument("domain")
@click.argument("new_name")
def rename(domain: str, new_name: str) -> None:
    """Rename a domain."""
    call("rename", domain=domain, name=new_name)


def uptime_to_string(seconds: int, short: bool) -> str:
    """xl's uptime_to_string()."""
    sec, m = seconds % 60, seconds // 60
    mins, h = m % 60, m // 60
    hours, days = h % 24, h // 24
    if short:
        clock = f"{hours:2d}:{mins:02d}"
    else:
        clock = f"{hours:2d}:{mins:02d}:{sec:02d}"
    if days > 1:
        return f"{days} days, {clock}"
    if days == 1:
        return f"{days} day, {clock}"
    return clock


@cli.command("uptime", context_settings=CONTEXT)
@click.option("-s", "short", is_flag=True, help="Uptime in short format.")
@click.argument("domains", nargs=-1)
def uptime(short: bool, domains: tuple[str, ...]) -> None:
    """Print uptime for all/some domains."""
    rows = call("uptime", domains=list(domains))["domains"]
    now = time.strftime("%H:%M:%S", time.localtime())
    if not short:
        click.echo(f"{'Name':<33} {'ID':>4} Uptime")
    for r in rows:
        text = uptime_to_string(int(r["uptime"]), short)
        if short:
            click.echo(f" {now} up {text}, {r['name']} ({r['domid']})")
        else:
            click.echo(f"{r['name']:<33} {r['domid']:>4} {text}")


@cli.command("vm-list", context_settings=CONTEXT)
def vm_list() -> None:
    """List guest domains, excluding dom0, stubdoms, etc."""
    click.echo("UUID                                  ID    name")
    for v in call("vm_list")["vms"]:
        click.echo(f"{v['uuid']}  {v['domid']}    {v['name']:<30}")


@cli.command("sysrq", context_settings=CONTEXT)
@click.argument("domain")
@click.argument("key")
def sysrq(domain: str, key: str) -> None:
    """Send a sysrq to a domain (control/sysrq, for its PV drivers)."""
    if len(key) != 1:
        fail("Invalid sysrq.")
    call("sysrq", domain=domain, key=key)


TRIGGERS = ("power", "sleep", "nmi", "init", "reset", "s3resume")


@cli.command("trigger", context_settings=CONTEXT)
@click.argument("domain")
@click.argument("trigger_name", metavar="TRIGGER")
@click.argument("vcpu", required=False)
def trigger(domain: str, trigger_name: str, vcpu: str | None) -> None:
    """Send a trigger to a domain: power|sleep|nmi|init|reset|s3resume [VCPU]."""
    if trigger_name not in TRIGGERS:
        fail(f'Invalid trigger "{trigger_name}"')
    vcpuid = 0
    if vcpu is not None:
        n = _strtol(vcpu)
        if n is None:  # xl: "Invalid vcpuid, using default vcpuid=0."
            click.echo("Invalid vcpuid, using default vcpuid=0.", err=True)
        else:
            vcpuid = n
    call("trigger", domain=domain, trigger=trigger_name, vcpu=vcpuid)


@cli.command("dump-core", context_settings=CONTEXT)
@click.argument("domain")
@click.argument("filename")
def dump_core(domain: str, filename: str) -> None:
    """Core dump a domain (an ELF file in Xen's dump-core format)."""
    call("dump_core", domain=domain, path=os.path.abspath(filename))


# --------------------------------------------------------------------------- list -c / -n

def print_bitmap(bits: set[int], n: int) -> str:
    """xl_utils.c's print_bitmap(): "all", "none", or ranges such as "0-1,3"."""
    if not any(i in bits for i in range(n)):
        return "none"
    if all(i in bits for i in range(n)):
        return "all"
    out, i = [], 0
    while i < n:
        if i in bits:
            j = i
            while j + 1 < n and j + 1 in bits:
                j += 1
            out.append(f"{i}-{j}" if j > i else f"{i}")
            i = j + 1
        else:
            i += 1
    return ",".join(out)


def list_columns(doms: list[dict[str, Any]], cpupool: bool,
                 numa: bool) -> tuple[str, list[str]]:
    """xl list -c / -n (xl_info.c's list_domains): the header's extra text and each row's,
    the cpupool name ("%16s") and the node affinity (" " + print_bitmap)."""
    if not (cpupool or numa):
        return "", [""] * len(doms)
    pool_of: dict[int, str] = {}
    if cpupool:
        for p in call("cpupool_list")["pools"]:
            for d in p["domains"]:
                pool_of[d["domid"]] = p["name"]
    nr_nodes = 1
    if numa:
        info = dict(call("info")["info"])
        nr_nodes = int(str(info.get("nr_nodes", "1")).strip() or 1)
    header = ("         Cpupool" if cpupool else "") + (" NODE Affinity" if numa else "")
    tails = []
    for d in doms:
        tail = f"{pool_of.get(d['domid'], 'Pool-0'):>16}" if cpupool else ""
        if numa:
            nodes = (d.get("config") or {}).get("numa_nodes") or list(range(nr_nodes))
            tail += " " + print_bitmap(set(nodes), nr_nodes)
        tails.append(tail)
    return header, tails
