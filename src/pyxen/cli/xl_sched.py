"""xl's resource-control commands (tools/xl/xl_sched.c, xl_vcpu.c, xl_cpupool.c):
sched-credit, sched-credit2, vcpu-list, vcpu-pin, vcpu-set, cpupool-*. Output formats
follow xl's; the work is hostd's (toolstack/schedops.py)."""

from __future__ import annotations

import os
from typing import Any

import click

CONTEXT = {"help_option_names": ["-h", "--help"]}
_xl: Any = None  # the xl module these commands belong to (it may be __main__)


def call(op: str, **args: Any) -> dict[str, Any]:
    return _xl.call(op, **args)  # type: ignore[no-any-return]


def fail(msg: str) -> Any:
    _xl.fail(msg)


cli = click.Group()  # collects the commands; cli/xl.py's _adopt() moves them onto xl's group



def _credit_domain_header() -> None:
    click.echo(f"{'Name':<33} {'ID':>4} {'Weight':>6} {'Cap':>4}")


def _credit_domain_row(d: dict[str, Any]) -> None:
    click.echo(f"{d['name']:<33} {d['domid']:>4} {d['weight']:>6} {d['cap']:>4}")


def _pool_line(p: dict[str, Any], sched: str) -> None:
    if sched == "credit":
        click.echo(f"Cpupool {p['name']}: tslice={p['tslice_ms']}ms "
                   f"ratelimit={p['ratelimit_us']}us migration-delay={p['migration_delay_us']}us")
    else:
        click.echo(f"Cpupool {p['name']}: ratelimit={p['ratelimit_us']}us")


def _sched_main(sched: str, dom: str | None, weight: int | None, cap: int | None,
                pool: str | None, opt_s: bool, tslice: int | None, ratelimit: int | None,
                migr: int | None) -> None:
    if (pool or opt_s) and (dom or weight is not None or cap is not None):
        fail("Specifying a cpupool or schedparam is not allowed with domain options.")
    if not dom and (weight is not None or cap is not None):
        fail("Must specify a domain.")
    if not opt_s and (tslice is not None or ratelimit is not None or migr is not None):
        fail("Must specify schedparam to set schedule parameter values.")
    if opt_s:
        r = call("sched_params", sched=sched, pool=pool, tslice=tslice, ratelimit=ratelimit,
                 migr=migr)
        if tslice is None and ratelimit is None and migr is None:
            _pool_line(r["pool"], sched)
    elif not dom:
        for p in call("sched_get", sched=sched, pool=pool)["pools"]:
            _pool_line(p, sched)
            _credit_domain_header()
            for d in p["domains"]:
                _credit_domain_row(d)
    elif weight is None and cap is None:
        for p in call("sched_get", sched=sched)["pools"] + \
                ([] if sched == "credit" else call("sched_get", sched="credit")["pools"]):
            for d in p["domains"]:
                if str(d["domid"]) == dom or d["name"] == dom:
                    _credit_domain_header()
                    _credit_domain_row(d)
                    return
        fail(f"{dom} is an invalid domain identifier (rc=-6)")
    else:
        call("sched_set", domain=dom, weight=weight, cap=cap)


@cli.command("sched-credit", context_settings=CONTEXT)
@click.option("-d", "--domain", "dom", metavar="DOMAIN")
@click.option("-w", "--weight", type=int, help="Weight (1..65535, default 256).")
@click.option("-c", "--cap", type=int, help="Cap in % of one CPU (0 = none).")
@click.option("-p", "--cpupool", "pool", metavar="CPUPOOL")
@click.option("-s", "--schedparam", "opt_s", is_flag=True, help="Scheduler parameters.")
@click.option("-t", "--tslice_ms", "tslice", type=int)
@click.option("-r", "--ratelimit_us", "ratelimit", type=int)
@click.option("-m", "--migration_delay_us", "migr", type=int)
def sched_credit(dom: str | None, weight: int | None, cap: int | None, pool: str | None,
                 opt_s: bool, tslice: int | None, ratelimit: int | None,
                 migr: int | None) -> None:
    """Get/set credit scheduler parameters."""
    _sched_main("credit", dom, weight, cap, pool, opt_s, tslice, ratelimit, migr)


@cli.command("sched-credit2", context_settings=CONTEXT)
@click.option("-d", "--domain", "dom", metavar="DOMAIN")
@click.option("-w", "--weight", type=int)
@click.option("-c", "--cap", type=int)
@click.option("-p", "--cpupool", "pool", metavar="CPUPOOL")
@click.option("-s", "--schedparam", "opt_s", is_flag=True)
@click.option("-r", "--ratelimit_us", "ratelimit", type=int)
def sched_credit2(dom: str | None, weight: int | None, cap: int | None, pool: str | None,
                  opt_s: bool, ratelimit: int | None) -> None:
    """Get/set credit2 scheduler parameters."""
    if pool and (dom or weight is not None or cap is not None):
        fail("Specifying a cpupool is not allowed with other options.")
    _sched_main("credit2", dom, weight, cap, pool, opt_s, None, ratelimit, None)


# --------------------------------------------------------------------------- vCPUs
@cli.command("vcpu-list", context_settings=CONTEXT)
@click.argument("domains", nargs=-1)
def vcpu_list(domains: tuple[str, ...]) -> None:
    """List the VCPUs for all/some domains."""
    rows = call("vcpu_list", domains=list(domains) or None)["vcpus"]
    click.echo(f"{'Name':<32} {'ID':>5} {'VCPU':>5} {'CPU':>5} {'State':>5} {'Time(s)':>9} "
               "Affinity (Hard / Soft)")
    for v in rows:
        online = v.get("online")
        cpu = f"{v['cpu']:>5}" if online and v.get("cpu") is not None else f"{'-':>5}"
        st = (("r" if v.get("running") and not v.get("paused") else "-") if online else "-") \
            + ("b" if online and v.get("blocked") else "-") + ("-" if online else "p")
        # xl's print_vcpuinfo: "%5u %3c%c- " (offline: "%5c %3c%cp "), then "%9.1f  "
        click.echo(f"{v['name']:<32} {v['domid']:>5} {v['vcpu']:>5}{cpu} {st:>5} "
                   f"{float(v.get('cpu_time', 0.0)):>9.1f}  {v['hard']} / {v['soft']}")


@cli.command("vcpu-pin", context_settings=CONTEXT)
@click.option("-f", "--force", is_flag=True, help="(accepted; pyxen has no temporary pins)")
@click.argument("domain")
@click.argument("vcpu")
@click.argument("hard")
@click.argument("soft", required=False)
def vcpu_pin(force: bool, domain: str, vcpu: str, hard: str, soft: str | None) -> None:
    """Set which CPUs a VCPU can use (hard, and soft)."""
    call("vcpu_pin", domain=domain, vcpu=vcpu, hard=hard, soft=soft)


@cli.command("vcpu-set", context_settings=CONTEXT)
@click.option("-i", "--ignore-host", "ignore", is_flag=True,
              help="Allow more vCPUs than the host has CPUs.")
@click.argument("domain")
@click.argument("count")
def vcpu_set(ignore: bool, domain: str, count: str) -> None:
    """Set the number of active VCPUs allowed for the domain."""
    try:
        n = int(count, 10)
    except ValueError:
        fail(f"Invalid argument: {count}")
    host = os.cpu_count() or 1
    if n > host and not ignore:
        fail(f"You are overcommmitting! You have {host} physical CPUs and want {n} vCPUs! "
             "Aborting, use --ignore-host to continue")
    call("vcpu_set", domain=domain, count=n)


# --------------------------------------------------------------------------- cpupools
@cli.command("cpupool-create", context_settings=CONTEXT)
@click.option("-f", "--defconfig", "cfgfile", metavar="FILE")
@click.option("-n", "--dryrun", is_flag=True)
@click.argument("vars_", nargs=-1)
def cpupool_create(cfgfile: str | None, dryrun: bool, vars_: tuple[str, ...]) -> None:
    """Create a new CPU pool."""
    from pyxen.toolstack.xlcfg import XlCfgError, XlConfig, apply_override, parse_file
    try:
        cfg = parse_file(cfgfile) if cfgfile else XlConfig("command line")
        for v in vars_:
            apply_override(cfg, v)
        name = cfg.get_string("name")
        sched = cfg.get_string("sched") or "credit"
        s = cfg.find("cpus")
        cpus = None if s is None else (",".join(str(x) for x in s.value)
                                       if isinstance(s.value, list) else str(s.value))
        nodes = cfg.find("nodes")
        if nodes is not None and cpus is None:
            vals = nodes.value if isinstance(nodes.value, list) else [nodes.value]
            cpus = ",".join(f"nodes:{x}" for x in vals)
    except XlCfgError as e:
        fail(str(e))
    if not name:
        fail("Missing cpupool name")
    if dryrun:
        click.echo(f"name={name!r} sched={sched!r} cpus={cpus!r}")
        return
    call("cpupool_create", name=name, sched=sched, cpus=cpus)


@cli.command("cpupool-list", context_settings=CONTEXT)
@click.option("-c", "--cpus", "opt_cpus", is_flag=True, help="Output list of CPUs used by a pool")
@click.argument("pool", required=False)
def cpupool_list(opt_cpus: bool, pool: str | None) -> None:
    """List CPU pools on host."""
    pools = call("cpupool_list", pool=pool)["pools"]
    click.echo(f"{'Name':<19}" + ("CPU list" if opt_cpus else
                                   "CPUs   Sched     Active   Domain count"))
    for p in pools:
        if opt_cpus:
            click.echo(f"{p['name']:<19}{p['cpulist']}")
        else:
            click.echo(f"{p['name']:<19}{len(p['cpus']):>3} {p['sched']:>9}       y       "
                       f"{p['n_domains']:>4}")


@cli.command("cpupool-destroy", context_settings=CONTEXT)
@click.argument("pool")
def cpupool_destroy(pool: str) -> None:
    """Deactivate a CPU pool."""
    call("cpupool_destroy", pool=pool)


@cli.command("cpupool-rename", context_settings=CONTEXT)
@click.argument("pool")
@click.argument("newname")
def cpupool_rename(pool: str, newname: str) -> None:
    """Rename a CPU pool."""
    call("cpupool_rename", pool=pool, name=newname)


@cli.command("cpupool-cpu-add", context_settings=CONTEXT)
@click.argument("pool")
@click.argument("cpus")
def cpupool_cpu_add(pool: str, cpus: str) -> None:
    """Adds a CPU (or CPUs, or nodes:N) to a CPU pool."""
    call("cpupool_cpu_add", pool=pool, cpus=cpus)


@cli.command("cpupool-cpu-remove", context_settings=CONTEXT)
@click.argument("pool")
@click.argument("cpus")
def cpupool_cpu_remove(pool: str, cpus: str) -> None:
    """Removes a CPU (or CPUs) from a CPU pool."""
    call("cpupool_cpu_remove", pool=pool, cpus=cpus)


@cli.command("cpupool-migrate", context_settings=CONTEXT)
@click.argument("domain")
@click.argument("pool")
def cpupool_migrate(domain: str, pool: str) -> None:
    """Moves a domain into a CPU pool."""
    call("cpupool_migrate", domain=domain, pool=pool)
