/* mode=vnuma: the guest's virtual NUMA topology (tests/toolstack/test_xl_vnuma.py), read
 * as Linux reads it under Xen: XENMEM_get_vnumainfo (first with no room, to learn the
 * sizes from -ENOBUFS), then the ACPI SRAT and SLIT through hvm_start_info.rsdp_paddr.
 * One "vnuma: ..." line per fact, "vnuma: done" last, then poweroff.
 */
#include "guest.h"

#define MAXN 8
#define MAXC 16

struct __attribute__((packed)) acpi_hdr {
    char sig[4];
    uint32_t length;
    uint8_t revision, checksum;
    char oem[6], oem_table[8];
    uint32_t oem_rev, creator, creator_rev;
};

static uint8_t sum(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint8_t s = 0;
    while (n--) s += *b++;
    return s;
}

static void hypercall_view(void)
{
    static struct xen_vmemrange ranges[MAXN];
    static unsigned int dist[MAXN * MAXN], cpu_node[MAXC];
    struct xen_vnuma_topology_info t = { .domid = DOMID_SELF };
    long rc = memory_op(XENMEM_get_vnumainfo, &t);
    printk("vnuma: no room: rc %ld, needs %u vnodes %u vcpus %u ranges\n", rc, t.nr_vnodes,
           t.nr_vcpus, t.nr_vmemranges);
    if (rc != -105 /* ENOBUFS */) return;
    if (t.nr_vnodes > MAXN || t.nr_vcpus > MAXC || t.nr_vmemranges > MAXN) return;
    set_xen_guest_handle(t.vmemrange.h, ranges);
    set_xen_guest_handle(t.vdistance.h, dist);
    set_xen_guest_handle(t.vcpu_to_vnode.h, cpu_node);
    rc = memory_op(XENMEM_get_vnumainfo, &t);
    printk("vnuma: get_vnumainfo rc %ld: %u vnodes %u vcpus %u ranges\n", rc, t.nr_vnodes,
           t.nr_vcpus, t.nr_vmemranges);
    for (unsigned int i = 0; rc == 0 && i < t.nr_vmemranges; i++)
        printk("vnuma: range %lx-%lx vnode %u\n", (unsigned long)ranges[i].start,
               (unsigned long)ranges[i].end, ranges[i].nid);
    for (unsigned int i = 0; rc == 0 && i < t.nr_vnodes; i++)
        for (unsigned int j = 0; j < t.nr_vnodes; j++)
            printk("vnuma: distance %u->%u %u\n", i, j, dist[i * t.nr_vnodes + j]);
    for (unsigned int i = 0; rc == 0 && i < t.nr_vcpus; i++)
        printk("vnuma: vcpu %u on vnode %u\n", i, cpu_node[i]);
    t.pad = 1;
    printk("vnuma: pad 1 rc %ld\n", memory_op(XENMEM_get_vnumainfo, &t));
}

static void srat(const struct acpi_hdr *h)
{
    const uint8_t *p = (const uint8_t *)h + sizeof(*h) + 12, *end = (const uint8_t *)h + h->length;
    while (p + 2 <= end && p[1] && p + p[1] <= end) {
        if (p[0] == 0 && p[1] == 16)
            printk("vnuma: SRAT cpu apic %u node %u flags %u\n", p[3],
                   p[2] | (p[9] << 8) | (p[10] << 16) | (p[11] << 24), *(const uint32_t *)(p + 4));
        else if (p[0] == 1 && p[1] == 40)
            printk("vnuma: SRAT memory %lx+%lx node %u flags %u\n", *(const uint64_t *)(p + 8),
                   *(const uint64_t *)(p + 16), *(const uint32_t *)(p + 2),
                   *(const uint32_t *)(p + 28));
        p += p[1];
    }
}

static void slit(const struct acpi_hdr *h)
{
    const uint8_t *p = (const uint8_t *)h + sizeof(*h);
    uint64_t n = *(const uint64_t *)p;
    printk("vnuma: SLIT %lu localities\n", (unsigned long)n);
    for (uint64_t i = 0; i < n && i < MAXN; i++)
        for (uint64_t j = 0; j < n && j < MAXN; j++)
            printk("vnuma: SLIT %lu->%lu %u\n", (unsigned long)i, (unsigned long)j,
                   p[8 + i * n + j]);
}

static void acpi_view(const struct hvm_start_info *si)
{
    if (!si->rsdp_paddr) {
        printk("vnuma: no RSDP\n");
        return;
    }
    uint64_t xsdt = *(const uint64_t *)(si->rsdp_paddr + 24);
    const struct acpi_hdr *x = (const void *)xsdt;
    unsigned int n = (x->length - sizeof(*x)) / 8;
    for (unsigned int i = 0; i < n; i++) {
        const struct acpi_hdr *t = (const void *)((const uint64_t *)(x + 1))[i];
        int ok = sum(t, t->length) == 0;
        if (!strncmp(t->sig, "SRAT", 4)) {
            printk("vnuma: SRAT found, checksum %s\n", ok ? "ok" : "bad");
            srat(t);
        } else if (!strncmp(t->sig, "SLIT", 4)) {
            printk("vnuma: SLIT found, checksum %s\n", ok ? "ok" : "bad");
            slit(t);
        }
    }
}

void vnuma_main(const struct hvm_start_info *si)
{
    hypercall_view();
    acpi_view(si);
    printk("vnuma: done\n");
    shutdown(SHUTDOWN_poweroff);
}
