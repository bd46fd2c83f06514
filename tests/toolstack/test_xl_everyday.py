"""xl's everyday commands against real guests: domid, domname, rename, sysrq, trigger,
dump-core, console -t/-n, reboot -F; each with xl's output and xl's error lines (one line
on stderr, non-zero status). The test guest (guests/build/hello.elf, mode=idle) answers
PV control and logs each control/sysrq key it reads."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from xlhost import HELLO, Host, needs_vmm

pytestmark = [needs_vmm, pytest.mark.timeout(240)]

VGC_SIZE = 5168  # sizeof(vcpu_guest_context_t), x86_64 (tests/test_abi_layout.py checks it)
RIP_OFF = 520 + 128  # offsetof(vcpu_guest_context_t, user_regs.rip)
CR3_OFF = 4984 + 3 * 8  # ctrlreg[3]
UNKNOWN_NOPE = "nope is an invalid domain identifier (rc=-6)"  # xl's find_domain() error


def cfg(tmp_path: Path, name: str, mode: str = "idle", **extra: str) -> str:
    lines = [f'name = "{name}"', 'type = "pvh"', f'kernel = "{HELLO}"', "memory = 32",
             "vcpus = 1", f'cmdline = "mode={mode}"']
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    f = tmp_path / f"{name}.cfg"
    f.write_text("\n".join(lines) + "\n")
    return str(f)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {r.stderr!r}"
    return lines[0]


def start_idle(host: Host, tmp_path: Path, name: str = "idle", **extra: str) -> int:
    """Create an idle guest and wait until its PV drivers listen (feature-poweroff)."""
    r = host.xl("create", cfg(tmp_path, name, **extra))
    assert r.returncode == 0, r.stderr
    domid = int(host.xl("domid", name, check=True).stdout)
    host.wait_for(lambda: host.xenstore(
        "xenstore-read", f"/local/domain/{domid}/control/feature-poweroff").stdout.strip()
        == "1", f"{name}'s PV control")
    return domid


def dmesg_has(host: Host, text: str) -> bool:
    return any(text in ln for ln in host.xl("dmesg", check=True).stdout.splitlines())


def test_domid_and_domname(host: Host, tmp_path: Path) -> None:
    domid = start_idle(host, tmp_path)
    assert host.xl("domid", "idle", check=True).stdout == f"{domid}\n"
    assert host.xl("domid", "Domain-0", check=True).stdout == "0\n"
    assert host.xl("domname", str(domid), check=True).stdout == "idle\n"
    assert host.xl("domname", "0", check=True).stdout == "Domain-0\n"
    assert one_line_error(host.xl("domid", "nope")) == \
        "Can't get domid of domain name 'nope', maybe this domain does not exist."
    assert one_line_error(host.xl("domname", "77")) == \
        "Can't get domain name of domain id '77', maybe this domain does not exist."
    assert one_line_error(host.xl("domname", "x1")) == "Invalid domain id."


def test_rename_updates_xenstore_and_survives_a_new_hostd(host: Host, tmp_path: Path) -> None:
    a = start_idle(host, tmp_path, "a")
    start_idle(host, tmp_path, "b")
    uuid = host.xl("list", "-v", "a", check=True).stdout.splitlines()[1].split()[6]
    assert host.xl("rename", "a", "c").returncode == 0
    assert list(host.list()) == ["Domain-0", "c", "b"]
    assert host.xl("domid", "c", check=True).stdout.strip() == str(a)
    assert host.xenstore("xenstore-read", f"/local/domain/{a}/name").stdout.strip() == "c"
    assert host.xenstore("xenstore-read", f"/vm/{uuid}/name").stdout.strip() == "c"
    # the guest reads its own name through xenstore: it may
    assert f"r{a}" in host.xenstore("xenstore-ls", "-p", f"/local/domain/{a}").stdout

    assert one_line_error(host.xl("rename", "c", "b")) == 'Domain with name "b" already exists.'
    assert one_line_error(host.xl("rename", "c", "Domain-0")) == \
        'Domain with name "Domain-0" already exists.'
    assert one_line_error(host.xl("rename", "nope", "x")) == \
        UNKNOWN_NOPE
    assert list(host.list()) == ["Domain-0", "c", "b"]

    # a hostd that dies and comes back adopts the domain under its new name
    os.kill(host.hostd_pid() or 0, signal.SIGKILL)
    host.wait_for(lambda: not (host.root / "pyxend.sock").exists()
                  or host.xl("list").returncode == 0, "hostd gone")
    assert list(host.list()) == ["Domain-0", "c", "b"]
    cfg_json = json.loads((host.root / "domains" / str(a) / "config.json").read_text())
    assert cfg_json["name"] == "c"


def test_sysrq_reaches_the_guests_pv_drivers(host: Host, tmp_path: Path) -> None:
    domid = start_idle(host, tmp_path)
    r = host.xl("sysrq", "idle", "h")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r
    host.wait_for(lambda: dmesg_has(host, f"(d{domid}) pyxen hello: sysrq h"), "the guest's sysrq")
    # as Linux's manage.c, the guest cleared the node after reading it
    host.wait_for(lambda: host.xenstore("xenstore-read", f"/local/domain/{domid}/control/sysrq")
                  .stdout == "\n", "control/sysrq cleared")
    assert host.xl("sysrq", str(domid), "s").returncode == 0
    host.wait_for(lambda: dmesg_has(host, f"(d{domid}) pyxen hello: sysrq s"), "second sysrq")
    assert one_line_error(host.xl("sysrq", "idle", "hh")) == "Invalid sysrq."
    assert one_line_error(host.xl("sysrq", "nope", "h")) == \
        UNKNOWN_NOPE
    assert host.list()["idle"]["state"] in ("-b----", "r-----")


def test_triggers_as_xen_applies_them_to_pvh(host: Host, tmp_path: Path) -> None:
    domid = start_idle(host, tmp_path, on_crash="preserve")
    # no emulated ACPI PM block in a PVH domain: Xen accepts the buttons and nothing happens
    for t in ("power", "sleep", "s3resume"):
        r = host.xl("trigger", "idle", t)
        assert r.returncode == 0 and r.stderr == "", (t, r)
    for t in ("reset", "init"):  # XEN_DOMCTL_sendtrigger: -ENOSYS
        assert one_line_error(host.xl("trigger", "idle", t)) == (
            f"libxl: error: libxl_send_trigger: Domain {domid}:Send trigger '{t}' failed: "
            "Function not implemented")
    assert one_line_error(host.xl("trigger", "idle", "nmi", "3")) == (
        f"libxl: error: libxl_send_trigger: Domain {domid}:Send trigger 'nmi' failed: "
        "No such process")
    assert one_line_error(host.xl("trigger", "idle", "bogus")) == 'Invalid trigger "bogus"'
    assert one_line_error(host.xl("trigger", "nope", "nmi")) == \
        UNKNOWN_NOPE
    assert host.list()["idle"]["state"] in ("-b----", "r-----")
    # an NMI reaches vCPU 0 (KVM_NMI): this guest has no NMI handler and reports vector 2
    assert host.xl("trigger", "idle", "nmi", "0").returncode == 0
    host.wait_for(lambda: dmesg_has(host, f"(d{domid}) pyxen hello: unexpected exception 2 "),
                  "the guest's NMI")
    host.wait_for(lambda: host.list()["idle"]["state"] == "---sc-", "crashed (preserved)")


def test_dump_core_is_xens_elf_format_with_the_guests_memory(host: Host,
                                                             tmp_path: Path) -> None:
    domid = start_idle(host, tmp_path)
    core = tmp_path / "idle.core"
    r = host.xl("dump-core", "idle", str(core))
    assert r.returncode == 0 and r.stderr == "", r
    assert host.list()["idle"]["state"] in ("-b----", "r-----")  # xl does not pause it

    ra = subprocess.run(["readelf", "-a", "-W", str(core)], capture_output=True, text=True)
    assert ra.returncode == 0 and "warning" not in ra.stderr.lower(), ra.stderr
    assert "CORE (Core file)" in ra.stdout and "X86-64" in ra.stdout
    assert "There are no program headers in this file." in ra.stdout
    for name in (".shstrtab", ".note.Xen", ".xen_prstatus", ".xen_shared_info", ".xen_pfn",
                 ".xen_pages"):
        assert f" {name} " in ra.stdout, name

    if shutil.which("eu-readelf"):  # elfutils reads it too, notes included
        eu = subprocess.run(["eu-readelf", "-S", "-n", str(core)], capture_output=True,
                            text=True)
        assert eu.returncode == 0 and eu.stderr == "", eu.stderr
        assert ".xen_pages" in eu.stdout and eu.stdout.count("  Xen  ") >= 4, eu.stdout

    with core.open("rb") as f:
        elf = ELFFile(f)
        notes = {n["n_type"]: n for n in elf.get_section_by_name(".note.Xen").iter_notes()}
        assert all(n["n_name"] == "Xen" for n in notes.values())
        assert set(notes) == {0x2000000, 0x2000001, 0x2000002, 0x2000003}
        magic, nr_vcpus, nr_pages, page_size = struct.unpack(
            "<4Q", notes[0x2000001]["n_descdata"][:32])
        assert (magic, nr_vcpus, page_size) == (0xF00FEBEE, 1, 4096)
        major, minor = struct.unpack("<2Q", notes[0x2000002]["n_descdata"][:16])
        assert (major, minor) == (4, 17)
        assert struct.unpack("<Q", notes[0x2000003]["n_descdata"][:8]) == (1,)

        pr = elf.get_section_by_name(".xen_prstatus")
        assert pr["sh_entsize"] == VGC_SIZE and pr["sh_size"] == VGC_SIZE * nr_vcpus
        ctx = pr.data()
        (rip,) = struct.unpack_from("<Q", ctx, RIP_OFF)
        (cr3,) = struct.unpack_from("<Q", ctx, CR3_OFF)
        assert cr3 != 0 and rip != 0

        pfns = elf.get_section_by_name(".xen_pfn").data()
        pfn_list = list(struct.unpack(f"<{len(pfns) // 8}Q", pfns))
        assert len(pfn_list) == nr_pages and pfn_list == sorted(set(pfn_list))
        pages = elf.get_section_by_name(".xen_pages")
        assert pages["sh_size"] == nr_pages * 4096 and pages["sh_offset"] % 4096 == 0
        # the guest's RAM: 32 MiB less the page its shared info displaced
        assert nr_pages == int(host.list()["idle"]["mem"]) * 256 or nr_pages == 32 * 256 - 1

        # a known pattern: the guest kernel's code, loaded from hello.elf at its paddr
        with HELLO.open("rb") as k:
            kelf = ELFFile(k)
            seg = next(s for s in kelf.iter_segments()
                       if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1 and s["p_filesz"] > 4096)
            paddr, code = seg["p_paddr"], seg.data()[:4096 * 4]
        first = paddr >> 12
        assert paddr % 4096 == 0, hex(paddr)
        for k in range(len(code) // 4096):
            idx = pfn_list.index(first + k)
            f.seek(pages["sh_offset"] + idx * 4096)
            assert f.read(4096) == code[k * 4096:(k + 1) * 4096], f"page {first + k:#x}"
    assert dmesg_has(host, f"Domain {domid} core dumped to {core}")

    # errors: one line, nothing written
    bad = tmp_path / "no" / "such" / "dir" / "core"
    err = one_line_error(host.xl("dump-core", "idle", str(bad)))
    assert err.startswith("core dump failed: ") and "No such file or directory" in err
    assert not bad.parent.exists()
    assert one_line_error(host.xl("dump-core", "nope", str(tmp_path / "x"))) == \
        UNKNOWN_NOPE
    assert not (tmp_path / "x").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if "core" in p.name) == ["idle.core"]


def test_console_types_and_reboot_force(host: Host, tmp_path: Path) -> None:
    domid = start_idle(host, tmp_path)
    assert one_line_error(host.xl("console", "-t", "serial", "idle")) == \
        f"Unable to attach console: domain {domid} has no serial console 0"
    assert one_line_error(host.xl("console", "-n", "1", "idle")) == \
        f"Unable to attach console: domain {domid} has no pv console 1"
    assert one_line_error(host.xl("console", "-t", "pv", "nope")) == \
        UNKNOWN_NOPE
    assert host.xl("console", "-t", "bogus", "idle").returncode != 0
    # -t pv -n 0: the PV console, attached until the domain goes
    p = subprocess.Popen([*host_xl(host), "console", "-t", "pv", "-n", "0", "idle"],
                         cwd=host.workdir, env=host.env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # attached once the console replays what the guest printed before (its banner)
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], 60)
        assert ready, "xl console -t pv -n 0 printed nothing"
        first = p.stdout.readline()
        assert "pyxen hello" in first, first
        # reboot -F of a PVH guest: PV control is always there (libxl), -F is not consulted
        r = host.xl("reboot", "-F", "idle")
        assert r.returncode == 0 and r.stderr == f"Rebooting domain {domid}\n", r
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "shutdown requested: reboot" in out
    host.wait_for(lambda: "idle" in host.list() and host.list()["idle"]["id"] != str(domid),
                  "the restarted domain")


def host_xl(host: Host) -> list[str]:
    import sys
    return [sys.executable, "-m", "pyxen.cli.xl"]


def test_reboot_force_without_pv_drivers_is_libxls_pvh_answer(host: Host, tmp_path: Path,
                                                              monkeypatch) -> None:  # noqa: ANN001
    """libxl asks only HVM guests whether they run PV drivers: for a PVH guest -F never
    falls back to the ACPI reset trigger; the request is written and the guest (mode=block:
    no PV drivers) never acknowledges it; the domain is left as it was."""
    monkeypatch.setenv("PYXEN_PVCONTROL_TIMEOUT", "2")  # hostd inherits it from xl
    assert host.xl("create", cfg(tmp_path, "blk", "block")).returncode == 0
    domid = int(host.xl("domid", "blk", check=True).stdout)
    r = host.xl("reboot", "-F", "blk")
    assert r.returncode == 1, r
    assert r.stderr.splitlines() == [f"Rebooting domain {domid}",
                                     "guest didn't acknowledge control request (reboot) "
                                     "within 2 s"]
    assert host.xenstore("xenstore-read", f"/local/domain/{domid}/control/shutdown") \
        .stdout.strip() == "reboot"
    assert host.list()["blk"]["id"] == str(domid)
    assert one_line_error(host.xl("uptime", "nope")) == \
        UNKNOWN_NOPE
