"""`xl create` (and destroy, pause, unpause, shutdown, reboot) on xl's lean path (cli/xl_create.py,
cli/xlmain.py's FAST table) print the same bytes and exit with the same status as the
click commands (PYXEN_XL_SLOW=1), for good and bad configurations; `xl create -c` on the
lean path attaches the console and Ctrl-] detaches it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_xl_domains import _read_until, pv_ready
from xlhost import HELLO, REPO, Host, needs_vmm, needs_xenstored

from pyxen.cli.xl_create import parse_options

pytestmark = pytest.mark.timeout(240)

SLOW = {"PYXEN_XL_SLOW": "1"}
GOOD = f'name = "t"\ntype = "pvh"\nkernel = "{HELLO}"\n'
UUID = re.compile(r'"uuid": "[0-9a-f-]{36}"')


def xl(host: Host, *args: str, env: dict[str, str] | None = None,
       cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """The installed entry point (.venv/bin/xl runs pyxen.cli.xlmain)."""
    return subprocess.run([sys.executable, "-m", "pyxen.cli.xlmain", *args],
                          env=dict(host.env, **(env or {})), cwd=cwd, capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL)


def same(host: Host, *args: str, env: dict[str, str] | None = None) -> \
        subprocess.CompletedProcess[str]:
    lean, slow = xl(host, *args, env=env), xl(host, *args, env=dict(env or {}, **SLOW))
    # a generated uuid differs between two runs; everything else is the same bytes
    assert (lean.returncode, UUID.sub("U", lean.stdout), lean.stderr) == \
        (slow.returncode, UUID.sub("U", slow.stdout), slow.stderr), args
    return lean


def test_option_parser_reads_what_click_reads() -> None:
    assert parse_options(["-c", "a.cfg", "x=1"]) == (
        {"console": True, "dryrun": False, "paused": False, "quiet": False}, None,
        ["a.cfg", "x=1"])
    flags, cfgfile, rest = parse_options(["a=1", "-cpq", "-fb.cfg", "-n"])
    assert all(flags.values()) and cfgfile == "b.cfg" and rest == ["a=1"]
    assert parse_options(["-f", "x.cfg", "-p"])[1:] == ("x.cfg", [])
    for hand_over in (["--bogus"], ["-h"], ["-x", "a"], ["-f"], ["-f", "-c"], ["--"], ["-"]):
        assert parse_options(hand_over) is None, hand_over


def test_lean_create_prints_what_click_prints(host: Host, tmp_path: Path) -> None:
    count = iter(range(1000))

    def cfg(body: str) -> str:
        f = tmp_path / f"t{next(count)}.cfg"
        f.write_text(body)
        return str(f)

    cases = [
        ("-n", cfg(GOOD)),
        ("-n", "-f", cfg(GOOD), "memory=64", "vcpus=2"),
        ("-nq", f"-f{cfg(GOOD)}", "name='other'"),
        ("-n", cfg(GOOD + 'vga = "stdvga"\nfrobnicate = 1\n'), "hpet=1"),  # warnings
        ("-n", cfg(GOOD + "memory = 64\nmemory += 5\n")),  # += with a number
        ("-n", "examples/hello.cfg", "vcpus+=1"),
        ("-n", cfg(GOOD + 'cmdline = "a"\ncmdline += " b"\n')),
        ("-n", "/nonexistent/x.cfg"),  # missing file: status 3
        (cfg(GOOD.replace("kernel", "#kernel")),),  # no kernel
        (cfg(GOOD + 'builder = "generic"\n'),),
        (cfg(GOOD + "memory = lots\n"),),  # bad values
        (cfg(GOOD + "vcpus = 0\n"),),
        (cfg(GOOD + 'on_crash = "explode"\n'),),
        (cfg(GOOD + 'type = "hvm"\n'),),
        (cfg(GOOD + "name = \n"),),  # a parse error
        ("-n", cfg(GOOD), "memory=abc"),
        ("-n", cfg(GOOD), "nonsense"),  # two config files
        ("-n", "name='cmd'", "type='pvh'", f"kernel='{HELLO}'"),  # no file at all
        (), ("-n",),
        ("-n", cfg(GOOD + f'disk = [ "{tmp_path}/nosuch.img,raw,xvda,rw" ]\n')),
        (cfg(GOOD + f'disk = [ "{tmp_path}/nosuch.img,raw,xvda,rw" ]\n'),),
        (cfg(GOOD.replace(str(HELLO), "/nonexistent/k.elf")),),  # missing kernel
        ("--bogus", "x.cfg"), ("-h",), ("-f",), ("-z", cfg(GOOD)),  # the click command's
        ("-n", cfg(GOOD + 'vif = [ "mac=00:16:3e:00:00:02" ]\n')),
    ]
    for args in cases:
        same(host, "create", *args)
    for args in (("-N", "create", cfg(GOOD)), ("-v", "create", "-n", cfg(GOOD)),
                 ("-T", "create", cfg(GOOD + "vcpus = 0\n"))):
        r = same(host, *args) if args[0] != "-T" else None
        if r is None:  # -T: the timestamps may fall on different seconds
            lean, slow = xl(host, *args), xl(host, *args, env=SLOW)
            strip = re.compile(r"^\S+ \S+ \S+ \[\d+\] ", re.M)
            assert lean.returncode == slow.returncode == 1
            assert strip.sub("", lean.stderr) == strip.sub("", slow.stderr) != ""
    # xl.conf: vif.default.* on the lean path too, and its warnings
    conf = tmp_path / "xl.conf"
    conf.write_text('vif.default.bridge = "br7"\nautoballoon = "maybe"\n')
    f = cfg(GOOD + 'vif = [ "mac=00:16:3e:00:00:02", "bridge=br1" ]\n')
    r = same(host, "create", "-n", f, env={"PYXEN_XL_CONF": str(conf)})
    assert [v.get("bridge") for v in json.loads(r.stdout)["nics"]] == ["br7", "br1"]
    assert r.stderr == "invalid autoballoon option\n"
    same(host, "create", "-n", f, env={"PYXEN_XL_CONF": str(tmp_path / "none")})
    conf.write_text('output_format = "sxp"\n')
    same(host, "create", "-n", f, env={"PYXEN_XL_CONF": str(conf)})
    host.assert_clean()


@needs_vmm
def test_lean_create_destroy_pause_unpause(host: Host, tmp_path: Path) -> None:
    idle = tmp_path / "idle.cfg"
    idle.write_text(GOOD.replace('"t"', '"lean"') + 'cmdline = "mode=idle"\n')
    for env in ({}, SLOW):
        r = xl(host, "create", "-p", str(idle), env=env)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
        assert host.list()["lean"]["state"].startswith("--p")
        for cmd in ("unpause", "pause", "unpause"):
            assert (xl(host, cmd, "lean", env=env).returncode) == 0
        # an existing name: hostd's error, the same line from both paths
        r = xl(host, "create", str(idle), env=env)
        assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
        assert xl(host, "destroy", "lean", env=env).returncode == 0
        host.assert_clean()
    for cmd in ("destroy", "pause", "unpause"):
        same(host, cmd, "nosuch")
        same(host, cmd)  # too few arguments: the click command's usage
        same(host, cmd, "a", "b")
    same(host, "destroy", "0")
    same(host, "destroy", "Domain-0")
    host.assert_clean()


@needs_vmm
@needs_xenstored
def test_lean_shutdown_and_reboot(host: Host, tmp_path: Path) -> None:
    for cmd in ("shutdown", "reboot"):
        same(host, cmd, "nosuch")
        same(host, cmd)
        same(host, cmd, "a", "b")
    idle = tmp_path / "idle.cfg"
    idle.write_text(GOOD.replace('"t"', '"sd"') + 'cmdline = "mode=idle"\n'
                    'on_reboot = "restart"\n')
    for env in ({}, SLOW):
        assert xl(host, "create", str(idle), env=env).returncode == 0
        domid = pv_ready(host, "sd")
        r = xl(host, "reboot", "sd", env=env)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", f"Rebooting domain {domid}\n")
        host.wait_for(lambda d=domid: host.list().get("sd", {}).get("id") not in (None, str(d)),
                      "the restarted domain")
        domid = pv_ready(host, "sd")
        r = xl(host, "shutdown", "sd", env=env)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", f"Shutting down domain {domid}\n")
        host.wait_for(lambda: "sd" not in host.list(), "on_poweroff=destroy")
    host.assert_clean()


@needs_vmm
def test_lean_create_c_attaches_and_detaches(host: Host, tmp_path: Path) -> None:
    hello = tmp_path / "hello.cfg"
    hello.write_text(GOOD.replace('"t"', '"hi"') + 'cmdline = "mode=hello"\n'
                     'on_poweroff = "destroy"\n')
    r = xl(host, "create", "-c", str(hello))
    assert r.returncode == 0, r.stderr
    assert "pyxen hello" in r.stdout and "powering off" in r.stdout
    host.assert_clean()
    # on a tty: interactive, and Ctrl-] detaches, leaving the domain running
    import termios
    echo = tmp_path / "echo.cfg"
    echo.write_text(GOOD.replace('"t"', '"tty"') + 'cmdline = "mode=echo"\n')
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    p = subprocess.Popen([sys.executable, "-m", "pyxen.cli.xlmain", "create", "-c",
                          str(echo)], cwd=REPO, env=host.env, stdin=slave, stdout=slave,
                         stderr=subprocess.PIPE)
    try:
        _read_until(master, b"pyxen echo: ready")
        os.write(master, b"hi")
        _read_until(master, b"pyxen echo: hi")
        os.write(master, b"\x1d")  # Ctrl-]
        assert p.wait(timeout=60) == 0, p.stderr.read() if p.stderr else ""
        assert termios.tcgetattr(slave) == before
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
        os.close(slave)
    assert host.list()["tty"]["state"] in ("r-----", "-b----")
    assert xl(host, "destroy", "tty").returncode == 0
    host.assert_clean()


def test_lean_create_imports_stay_lean(tmp_path: Path) -> None:
    """The whole config path of `xl create` (parsed, checked, up to the kernel's open)
    without click, rich, json, typing, pathlib or uuid (docs/xl.md)."""
    f = tmp_path / "t.cfg"
    f.write_text(GOOD.replace(str(HELLO), "/nonexistent/k.elf")
                 + 'vif = [ "bridge=br0" ]\ndisk = [ "/dev/null,raw,xvda,r" ]\n')
    code = ("import sys; from pyxen.cli import xlmain; rc = xlmain.main(['create', "
            f"{str(f)!r}]); print(rc, ' '.join(sorted(m for m in ('click', 'rich', 'json', "
            "'typing', 'pathlib', 'uuid') if m in sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, check=True,
                       env=dict(os.environ, PYXEN_RUNDIR="/nonexistent/pyxen-must-not-start"))
    assert r.stderr == "failed to open kernel '/nonexistent/k.elf': No such file or directory\n"
    assert r.stdout.strip() == "1"
