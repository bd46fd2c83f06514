"""xl's command-line surface (tools/xl/xl.c, xl_cmdtable.c, xl_utils.c's def_getopt; Xen
4.17): `xl help` and `xl` alone, `xl help CMD` / `xl CMD -h`, the global options, prefix
matching, xl's wording and exit statuses, /etc/xen/xl.conf (PYXEN_XL_CONF), the xl.cfg keys
pyxen does not act on, `+=` with numbers, Debian's bash completion for xl, and the lean
path of `xl list/info/domid` printing what the click commands print."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import click
import pytest
from xlhost import REPO, Host, needs_vmm

from pyxen.cli import xlmain
from pyxen.cli.xl_cmdtable import XL_TABLE

pytestmark = pytest.mark.timeout(120)

# Lines of Xen 4.17's own `xl` (Debian's xen-utils-4.17, run with no arguments).
XL_417_HELP_HEAD = [
    "Usage xl [-vfNtT] <subcommand> [args]",
    "",
    "xl full list of subcommands:",
    "",
]
XL_417_HELP_LINES = {
    "create": " create              Create a domain from config file <filename>",
    "list": " list                List information about all/some domains",
    "destroy": " destroy             Terminate a domain immediately",
    "console": " console             Attach to domain's console",
    "cpupool-cpu-remove": " cpupool-cpu-remove  Removes a CPU from a CPU pool",
    "debug-keys": " debug-keys          Send debug keys to Xen",
}
XL_417_LONG_NAME = [" pci-assignable-remove ",
                    "                     Remove a device from being assignable"]
XL_417_HELP_LIST = """\
Usage: xl [-vtT] list [options] [Domain]


List information about all/some domains.

Options:

-l, --long              Output all VM details
-v, --verbose           Prints out UUIDs and security context
-Z, --context           Prints out security context
-c, --cpupool           Prints the cpupool the domain is in
-n, --numa              Prints out NUMA node affinity
"""


def xl(host: Host | None, *args: str, env: dict[str, str] | None = None,
       cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """The installed entry point (pyxen.cli.xlmain, as .venv/bin/xl runs it)."""
    e = dict(host.env if host else os.environ, **(env or {}))
    if host is None:
        e["PYXEN_RUNDIR"] = "/nonexistent/pyxen-must-not-start"
    return subprocess.run([sys.executable, "-m", "pyxen.cli.xlmain", *args], env=e,
                          cwd=cwd, capture_output=True, text=True, timeout=90,
                          stdin=subprocess.DEVNULL)


def one_line(r: subprocess.CompletedProcess[str], rc: int) -> str:
    assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def write_cfg(tmp_path: Path, body: str, name: str = "t.cfg") -> Path:
    f = tmp_path / name
    f.write_text(body)
    return f


GOOD = 'name = "t"\ntype = "pvh"\nkernel = "guests/build/hello.elf"\n'


# --------------------------------------------------------------------- help

def test_help_lists_pyxen_commands_in_xl_order_and_format() -> None:
    r = xl(None, "help")
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[:4] == XL_417_HELP_HEAD
    names = [ln.split()[0] for ln in lines[4:]]
    order = [s.name for s in XL_TABLE]
    known = [n for n in names if n in order]
    assert known == sorted(known, key=order.index), "not in xl's table order"
    for must in ("create", "list", "destroy", "shutdown", "reboot", "pause", "unpause",
                 "console", "info", "dmesg", "debug-keys", "mem-set", "mem-max",
                 "network-attach", "block-list", "vcpu-list", "sched-credit", "domid"):
        assert must in names
    for name, line in XL_417_HELP_LINES.items():
        assert line in lines, name
    for s in XL_TABLE:  # xl's summary, xl's layout, for every command listed
        if s.name in names:
            assert f" {s.name:<19} {s.desc}" in lines
    assert "cd-insert" not in names and "pci-attach" not in names  # not implemented: not listed
    # `xl` alone prints the same and fails, as xl does
    r2 = xl(None)
    assert r2.returncode == 1 and r2.stdout == r.stdout


def test_help_command_usage() -> None:
    r = xl(None, "help", "list")
    assert r.returncode == 0 and r.stdout == XL_417_HELP_LIST
    for args in (("list", "-h"), ("li", "--help"), ("help", "li")):
        r2 = xl(None, *args)
        assert r2.returncode == 0 and r2.stdout == XL_417_HELP_LIST, args
    r = xl(None, "help", "create")
    assert r.stdout.startswith("Usage: xl [-vtTfN] create <ConfigFile> [options] [vars]\n\n"
                               "Create a domain from config file <filename>.\n\nOptions:\n\n")
    r = xl(None, "help", "pause")
    assert r.stdout == "Usage: xl [-vtTf] pause <Domain>\n\nPause execution of a domain.\n\n"
    r = xl(None, "help", "frobnicate")
    assert r.returncode == 0 and r.stdout == 'command "frobnicate" not implemented\n'


def test_help_picks_up_registered_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """Commands other modules register (cli/xl_sched.py's way) are listed: xl's at their
    place in xl's table, with xl's summary; pyxen's own at the end."""
    group = click.Group()

    @group.command("pci-assignable-remove")
    def _a() -> None:
        """Whatever."""

    @group.command("frob")
    @click.option("-x", is_flag=True, help="Extra.")
    @click.argument("domain")
    def _b(x: bool, domain: str) -> None:
        """Frobnicate a domain."""
        click.echo(f"frob {domain} {x}")

    @group.command("create")
    def _c() -> None:
        """Create."""

    mod = types.SimpleNamespace(cli=group)
    assert xlmain.main(["help"], xl_module=mod) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index(XL_417_LONG_NAME[0])
    assert lines[at + 1] == XL_417_LONG_NAME[1]
    assert lines.index(" create              Create a domain from config file <filename>") < at
    assert lines[-1] == f" {'frob':<19} Frobnicate a domain"
    assert lines.index(" domid               Convert a domain name to domain id") > at
    assert xlmain.main(["help", "frob"], xl_module=mod) == 0
    assert capsys.readouterr().out.startswith(
        "Usage: xl [-vtTf] frob [options] <Domain>\n\nFrobnicate a domain.\n\nOptions:\n\n-x")
    assert xlmain.main(["fr", "d1", "-x"], xl_module=mod) == 0  # prefix, then click
    assert capsys.readouterr().out == "frob d1 True\n"


# --------------------------------------------------------------------- global options

def test_unknown_global_option() -> None:
    for args, bad in ((("-z", "list"), "xl: invalid option -- 'z'"),
                      (("-vq", "list"), "xl: invalid option -- 'q'"),
                      (("-h",), "xl: invalid option -- 'h'"),
                      (("--bogus", "list"), "xl: unrecognized option '--bogus'")):
        r = xl(None, *args)
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.splitlines() == [bad, "unknown global option"], args


def test_global_options_before_the_command(host: Host, tmp_path: Path) -> None:
    plain = xl(host, "list")
    assert plain.returncode == 0
    for opts in (["-v"], ["-vv"], ["-f"], ["-t"], ["-T"], ["-vftT"], ["-v", "-t", "--"]):
        r = xl(host, *opts, "list")
        assert r.returncode == 0, (opts, r.stderr)
        assert r.stdout.splitlines()[0] == plain.stdout.splitlines()[0]
    # -v: xl says what it asks hostd
    r = xl(host, "-v", "pause", "nosuch")
    assert "xl: hostd request pause" in r.stderr and r.returncode == 1
    # -T: a timestamp and xl's pid on the lines xl logs
    r = xl(host, "-T", "pause", "nosuch")
    line = one_line(r, 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \[\d+\] "
                        r"nosuch is an invalid domain identifier \(rc=-6\)", line), line


def test_dry_run_global_option(host: Host, tmp_path: Path) -> None:
    r = xl(host, "-N", "list")
    assert one_line(r, 1) == "command does not implement -N (dryrun) option"
    r = xl(host, "-N", "create", "examples/hello.cfg", "name='dry'")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["c_info"]["name"] == "dry"  # libxl domain_config
    assert xl(host, "list", "dry").returncode == 1  # nothing was created
    r = xl(host, "-N", "network-attach", "Domain-0", "bridge=br9", "mac=00:16:3e:00:00:01")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bridge"] == "br9"
    host.assert_clean()


# --------------------------------------------------------------------- prefixes

def test_unambiguous_prefixes(host: Host) -> None:
    assert xl(host, "li").stdout.splitlines()[0] == xlmain.LIST_HEADER
    assert xl(host, "cr", "-n", "examples/hello.cfg").returncode == 0
    assert xl(host, "deb").returncode == 2  # debug-keys, missing its argument
    # ambiguous in xl's whole table (shutdown, sharing): as on Xen
    assert one_line(xl(host, "sh", "x"), 1) == "command not implemented"
    # a prefix of xl's commands that pyxen does not have (pci-*)
    assert one_line(xl(host, "pci-l"), 1) == "command not implemented"


# --------------------------------------------------------------------- errors

def test_command_errors_wording_and_status(host: Host, tmp_path: Path) -> None:
    assert one_line(xl(host, "frobnicate"), 1) == "command not implemented"
    assert one_line(xl(host, "cd-insert", "x", "y", "z"), 1) == "command not implemented"
    # def_getopt: too few arguments -> the line, the usage on stdout, status 2
    r = xl(host, "pause")
    assert one_line(r, 2) == "'xl pause' requires at least 1 argument."
    assert r.stdout.startswith("Usage: xl [-vtTf] pause <Domain>")
    r = xl(host, "mem-set", "x")
    assert one_line(r, 2) == "'xl mem-set' requires at least 2 arguments."
    r = xl(host, "domid")
    assert one_line(r, 2) == "'xl domid' requires at least 1 argument."
    # unknown options, an option without its value
    assert one_line(xl(host, "list", "-q"), 2) == "option `q' not supported."
    assert one_line(xl(host, "create", "--bogus", "x.cfg"), 2) == "option `bogus' not supported."
    assert one_line(xl(host, "console", "x", "-t"), 2) == "option `t' not supported."
    # domains
    assert one_line(xl(host, "pause", "nosuch"), 1) == \
        "nosuch is an invalid domain identifier (rc=-6)"
    assert one_line(xl(host, "list", "nosuch"), 1) == \
        "nosuch is an invalid domain identifier (rc=-6)"
    assert one_line(xl(host, "list", "42"), 1) == "Error: Domain '42' does not exist."
    assert one_line(xl(host, "domid", "nosuch"), 1) == \
        "Can't get domid of domain name 'nosuch', maybe this domain does not exist."
    assert one_line(xl(host, "destroy", "0"), 1) == (
        "Not destroying domain 0; use -f to force. This can only be done when using a "
        "disaggregated hardware domain and toolstack.")
    assert one_line(xl(host, "destroy", "-f", "Domain-0"), 1).startswith("destroy failed")
    host.assert_clean()


def test_config_errors_wording_and_status(host: Host, tmp_path: Path) -> None:
    r = xl(host, "create", "/nonexistent/x.cfg")
    assert one_line(r, 3) == \
        "Failed to read config file: /nonexistent/x.cfg: No such file or directory"
    f = write_cfg(tmp_path, 'name = "t"\ntype = "pvh"\n')
    assert one_line(xl(host, "create", str(f)), 1).endswith(
        "Neither kernel nor bootloader specified (a PVH domain needs kernel = "
        '"/path/to/kernel")')
    f = write_cfg(tmp_path, GOOD + 'builder = "generic"\n')
    assert one_line(xl(host, "create", str(f)), 1) == \
        f'{f}:4: Contradicting "builder" and "type" options specified.'
    host.assert_clean()


def test_plus_equals_with_numbers(host: Host, tmp_path: Path) -> None:
    """libxlu's xlu_cfg_get_bounded_long: `+=` makes a string, never a number."""
    f = write_cfg(tmp_path, GOOD + "memory = 64\nmemory += 5\n")
    assert one_line(xl(host, "create", "-n", str(f)), 1) == \
        f"{f}:5: can't use += with numbers for parameter `memory'"
    r = xl(host, "create", "-n", "examples/hello.cfg", "vcpus+=1")
    assert one_line(r, 1) == "command line: can't use += with numbers for parameter `vcpus'"
    f = write_cfg(tmp_path, GOOD + 'cmdline = "a"\ncmdline += " b"\nmaxmem += "64"\n')
    assert one_line(xl(host, "create", "-n", str(f)), 1) == \
        f"{f}:6: can't use += with numbers for parameter `maxmem'"
    f = write_cfg(tmp_path, GOOD + 'cmdline = "a"\ncmdline += " b"\n')
    r = xl(host, "create", "-n", str(f))
    assert r.returncode == 0 and json.loads(r.stdout)["b_info"]["cmdline"] == "a b"
    host.assert_clean()


# --------------------------------------------------------------------- xl.cfg keys

def test_unimplemented_keys_warn_once_each(host: Host, tmp_path: Path) -> None:
    f = write_cfg(tmp_path, GOOD + 'vga = "stdvga"\nserial = "pty"\nfrobnicate = 1\n'
                  'vga = "none"\nmemory = 32\non_soft_reset = "destroy"\n')
    r = xl(host, "create", "-n", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        'WARNING: ignoring "vga" option: pyxen does not implement it yet.',
        'WARNING: ignoring "serial" option: pyxen does not implement it yet.',
        'WARNING: ignoring unknown option "frobnicate": not an xl.cfg(5) key.',
        'WARNING: ignoring "on_soft_reset" option: pyxen does not implement it yet.',
    ]
    r = xl(host, "create", "-n", str(f), "hpet=1")  # command-line keys too
    assert r.stderr.splitlines()[-1] == \
        'WARNING: ignoring "hpet" option: pyxen does not implement it yet.'
    # the implemented keys are silent
    assert xl(host, "create", "-n", "examples/net.cfg").stderr == ""
    host.assert_clean()


@needs_vmm
def test_unimplemented_key_warns_on_a_real_create(host: Host, tmp_path: Path) -> None:
    r = xl(host, "create", "examples/idle.cfg", "name='w'", "videoram=8")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        'WARNING: ignoring "videoram" option: pyxen does not implement it yet.']
    assert xl(host, "destroy", "w").returncode == 0
    host.assert_clean()


def test_key_table_covers_xl_cfg() -> None:
    from pyxen.toolstack import xlcfg_keys
    assert not xlcfg_keys.IMPLEMENTED & xlcfg_keys.NOT_YET
    for key in ("name", "type", "kernel", "memory", "vif", "disk", "cpus", "vnuma"):
        assert key in xlcfg_keys.IMPLEMENTED
    for key in ("vga", "pci", "bootloader", "viridian", "usbdev", "vtpm", "tsc_mode",
                "max_grant_frames", "device_model_version", "soundhw", "cpuid"):
        assert key in xlcfg_keys.NOT_YET


# --------------------------------------------------------------------- xl.conf

def test_xl_conf(host: Host, tmp_path: Path) -> None:
    conf = tmp_path / "xl.conf"
    conf.write_text('vif.default.bridge = "br7"\nvif.default.script = "vif-nat"\n'
                    'autoballoon = "off"\n')
    env = {"PYXEN_XL_CONF": str(conf)}
    f = write_cfg(tmp_path, GOOD + 'vif = [ "mac=00:16:3e:00:00:02", "bridge=br1" ]\n')
    r = xl(host, "create", "-n", str(f), env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    vifs = json.loads(r.stdout)["nics"]
    assert [v["bridge"] for v in vifs] == ["br7", "br1"]
    assert all(v["script"] == "vif-nat" for v in vifs)
    r = xl(host, "-N", "network-attach", "Domain-0", env=env)
    assert json.loads(r.stdout)["bridge"] == "br7"
    # without xl.conf: libxl's default bridge (hostd: xenbr0)
    r = xl(host, "create", "-n", str(f), env={"PYXEN_XL_CONF": str(tmp_path / "none")})
    assert r.returncode == 0
    assert r.stderr.splitlines() == [
        f"Failed to read config file: {tmp_path / 'none'}: No such file or directory"]
    assert "bridge" not in json.loads(r.stdout)["nics"][0]
    # bad values: xl's lines, the defaults kept
    conf.write_text('autoballoon = "maybe"\noutput_format = "xml"\n')
    r = xl(host, "create", "-n", str(f), env=env)
    assert r.returncode == 0
    assert r.stderr.splitlines() == ["invalid autoballoon option",
                                     'invalid default output format "xml"']
    conf.write_text('output_format = "sxp"\n')
    r = xl(host, "create", "-n", str(f), env=env)
    assert one_line(r, 1).startswith('output_format="sxp"')
    assert one_line(xl(host, "list", "-l", env=env), 1).startswith('output_format="sxp"')
    conf.write_text('autoballoon = = 1\n')
    assert one_line(xl(host, "dmesg", env=env), 1).startswith(
        f"Failed to parse config file: {conf}:1: config parsing error")
    host.assert_clean()


# --------------------------------------------------------------------- the fast path

def test_fast_path_prints_what_the_click_commands_print(host: Host) -> None:
    slow = {"PYXEN_XL_SLOW": "1"}
    for args in (("info", "xen_version"), ("info", "xen_caps"), ("domid", "Domain-0"),
                 ("list", "nosuch"), ("list", "42"), ("domid", "nosuch"),
                 ("console", "nosuch"), ("info", "a", "b")):
        fast, click_path = xl(host, *args), xl(host, *args, env=slow)
        assert (fast.returncode, fast.stdout, fast.stderr) == \
            (click_path.returncode, click_path.stdout, click_path.stderr), args
    # whole tables: equal but for the times and free memory that move between runs
    for args in (("list",), ("info",), ("list", "Domain-0")):
        fast, click_path = xl(host, *args), xl(host, *args, env=slow)
        assert fast.returncode == click_path.returncode == 0
        strip = re.compile(r"[0-9.]+")
        assert [strip.sub("N", ln) for ln in fast.stdout.splitlines()] == \
            [strip.sub("N", ln) for ln in click_path.stdout.splitlines()], args


def test_fast_path_imports_stay_lean() -> None:
    code = ("import sys; import pyxen.cli.xlmain, pyxen.cli.xlconsole; "
            "print(' '.join(sorted(m for m in ('click', 'rich', 'json', 're', 'typing', "
            "'pathlib', 'socket', 'dataclasses', 'enum') if m in sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True)
    assert r.stdout.strip() == ""


@needs_vmm
def test_fast_console_and_domid(host: Host) -> None:
    r = xl(host, "create", "examples/idle.cfg")
    assert r.returncode == 0, r.stderr
    domid = xl(host, "domid", "idle")
    assert domid.returncode == 0 and domid.stdout.strip().isdigit()
    assert xl(host, "list", domid.stdout.strip()).stdout.splitlines()[1].startswith("idle ")
    assert xl(host, "destroy", "idle").returncode == 0
    host.assert_clean()


# --------------------------------------------------------------------- bash completion

def completion_script() -> Path | None:
    for p in (Path("/usr/share/bash-completion/completions/xl"),
              REPO / ".venv" / "share" / "xl-bash-completion"):
        if p.exists():
            return p
    return None


@pytest.mark.skipif(completion_script() is None or shutil.which("bash") is None,
                    reason="Debian's xl completion (xen-utils-common): run scripts/setup")
def test_debian_bash_completion(tmp_path: Path) -> None:
    """xen-utils-common's completion runs `xl help` and completes the first word."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "xl").write_text(f"#!/bin/sh\nexec {sys.executable} -m pyxen.cli.xlmain \"$@\"\n")
    (bindir / "xl").chmod(0o755)

    def complete(word: str) -> list[str]:
        script = (f'source "{completion_script()}"\n'
                  f'COMP_WORDS=(xl "{word}"); COMP_CWORD=1; _xl\n'
                  'for w in "${COMPREPLY[@]}"; do printf "%s|\\n" "$w"; done\n')
        r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script],
                           env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}",
                                    PYXEN_RUNDIR=str(tmp_path / "run")),
                           capture_output=True, text=True, timeout=60, check=True)
        return [w.removesuffix("|").strip() for w in r.stdout.splitlines()]

    assert complete("cr") == ["create"]
    assert complete("li") == ["list"]
    assert sorted(complete("cpupool-c")) == ["cpupool-cpu-add", "cpupool-cpu-remove",
                                             "cpupool-create"]
    assert complete("sav") == ["save"]
    assert complete("cd-") == []  # not a pyxen command
    everything = complete("")
    assert "create" in everything and "debug-keys" in everything and "domid" in everything
    assert len(everything) == len(xl(None, "help").stdout.splitlines()) - 4
    assert not (tmp_path / "run").exists()  # `xl help` starts no hostd
