/*
 * Test guest of the PVH ACPI tables (arch/x86/acpi.py): finds the RSDP through
 * hvm_start_info.rsdp_paddr, walks RSDP -> XSDT -> FADT/MADT validating every checksum,
 * counts the enabled and disabled CPUs of the MADT with their APIC ids, then brings the
 * enabled ones up with VCPUOP_initialise/VCPUOP_up, as an SMP kernel does. Each step is
 * one "acpi: ..." line; the last is "acpi: done".
 */
#include "guest.h"

#define MAX_CPUS 64

void exception_report(uint64_t *frame)
{
    printk("acpi: unexpected exception %lu (error %lx) at rip %lx\n",
           frame[0], frame[1], frame[2]);
    shutdown(SHUTDOWN_crash);
}

struct __attribute__((packed)) acpi_header {
    char signature[4];
    uint32_t length;
    uint8_t revision, checksum;
    char oem_id[6], oem_table_id[8];
    uint32_t oem_revision, creator_id, creator_revision;
};

struct __attribute__((packed)) rsdp {
    char signature[8];
    uint8_t checksum;
    char oem_id[6];
    uint8_t revision;
    uint32_t rsdt;
    uint32_t length;
    uint64_t xsdt;
    uint8_t ext_checksum, reserved[3];
};

static volatile int ap_up[MAX_CPUS];
static volatile uint32_t ap_apic[MAX_CPUS];
static char ap_stacks[MAX_CPUS][4096] __attribute__((aligned(16)));

static uint8_t sum(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint8_t s = 0;
    while (n--) s += *b++;
    return s;
}

static int sig(const char *a, const char *b) { return !strncmp(a, b, 4); }

static uint32_t cpuid_apic_id(void)
{
    uint32_t a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    return b >> 24;
}

void ap_main(unsigned int id)
{
    if (id < MAX_CPUS) {
        ap_apic[id] = cpuid_apic_id();
        ap_up[id] = 1;
    }
    for (;;) sched_op(SCHEDOP_block, NULL);
}

static int start_vcpu(unsigned int v)
{
    struct vcpu_hvm_context ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.mode = VCPU_HVM_MODE_64B;
    ctx.cpu_regs.x86_64.rip = (uint64_t)ap_start64;
    ctx.cpu_regs.x86_64.rsp = (uint64_t)(ap_stacks[v] + sizeof(ap_stacks[v]));
    ctx.cpu_regs.x86_64.rdi = v;
    ctx.cpu_regs.x86_64.rflags = 0x2;
    ctx.cpu_regs.x86_64.cr0 = 0x80000011;
    ctx.cpu_regs.x86_64.cr3 = (uint64_t)pml4;
    ctx.cpu_regs.x86_64.cr4 = 0x20;
    ctx.cpu_regs.x86_64.efer = 0x500;
    long rc = vcpu_op(VCPUOP_initialise, v, &ctx);
    if (!rc) rc = vcpu_op(VCPUOP_up, v, NULL);
    if (rc) return (int)rc;
    while (!ap_up[v]) sched_op(SCHEDOP_yield, NULL);
    return 0;
}

static const char *find_tables(struct hvm_start_info *si)
{
    if (si->version < 1 || !si->rsdp_paddr) return "no rsdp_paddr in hvm_start_info";
    struct rsdp *r = (void *)si->rsdp_paddr;
    if (strncmp(r->signature, "RSD PTR ", 8)) return "bad RSDP signature";
    if (sum(r, 20)) return "bad RSDP checksum";
    if (r->revision < 2 || r->length < sizeof(*r) || sum(r, r->length))
        return "bad RSDP extended checksum";
    /* the RSDP lies in an E820 ACPI range */
    struct hvm_memmap_table_entry *m = (void *)si->memmap_paddr;
    int in_acpi = 0;
    for (unsigned int i = 0; i < si->memmap_entries; i++)
        if (m[i].type == XEN_HVM_MEMMAP_TYPE_ACPI && m[i].addr <= si->rsdp_paddr &&
            si->rsdp_paddr + sizeof(*r) <= m[i].addr + m[i].size)
            in_acpi = 1;
    if (!in_acpi) return "RSDP outside the E820 ACPI ranges";
    printk("acpi: RSDP at %lx revision %u, XSDT at %lx\n", si->rsdp_paddr, r->revision, r->xsdt);

    struct acpi_header *x = (void *)r->xsdt;
    if (!sig(x->signature, "XSDT") || sum(x, x->length)) return "bad XSDT";
    uint64_t *entry = (uint64_t *)(x + 1);
    unsigned int n = (x->length - sizeof(*x)) / 8;
    struct acpi_header *madt = NULL;
    for (unsigned int i = 0; i < n; i++) {
        struct acpi_header *t = (void *)entry[i];
        if (sum(t, t->length)) { printk("acpi: bad checksum of table %u\n", i); return "bad table"; }
        printk("acpi: XSDT entry %u: %c%c%c%c length %u checksum ok\n", i, t->signature[0],
               t->signature[1], t->signature[2], t->signature[3], t->length);
        if (sig(t->signature, "FACP")) {
            uint32_t flags = *(uint32_t *)((char *)t + 112);
            struct acpi_header *dsdt = (void *)*(uint64_t *)((char *)t + 140);
            if (!sig(dsdt->signature, "DSDT") || sum(dsdt, dsdt->length)) return "bad DSDT";
            printk("acpi: FADT revision %u hw_reduced %u, DSDT length %u checksum ok\n",
                   t->revision, (flags >> 20) & 1, dsdt->length);
        }
        if (sig(t->signature, "APIC")) madt = t;
    }
    if (!madt) return "no MADT";

    char on[128] = "", off[128] = "";
    size_t lon = 0, loff = 0;
    unsigned int enabled = 0, disabled = 0, ups = 0, uids[MAX_CPUS];
    uint32_t ids[MAX_CPUS];
    uint8_t *p = (uint8_t *)madt + 44, *end = (uint8_t *)madt + madt->length;
    while (p + 2 <= end && p[1] >= 2 && p + p[1] <= end) {
        uint32_t uid = ~0u, apic = 0, flags = 0;
        if (p[0] == 0 && p[1] >= 8) { uid = p[2]; apic = p[3]; flags = *(uint32_t *)(p + 4); }
        if (p[0] == 9 && p[1] >= 16) {
            apic = *(uint32_t *)(p + 4); flags = *(uint32_t *)(p + 8); uid = *(uint32_t *)(p + 12);
        }
        if (uid != ~0u) {
            if (flags & 1) {
                lon += snprintf(on + lon, sizeof(on) - lon, "%s%u", enabled ? "," : "", apic);
                if (enabled < MAX_CPUS) { uids[enabled] = uid; ids[enabled] = apic; }
                enabled++;
            } else {
                loff += snprintf(off + loff, sizeof(off) - loff, "%s%u", disabled ? "," : "", apic);
                disabled++;
            }
        }
        if (p[0] == 1) printk("acpi: MADT has an I/O APIC\n");
        p += p[1];
    }
    printk("acpi: MADT lapic %x: %u enabled cpus (apic ids %s), %u disabled (apic ids %s)\n",
           *(uint32_t *)((char *)madt + 36), enabled, on, disabled, off);

    uint32_t self = cpuid_apic_id();
    for (unsigned int i = 0; i < enabled && i < MAX_CPUS; i++) {
        if (ids[i] == self) { ups++; continue; }
        int rc = start_vcpu(uids[i]);
        if (rc) { printk("acpi: vcpu %u (apic id %u) failed to start: %d\n", uids[i], ids[i], rc); continue; }
        printk("acpi: vcpu %u up, apic id %u (MADT says %u)\n", uids[i], ap_apic[uids[i]], ids[i]);
        if (ap_apic[uids[i]] == ids[i]) ups++;
    }
    printk("acpi: %u cpus running with the APIC ids the MADT gives\n", ups);
    return "ok";
}

void kmain(uint32_t start_info_paddr)
{
    cpu_tables_init();
    asm volatile("lidt idt_ptr(%%rip)" ::: "memory");
    uint32_t base = find_xen_leaves(), a, b, c, d;
    if (!base) for (;;) asm volatile("cli; hlt");
    cpuid(base + 2, &a, &b, &c, &d);
    wrmsr(b, (uint64_t)hypercall_page);
    struct hvm_start_info *si = (void *)(uint64_t)start_info_paddr;
    cmdline_load(si->cmdline_paddr);
    printk("acpi: start_info version %u rsdp_paddr %lx\n", si->version, si->rsdp_paddr);
    printk("acpi: done: %s\n", find_tables(si));
    if (opt_ul("stay", 0))
        for (;;) sched_op(SCHEDOP_block, NULL);
    shutdown(SHUTDOWN_poweroff);
}
