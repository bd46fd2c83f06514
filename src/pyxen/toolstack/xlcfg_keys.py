"""The keys of xl.cfg(5) (Xen 4.17) and which of them pyxen implements.

xl reads the keys it knows and ignores the rest; pyxen implements a part of xl.cfg(5), and
a key it does not act on must not pass in silence: ``xl create`` prints one warning line
per such key (xl's ``WARNING: ...`` style), and one for a key that xl.cfg(5) does not have
at all (a typo, most often). Add a key to IMPLEMENTED when toolstack/config.py (or a module
it calls) acts on it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # `xl create` imports this module: collections costs it milliseconds
    from collections.abc import Iterable

# Acted on by pyxen (docs/xl.md, "xl.cfg"). pvh and builder are the pre-4.10 spellings
# of type=, which xl still reads.
IMPLEMENTED = frozenset("""
    name type builder pvh kernel ramdisk cmdline root extra memory maxmem vcpus
    maxvcpus vnuma uuid vif disk on_poweroff on_reboot on_crash on_watchdog cpus
    cpus_soft cpu_weight cap pool
""".split())

# Every other top-level key of xl.cfg(5), plus the deprecated ones xl still recognises
# (device_model, vncviewer, vif2): pyxen does not act on them yet.
NOT_YET = frozenset("""
    acpi acpi_firmware acpi_laptop_slate acpi_s3 acpi_s4 altp2m altp2mhvm apic bios
    bios_path_override boot bootloader bootloader_args channel cpuid device_model
    device_model_args device_model_args_hvm device_model_args_pv
    device_model_override device_model_stubdomain_override
    device_model_stubdomain_seclabel device_model_user device_model_version
    device_tree dm_restrict driver_domain dtdev e820_host firmware gfx_passthru
    gic_version hap hdtype hpet init_seclabel iomem ioports irqs keymap localtime
    max_event_channels max_grant_frames max_grant_version max_maptrack_frames
    mca_caps mmio_hole ms_vm_genid msr_relaxed nestedhvm nographic nomigrate nx
    on_soft_reset oos opengl p9 pae passthrough pci pci_msitranslate pci_permissive
    pci_power_mgmt pci_seize pvcalls pvshim pvshim_cmdline pvshim_extra pvshim_path
    rdm rdm_mem_boundary rtc_timeoffset sdl seclabel serial shadow_memory
    smbios_firmware soundhw spice spice_clipboard_sharing spice_image_compression
    spice_streaming_video spiceagent_mouse spicedisable_ticketing spicehost
    spicepasswd spiceport spicetls_port spiceusbredirection spicevdagent stdvga
    stubdomain_cmdline stubdomain_kernel stubdomain_memory stubdomain_ramdisk tee
    timer_mode tsc_mode usb usbctrl usbdev usbdevice usbversion vdispl vendor_device
    vfb vga videoram vif2 viridian vkb vkb_device vmtrace_buf_kb vnc vncdisplay
    vnclisten vncpasswd vncunused vncviewer vpmu vpt_align vsnd vtpm vuart
    xen_platform_pci xend_suspend_evtchn_compat
""".split())

XL_CFG_KEYS = IMPLEMENTED | NOT_YET


def warnings(keys: Iterable[str]) -> list[str]:
    """One line per key pyxen ignores, in the order given (each key once)."""
    out = []
    seen: set[str] = set()
    for key in keys:
        if key in seen or key in IMPLEMENTED:
            continue
        seen.add(key)
        if key in NOT_YET:
            out.append(f'WARNING: ignoring "{key}" option: pyxen does not implement it yet.')
        else:
            out.append(f'WARNING: ignoring unknown option "{key}": not an xl.cfg(5) key.')
    return out
