"""Bad inputs: one actionable line, exit status 2, nothing left behind but vmm.log."""

from __future__ import annotations

import pytest
from vmm_helpers import spawn_vmm


def config(kernel: str, **kw) -> dict:
    cfg = {"name": "bad", "type": "pvh", "memory": 32, "vcpus": 1, "kernel": kernel,
           "ramdisk": None, "cmdline": ""}
    cfg.update(kw)
    return cfg


def check_error(rundir, cfg: dict, *needles: str, **env: str) -> str:
    proc, line, ddir = spawn_vmm(rundir, 11, cfg, **env)
    assert proc.wait(30) == 2
    assert line["event"] == "error"
    msg = line["message"]
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    assert sorted(p.name for p in ddir.iterdir()) == ["config.json", "vmm.log"]
    return msg


@pytest.mark.timeout(60)
def test_missing_kernel(rundir, tmp_path) -> None:
    check_error(rundir, config(str(tmp_path / "nope.elf")), "nope.elf", "not found")


@pytest.mark.timeout(60)
def test_not_an_elf(rundir, tmp_path) -> None:
    k = tmp_path / "kernel.txt"
    k.write_text("just text\n")
    check_error(rundir, config(str(k)), "kernel.txt", "not an ELF file")


@pytest.mark.timeout(60)
def test_no_pvh_note(rundir, guests) -> None:
    check_error(rundir, config(str(guests / "nopvh.elf")), "XEN_ELFNOTE_PHYS32_ENTRY",
                "nopvh.elf")


@pytest.mark.timeout(60)
def test_memory_too_large(rundir, guests) -> None:
    check_error(rundir, config(str(guests / "hello.elf"), memory=64 * 1024 * 1024),
                "memory = 67108864 MiB", "lower 'memory'")


@pytest.mark.timeout(60)
def test_missing_ramdisk(rundir, guests, tmp_path) -> None:
    check_error(rundir, config(str(guests / "hello.elf"), ramdisk=str(tmp_path / "rd")),
                "ramdisk", "not found")


@pytest.mark.timeout(60)
def test_no_kvm_device(rundir, guests, tmp_path) -> None:
    check_error(rundir, config(str(guests / "hello.elf")), "does not exist", "modprobe",
                PYXEN_KVM_DEVICE=str(tmp_path / "kvm"))


@pytest.mark.timeout(60)
def test_bad_config(rundir, guests) -> None:
    check_error(rundir, config(str(guests / "hello.elf"), vcpus=0), "vcpus = 0")
