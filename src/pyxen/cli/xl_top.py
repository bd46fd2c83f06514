"""``xl top``: xentop's live view of the domains (tools/xenstat/xentop/xentop.c).

The columns, their order and meaning are xentop's (NAME STATE CPU(sec) CPU(%) MEM(k)
MEM(%) MAXMEM(k) MAXMEM(%) VCPUS NETS NETTX(k) NETRX(k) VBDS VBD_OO VBD_RD VBD_WR
VBD_RSECT VBD_WSECT SSID), and so are its keys: ``s``/``S`` sorts by the next column,
``q``/``Q`` or Esc quits, ``n``/``b``/``v`` show each domain's networks, disks and vCPUs,
``d``/``D`` changes the delay (1, 2, 3, 5, 10 s). Options: ``-d`` delay, ``-b`` batch mode
(plain text to stdout, no terminal needed), ``-i`` iterations, ``-n``/``-x``/``-v``.
CPU(%) is the CPU time the domain's vCPU threads used over the last interval; the I/O
figures are the backends' counters (vmm/domctl.py ``dev_stats``). Drawn with rich."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from dataclasses import dataclass, field
from typing import Any

import click

CONTEXT = {"help_option_names": ["-h", "--help"]}
_xl: Any = None

cli = click.Group()



# name, width, value of a row (for sorting), text of a row
COLUMNS: list[tuple[str, int]] = [
    ("NAME", 10), ("STATE", 6), ("CPU(sec)", 10), ("CPU(%)", 6), ("MEM(k)", 10),
    ("MEM(%)", 6), ("MAXMEM(k)", 10), ("MAXMEM(%)", 9), ("VCPUS", 5), ("NETS", 4),
    ("NETTX(k)", 8), ("NETRX(k)", 8), ("VBDS", 4), ("VBD_OO", 8), ("VBD_RD", 8),
    ("VBD_WR", 8), ("VBD_RSECT", 10), ("VBD_WSECT", 10), ("SSID", 4),
]
DELAYS = (1.0, 2.0, 3.0, 5.0, 10.0)


def xentop_state(letters: str) -> str:
    """xl list's rbpscd letters -> xentop's order: d s b c p r."""
    ls = letters.ljust(6, "-")
    return ("d" if ls[5] == "d" else "-") + ("s" if ls[3] == "s" else "-") \
        + ("b" if ls[1] == "b" else "-") + ("c" if ls[4] == "c" else "-") \
        + ("p" if ls[2] == "p" else "-") + ("r" if ls[0] == "r" else "-")


@dataclass
class Sample:
    """One `top` reply and when it was taken, and the CPU % since the sample before."""
    reply: dict[str, Any]
    at: float
    cpu_pct: dict[int, float] = field(default_factory=dict)


def take(prev: Sample | None) -> Sample:
    reply = _xl.call("top")
    # hostd's clock at the sample (CLOCK_MONOTONIC is the host's): the interval the CPU
    # times grew over, without the request's latency
    s = Sample(reply, float(reply.get("at", time.monotonic())))
    if prev is not None:
        dt = s.at - prev.at
        before = {d["domid"]: d["cpu_time"] for d in prev.reply["domains"]}
        for d in reply["domains"]:
            if d["domid"] in before and dt > 0:
                s.cpu_pct[d["domid"]] = max(0.0, (d["cpu_time"] - before[d["domid"]]) / dt
                                            * 100.0)
    return s


def row_values(d: dict[str, Any], s: Sample) -> list[Any]:
    total = max(1, s.reply["total_kib"])
    vifs, vbds = d["vifs"], d["vbds"]
    is_dom0 = d["domid"] == 0
    return [
        d["name"], xentop_state(d["state"]), int(d["cpu_time"]),
        s.cpu_pct.get(d["domid"], 0.0), d["mem_kib"], d["mem_kib"] * 100.0 / total,
        None if is_dom0 else d["maxmem_kib"],
        None if is_dom0 else d["maxmem_kib"] * 100.0 / total, d["vcpus"], len(vifs),
        sum(v["tx_bytes"] for v in vifs) // 1024, sum(v["rx_bytes"] for v in vifs) // 1024,
        len(vbds), sum(b["oo_req"] for b in vbds), sum(b["rd_req"] for b in vbds),
        sum(b["wr_req"] for b in vbds), sum(b["rd_sect"] for b in vbds),
        sum(b["wr_sect"] for b in vbds), d.get("ssid", 0),
    ]


def cell(i: int, v: Any) -> str:
    name, width = COLUMNS[i]
    if v is None:
        return "no limit" if name == "MAXMEM(k)" else "n/a"
    if isinstance(v, float):
        return f"{v:.1f}"
    text = str(v)
    return text[:width] if name == "NAME" else text


def sorted_domains(s: Sample, sort: int) -> list[dict[str, Any]]:
    doms = list(s.reply["domains"])
    if sort < 0:
        return doms  # domid order, as hostd lists them

    def key(d: dict[str, Any]) -> Any:
        v = row_values(d, s)[sort]
        return -1.0 if v is None else v

    return sorted(doms, key=key, reverse=COLUMNS[sort][0] not in ("NAME", "STATE"))


def summary(s: Sample, delay: float) -> list[str]:
    """xentop's top lines: time and version, domain counts by state, memory and CPUs."""
    from pyxen import XEN_EXTRAVERSION, XEN_MAJOR, XEN_MINOR

    doms = s.reply["domains"]
    counts = {k: 0 for k in ("running", "blocked", "paused", "crashed", "dying", "shutdown")}
    for d in doms:
        st = d["state"].ljust(6, "-")
        for letter, k in zip("rbp", ("running", "blocked", "paused"), strict=True):
            if letter in st[:3]:
                counts[k] += 1
        if st[3] == "s":
            counts["crashed" if st[4] == "c" else "shutdown"] += 1
        if st[5] == "d":
            counts["dying"] += 1
    total, free = s.reply["total_kib"], s.reply["free_kib"]
    return [
        f"xentop - {time.strftime('%H:%M:%S')}   Xen {XEN_MAJOR}.{XEN_MINOR}{XEN_EXTRAVERSION}"
        f"   (pyxen; delay {delay:g}s)",
        f"{len(doms)} domains: " + ", ".join(f"{n} {k}" for k, n in counts.items()),
        f"Mem: {total}k total, {total - free}k used, {free}k free    "
        f"CPUs: {s.reply['ncpus']}",
    ]


def detail_lines(d: dict[str, Any], nets: bool, vbds: bool, vcpus: bool) -> list[str]:
    out = []
    if nets:
        for v in d["vifs"]:
            out.append(f"Net{v['devid']} RX: {v['rx_bytes']:>8}bytes {v['rx_packets']:>8}pkts "
                       f"TX: {v['tx_bytes']:>8}bytes {v['tx_packets']:>8}pkts")
    if vbds:
        for b in d["vbds"]:
            out.append(f"VBD {b['devid']:>5}  OO: {b['oo_req']:>8}   RD: {b['rd_req']:>8}   "
                       f"WR: {b['wr_req']:>8}  RSECT: {b['rd_sect']:>10}  "
                       f"WSECT: {b['wr_sect']:>10}")
    if vcpus:
        out.append(f"VCPUs: {d['vcpus']}")
    return out


def batch_text(s: Sample, delay: float, sort: int, nets: bool, vbds: bool,
               vcpus: bool) -> str:
    lines = summary(s, delay)
    lines.append(" ".join(f"{name:>{w}}" for name, w in COLUMNS))
    for d in sorted_domains(s, sort):
        vals = row_values(d, s)
        lines.append(" ".join(f"{cell(i, v):>{COLUMNS[i][1]}}" for i, v in enumerate(vals)))
        lines += detail_lines(d, nets, vbds, vcpus)
    return "\n".join(lines)


def render(s: Sample, delay: float, sort: int, nets: bool, vbds: bool, vcpus: bool) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, padding=(0, 1, 0, 0), show_edge=False, pad_edge=False,
                  header_style="bold")
    for i, (name, width) in enumerate(COLUMNS):
        table.add_column(name, justify="right", min_width=width, no_wrap=True,
                         header_style="reverse bold" if i == sort else "bold")
    for d in sorted_domains(s, sort):
        table.add_row(*(cell(i, v) for i, v in enumerate(row_values(d, s))))
        for line in detail_lines(d, nets, vbds, vcpus):
            table.add_row(Text(line, style="dim"), *[""] * (len(COLUMNS) - 1))
    keys = Text("Delay  Networks  vBds  VCPUs  Sort  Quit", style="reverse")
    return Group(Text("\n".join(summary(s, delay))), table, keys)


def _keys(timeout: float) -> str | None:
    """The keys typed (all of them: a burst arrives in one read), or None on timeout."""
    fd = sys.stdin.fileno()
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    if not ready:
        return None
    data = os.read(fd, 64)
    return data.decode(errors="replace") if data else "q"


@cli.command("top", context_settings=CONTEXT)
@click.option("-d", "--delay", type=float, default=3.0, show_default=True,
              help="Seconds between updates.")
@click.option("-b", "--batch", is_flag=True, help="Batch mode: plain text, no terminal.")
@click.option("-i", "--iterations", type=int, default=None, help="Number of updates.")
@click.option("-n", "--networks", is_flag=True, help="Show each domain's networks.")
@click.option("-x", "--vbds", is_flag=True, help="Show each domain's virtual disks.")
@click.option("-v", "--vcpus", is_flag=True, help="Show each domain's vCPUs.")
def top(delay: float, batch: bool, iterations: int | None, networks: bool, vbds: bool,
        vcpus: bool) -> None:
    """Monitor a host and the domains in real time (xentop)."""
    if delay <= 0:
        _xl.fail(f"xl top: invalid delay {delay}: must be positive")
    if iterations is not None and iterations < 1:
        _xl.fail(f"xl top: invalid number of iterations {iterations}")
    sort = -1
    prev = take(None)
    if batch or not sys.stdin.isatty() or not sys.stdout.isatty():
        n = 0
        time.sleep(min(delay, 1.0))  # a first CPU(%) needs two samples
        while True:
            prev = take(prev)
            click.echo(batch_text(prev, delay, sort, networks, vbds, vcpus))
            n += 1
            if iterations is not None and n >= iterations:
                return
            time.sleep(delay)
    _interactive(prev, delay, iterations, networks, vbds, vcpus)


def _interactive(prev: Sample, delay: float, iterations: int | None, nets: bool,
                 vbds: bool, vcpus: bool) -> None:
    from rich.console import Console
    from rich.live import Live

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    sort, n = -1, 0
    try:
        tty.setcbreak(fd)
        with Live(render(prev, delay, sort, nets, vbds, vcpus), console=Console(),
                  screen=True, auto_refresh=False) as live:
            deadline = time.monotonic() + min(delay, 1.0)
            while True:
                keys = _keys(deadline - time.monotonic())
                if keys is not None:
                    for k in keys.lower():
                        if k in ("q", "\x1b"):
                            return
                        if k == "s":
                            sort = (sort + 1) % len(COLUMNS)
                        elif k == "d":
                            delay = DELAYS[(DELAYS.index(delay) + 1) % len(DELAYS)] \
                                if delay in DELAYS else DELAYS[0]
                        elif k == "n":
                            nets = not nets
                        elif k == "b":
                            vbds = not vbds
                        elif k == "v":
                            vcpus = not vcpus
                    live.update(render(prev, delay, sort, nets, vbds, vcpus), refresh=True)
                    continue
                prev = take(prev)
                live.update(render(prev, delay, sort, nets, vbds, vcpus), refresh=True)
                n += 1
                if iterations is not None and n >= iterations:
                    return
                deadline = time.monotonic() + delay
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
