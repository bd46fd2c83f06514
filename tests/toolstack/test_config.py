"""xl.cfg keys -> DomainConfig, with xl's and libxl's defaults (pure logic: unit tests)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from pyxen.toolstack.config import ConfigError, DomainConfig, from_xlconfig, load
from pyxen.toolstack.xlcfg import XlCfgError, parse

pytestmark = pytest.mark.timeout(60)

BASE = 'name="d"\ntype="pvh"\nkernel="/boot/k"\n'


def conf(text: str, cwd: Path = Path("/work")) -> DomainConfig:
    return from_xlconfig(parse(text, "t.cfg"), cwd)


def test_defaults_follow_libxl() -> None:
    c = conf(BASE)
    assert (c.memory, c.maxmem, c.vcpus, c.maxvcpus) == (32, 32, 1, 1)
    assert (c.on_poweroff, c.on_reboot, c.on_crash) == ("destroy", "restart", "destroy")
    assert c.ramdisk is None and c.cmdline == ""
    uuid.UUID(c.uuid)


def test_maxmem_and_maxvcpus_default_to_memory_and_vcpus() -> None:
    c = conf(BASE + "memory=64\nvcpus=3\n")
    assert (c.memory, c.maxmem, c.vcpus, c.maxvcpus) == (64, 64, 3, 3)
    c = conf(BASE + "memory=64\nmaxmem=128\nvcpus=2\nmaxvcpus=4\n")
    assert (c.maxmem, c.maxvcpus) == (128, 4)


@pytest.mark.parametrize("extra, line, fragment", [
    ("memory=64\nmaxmem=32\n", 5, "maxmem=32 must be equal to or greater than memory=64"),
    ("vcpus=4\nmaxvcpus=2\n", 5, "maxvcpus=2 must be equal to or greater than vcpus=4"),
    ("memory=0\n", 4, "must be at least 1"),
    ("memory='lots'\n", 4, "parameter `memory' is not a valid number"),
    ('uuid="not-a-uuid"\n', 4, "Failed to parse UUID: not-a-uuid"),
    ('on_poweroff="explode"\n', 4, 'Unknown on_poweroff action "explode" specified'),
    ('on_crash="coredump-destroy"\n', 4, "not supported by pyxen"),
    ('name="a/b"\n', 4, "invalid domain name"),
])
def test_bad_values_name_their_line(extra: str, line: int, fragment: str) -> None:
    with pytest.raises(XlCfgError) as e:
        conf(BASE + extra)
    assert str(e.value).startswith(f"t.cfg:{line}: ")
    assert fragment in str(e.value)


def test_name_is_required() -> None:
    with pytest.raises(XlCfgError, match=r"^t.cfg: Domain name must be specified.$"):
        conf('type="pvh"\nkernel="/k"\n')


@pytest.mark.parametrize("text", ['type="pv"\n', 'type="hvm"\n', 'builder="hvm"\n'])
def test_pv_and_hvm_are_refused_naming_pvh(text: str) -> None:
    with pytest.raises(XlCfgError) as e:
        conf('name="d"\nkernel="/k"\n' + text)
    assert "not supported by pyxen" in str(e.value) and 'type="pvh"' in str(e.value)
    assert str(e.value).startswith("t.cfg:3: ")


def test_no_type_means_pv_as_in_xen() -> None:
    with pytest.raises(XlCfgError, match='"pv".*add type = "pvh"'):
        conf('name="d"\nkernel="/k"\n')


def test_unknown_type() -> None:
    with pytest.raises(XlCfgError, match=r"^t.cfg:2: Invalid domain type pvx.$"):
        conf('name="d"\ntype="pvx"\n')


def test_legacy_pvh_spellings() -> None:
    assert conf('name="d"\nkernel="/k"\nbuilder="hvm"\npvh=1\n').type == "pvh"
    assert conf('name="d"\nkernel="/k"\npvh=1\n').type == "pvh"
    with pytest.raises(XlCfgError, match="Contradicting pvh and type options"):
        conf('name="d"\nkernel="/k"\ntype="pvh"\npvh=0\n')


def test_cmdline_root_extra_as_xl_combines_them() -> None:
    assert conf(BASE + 'root="/dev/xvda1"\nextra="quiet"\n').cmdline == "root=/dev/xvda1 quiet"
    assert conf(BASE + 'extra="quiet"\n').cmdline == "quiet"
    assert conf(BASE + 'cmdline="c"\nroot="r"\nextra="e"\n').cmdline == "c"


def test_unknown_keys_are_ignored_as_xl_does() -> None:
    assert conf(BASE + 'vif=["bridge=xenbr0"]\nfrobnicate=1\n').name == "d"


def test_kernel_relative_to_xl_working_directory() -> None:
    c = conf('name="d"\ntype="pvh"\nkernel="guests/k.elf"\nramdisk="r.img"\n', Path("/srv"))
    assert (c.kernel, c.ramdisk) == ("/srv/guests/k.elf", "/srv/r.img")


def test_kernel_required() -> None:
    with pytest.raises(XlCfgError, match="Neither kernel nor bootloader specified"):
        conf('name="d"\ntype="pvh"\n')


def test_uuid_kept_and_normalised() -> None:
    u = "5F1D3C1E-9B1A-4C43-A0B1-6C0B3A8D2E11"
    assert conf(BASE + f'uuid="{u}"\n').uuid == u.lower()


def test_load_applies_overrides_and_json_roundtrip(tmp_path: Path) -> None:
    f = tmp_path / "x.cfg"
    f.write_text(BASE + "memory=32\n")
    c = load(str(f), ["memory=48", "name=web1"])
    assert (c.name, c.memory, c.maxmem) == ("web1", 48, 48)
    data = json.loads(c.dumps())
    assert set(data) >= {"name", "uuid", "type", "memory", "maxmem", "vcpus", "maxvcpus",
                         "kernel", "ramdisk", "cmdline", "on_poweroff", "on_reboot", "on_crash"}
    assert DomainConfig.from_json(data) == c


def test_from_json_revalidates() -> None:
    data = conf(BASE).to_json()
    with pytest.raises(ConfigError, match="maxmem"):
        DomainConfig.from_json({**data, "memory": 64, "maxmem": 32})
    with pytest.raises(ConfigError, match="absolute"):
        DomainConfig.from_json({**data, "kernel": "rel/k"})


def test_missing_file() -> None:
    with pytest.raises(XlCfgError, match=r"^/nonexistent.cfg: unable to open configuration file"):
        load("/nonexistent.cfg")


def test_check_files(tmp_path: Path) -> None:
    c = conf(f'name="d"\ntype="pvh"\nkernel="{tmp_path}/none.elf"\n')
    with pytest.raises(ConfigError, match=r"failed to open kernel '.*none.elf': No such file"):
        c.check_files()
