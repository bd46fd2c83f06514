"""xl against a real hostd (its own $PYXEN_RUNDIR per test): dry runs, host commands, and
bad input, which must give one line on stderr, a non-zero status and leave nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from xlhost import HELLO, NOPVH, REPO, Host, needs_vmm, processes_of

pytestmark = pytest.mark.timeout(120)

LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"


def write_cfg(tmp_path: Path, body: str, name: str = "t.cfg") -> Path:
    f = tmp_path / name
    f.write_text(body)
    return f


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {r.stderr!r}"
    assert lines[0].strip()
    return lines[0]


def test_create_dry_run_prints_json(host: Host) -> None:
    r = host.xl("create", "-n", "examples/hello.cfg", "vcpus=1", "name='other'")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)  # libxl's domain_config, as Xen's xl prints it
    assert cfg["c_info"]["name"] == "other" and cfg["c_info"]["type"] == "pvh"
    assert cfg["b_info"]["avail_vcpus"] == [0] and cfg["b_info"]["max_vcpus"] == 1
    assert cfg["b_info"]["kernel"] == str(HELLO)
    assert cfg["b_info"]["target_memkb"] == cfg["b_info"]["max_memkb"] == 32 * 1024
    assert cfg["on_poweroff"] == "destroy" and cfg["b_info"]["type.pvh"] == {}
    # a dry run creates nothing, not even a host daemon
    assert not (host.root / "pyxend.sock").exists()


def test_hostd_starts_on_first_use_and_lists_domain0(host: Host) -> None:
    r = host.xl("list", check=True)
    lines = r.stdout.splitlines()
    assert lines[0] == LIST_HEADER
    assert lines[1].startswith("Domain-0" + " " * 32)
    assert lines[1][40:].split()[0] == "0" and lines[1][40:].split()[3] == "r-----"
    assert host.hostd_pid() is not None
    assert (host.root / "hostd.log").exists()


def test_concurrent_first_use_starts_one_hostd(host: Host) -> None:
    procs = [subprocess.Popen([sys.executable, "-m", "pyxen.cli.xl", "list"], cwd=REPO,
                              env=host.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
        assert out.startswith(LIST_HEADER)
    hostds = [c for _, c in processes_of(host.root) if "pyxen.toolstack.hostd" in c]
    assert len(hostds) == 1, hostds


def test_info_has_xens_keys(host: Host) -> None:
    r = host.xl("info", check=True)
    keys = {line.split(":", 1)[0].rstrip(): line.split(":", 1)[1].strip()
            for line in r.stdout.splitlines()}
    for k in ("host", "release", "machine", "nr_cpus", "total_memory", "free_memory",
              "xen_major", "xen_minor", "xen_extra", "xen_version", "xen_caps"):
        assert k in keys, k
    assert keys["xen_version"] == f"{keys['xen_major']}.{keys['xen_minor']}{keys['xen_extra']}"
    assert int(keys["free_memory"]) <= int(keys["total_memory"])
    assert r.stdout.splitlines()[0].startswith("host                   : ")
    assert host.xl("info", "xen_version", check=True).stdout.strip() == keys["xen_version"]


def test_dmesg_has_the_hypervisor_log(host: Host) -> None:
    r = host.xl("dmesg", check=True)
    before = r.stdout.splitlines()
    assert any(ln.startswith("(XEN) ") and "hostd started" in ln for ln in before)
    host.xl("dmesg", "-c", check=True)
    # cleared: none of what was read is left (hostd may log anew meanwhile: the VMM
    # template is started in the background and reports when it is up)
    after = host.xl("dmesg", check=True).stdout.splitlines()
    assert not set(after) & set(before), after


def test_list_long_is_json(host: Host) -> None:
    r = host.xl("list", "-l", check=True)
    assert json.loads(r.stdout) == []


# --- bad input: one line, non-zero, nothing left behind -------------------------------

def test_broken_cfg_reports_file_and_line(host: Host, tmp_path: Path) -> None:
    f = write_cfg(tmp_path, 'name = "x"\ntype = "pvh"\nmemory = = 32\n', "hello.cfg")
    line = one_line_error(host.xl("create", str(f)))
    assert line.startswith(f"{f}:3: config parsing error near `='")
    host.assert_clean()


def test_missing_cfg_file(host: Host) -> None:
    line = one_line_error(host.xl("create", "/nonexistent/x.cfg"))
    assert line == "Failed to read config file: /nonexistent/x.cfg: No such file or directory"
    host.assert_clean()


def test_missing_kernel(host: Host, tmp_path: Path) -> None:
    f = write_cfg(tmp_path, 'name="x"\ntype="pvh"\nkernel="/nonexistent/k.elf"\n')
    line = one_line_error(host.xl("create", str(f)))
    assert "/nonexistent/k.elf" in line and "No such file" in line
    host.assert_clean()


@pytest.mark.parametrize("typ, fragment", [
    ('type="pv"', 'domain type "pv" is not supported by pyxen'),
    ('type="hvm"', 'domain type "hvm" is not supported by pyxen'),
    ('type="xyz"', "Invalid domain type xyz."),
])
def test_unsupported_or_unknown_type(host: Host, tmp_path: Path, typ: str,
                                     fragment: str) -> None:
    f = write_cfg(tmp_path, f'name="x"\n{typ}\nkernel="{HELLO}"\n')
    line = one_line_error(host.xl("create", str(f)))
    assert line.startswith(f"{f}:2: ") and fragment in line
    host.assert_clean()


def test_memory_larger_than_host(host: Host, tmp_path: Path) -> None:
    kernel = tmp_path / "k.elf"
    kernel.write_bytes(b"\x7fELF")
    f = write_cfg(tmp_path, f'name="big"\ntype="pvh"\nkernel="{kernel}"\nmemory=1073741824\n')
    line = one_line_error(host.xl("create", str(f)))
    assert "failed to free memory for the domain" in line and "1073741824 MiB" in line
    host.assert_clean()


@pytest.mark.parametrize("arg, fragment", [
    ("memory=[", "command line: `memory=['"),
    ("memory=lots", "parameter `memory' is not a valid number"),
    ("maxmem=1", "must be equal to or greater than memory"),
    ("Memory=5", "bad key=value argument"),
])
def test_bad_key_value(host: Host, arg: str, fragment: str) -> None:
    line = one_line_error(host.xl("create", "examples/hello.cfg", arg))
    assert fragment in line
    host.assert_clean()


@pytest.mark.parametrize("cmd", [["destroy"], ["pause"], ["unpause"], ["shutdown"],
                                 ["reboot"], ["console"]])
def test_unknown_domain(host: Host, cmd: list[str]) -> None:
    line = one_line_error(host.xl(*cmd, "nosuch"))
    assert line == "nosuch is an invalid domain identifier (rc=-6)"
    line = one_line_error(host.xl(*cmd, "42"))
    assert line == "42 is an invalid domain identifier (rc=-6)"
    host.assert_clean()


def test_list_unknown_domain(host: Host) -> None:
    # xl's main_list: find_domain() refuses a name; a domid goes on to domain_info()
    assert one_line_error(host.xl("list", "nosuch")) == \
        "nosuch is an invalid domain identifier (rc=-6)"
    assert one_line_error(host.xl("list", "42")) == "Error: Domain '42' does not exist."


def test_usage_errors_are_one_line(host: Host) -> None:
    one_line_error(host.xl("create", "--bogus", "examples/hello.cfg"))
    one_line_error(host.xl("frobnicate"))
    one_line_error(host.xl("destroy"))
    one_line_error(host.xl("create"))
    assert one_line_error(host.xl("destroy", "0")) == (
        "Not destroying domain 0; use -f to force. This can only be done when using a "
        "disaggregated hardware domain and toolstack.")


@needs_vmm
def test_not_an_elf(host: Host, tmp_path: Path) -> None:
    kernel = tmp_path / "notelf.bin"
    kernel.write_bytes(b"this is not an ELF file\n" * 10)
    line = one_line_error(host.xl("create", "examples/hello.cfg", f"kernel='{kernel}'"))
    assert "ELF" in line
    host.assert_clean()


@needs_vmm
def test_no_pvh_note(host: Host) -> None:
    assert NOPVH.exists()
    line = one_line_error(host.xl("create", "examples/hello.cfg", f"kernel='{NOPVH}'"))
    assert "PVH" in line or "PHYS32_ENTRY" in line
    host.assert_clean()
