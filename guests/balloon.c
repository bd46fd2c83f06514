/* mode=balloon: the memory part of the PVH ABI (tests/vmm/test_vmm_memory.py).
 *
 *   mode=balloon            interactive: each step waits for a console character
 *                           ('d' decrease, 'p' populate, 'q' poweroff) so that the test
 *                           can measure the VMM between steps
 *   mode=balloon out=N      balloons out N pages at 16 MiB, then idles (PV control)
 *
 * Ring-0 work is kept short: one byte written per page, arrays of at most 2048 entries.
 */
#include "guest.h"

void pv_idle(void);  /* pvdemo.c */

#define BALLOON_BASE_GFN 0x1000UL  /* 16 MiB */
#define MAX_FRAMES 2048
#define HOLE_GFN 0xfeff0UL        /* in the MMIO hole below the special pages */

/* struct e820entry of the memory map (Xen's public headers leave it to the OS) */
struct e820entry {
    uint64_t addr, size;
    uint32_t type;
} __attribute__((packed));

static xen_pfn_t frames[MAX_FRAMES];
static char page_a[4096] __attribute__((aligned(4096)));
static char page_b[4096] __attribute__((aligned(4096)));

static void wait_key(char want)
{
    char c;
    printk("balloon: waiting for '%c'\n", want);
    for (;;) {
        /* CONSOLEIO_read, or the PV console ring once printk uses it */
        if ((console_io(CONSOLEIO_read, 1, &c) == 1 || hvc_read(&c, 1) == 1) && c == want)
            return;
        sched_op(SCHEDOP_yield, NULL);
    }
}

static long reservation(int op, unsigned long first, unsigned long n, unsigned int order,
                        domid_t domid)
{
    for (unsigned long i = 0; i < n && i < MAX_FRAMES; i++) frames[i] = first + (i << order);
    struct xen_memory_reservation r = {
        .nr_extents = n, .extent_order = order, .mem_flags = 0, .domid = domid,
    };
    set_xen_guest_handle(r.extent_start, frames);
    return memory_op(op, &r);
}

static long current_pages(void)
{
    domid_t self = DOMID_SELF;
    return memory_op(XENMEM_current_reservation, &self);
}

static long add_to_physmap(domid_t domid, unsigned int space, unsigned long idx,
                           unsigned long gpfn)
{
    struct xen_add_to_physmap x = { .domid = domid, .space = space, .idx = idx, .gpfn = gpfn };
    return memory_op(XENMEM_add_to_physmap, &x);
}

static void memory_map(const struct hvm_start_info *si)
{
    const struct hvm_memmap_table_entry *m = (const void *)si->memmap_paddr;
    for (unsigned int i = 0; i < si->memmap_entries; i++)
        printk("balloon: start_info memmap %lx %lx %u\n", (unsigned long)m[i].addr,
               (unsigned long)m[i].size, m[i].type);
    struct e820entry map[8];
    struct xen_memory_map mm = { .nr_entries = 8 };
    set_xen_guest_handle(mm.buffer, map);
    long rc = memory_op(XENMEM_memory_map, &mm);
    printk("balloon: memory_map rc %ld, %u entries\n", rc, mm.nr_entries);
    for (unsigned int i = 0; rc == 0 && i < mm.nr_entries; i++)
        printk("balloon: e820 %lx %lx %u\n", (unsigned long)map[i].addr,
               (unsigned long)map[i].size, map[i].type);
    mm.nr_entries = 1;
    rc = memory_op(XENMEM_memory_map, &mm);
    printk("balloon: memory_map with room for 1: rc %ld, %u entries\n", rc, mm.nr_entries);
}

static unsigned int wc_sec(unsigned long gfn)
{
    volatile struct shared_info *s = (void *)(gfn << 12);
    return s->wc_sec;
}

static void shared_info_moves(void)
{
    unsigned long a = (unsigned long)page_a >> 12, b = (unsigned long)page_b >> 12;
    long before = current_pages();
    long rc = add_to_physmap(DOMID_SELF, XENMAPSPACE_shared_info, 0, a);
    printk("balloon: shared info at RAM gfn: rc %ld, wallclock %s, reservation -%ld\n", rc,
           wc_sec(a) > 1600000000u ? "ok" : "bad", before - current_pages());
    rc = add_to_physmap(DOMID_SELF, XENMAPSPACE_shared_info, 0, HOLE_GFN);
    printk("balloon: shared info at hole gfn %lx: rc %ld, wallclock %s\n", HOLE_GFN, rc,
           wc_sec(HOLE_GFN) > 1600000000u ? "ok" : "bad");
    volatile struct shared_info *s = (void *)(HOLE_GFN << 12);
    printk("balloon: time in vcpu_info at the hole: %s\n",
           s->vcpu_info[0].time.tsc_to_system_mul ? "ok" : "missing");
    printk("balloon: old gfn reads %s, as a hypercall buffer: %ld\n",
           wc_sec(a) == 0 ? "zeros" : "old data",
           xen_version(XENVER_extraversion, page_a));
    domid_t self = DOMID_SELF;
    printk("balloon: maximum_gpfn %lx\n", memory_op(XENMEM_maximum_gpfn, &self));
    rc = add_to_physmap(DOMID_SELF, XENMAPSPACE_shared_info, 0, b);
    printk("balloon: shared info back in RAM: rc %ld, wallclock %s, hole reads %x, "
           "as a hypercall buffer: %ld\n", rc, wc_sec(b) > 1600000000u ? "ok" : "bad",
           wc_sec(HOLE_GFN), xen_version(XENVER_extraversion, (void *)(HOLE_GFN << 12)));
}

static void errors(void)
{
    struct xen_remove_from_physmap xr = { .domid = DOMID_SELF, .gpfn = HOLE_GFN };
    domid_t other = 7;
    struct xen_foreign_memory_map fm = { .domid = DOMID_SELF, .map = { .nr_entries = 2000 } };
    printk("balloon: errors: idx 1 %ld, gfn 2^52 %ld, domid 7 %ld, domid 0 %ld, space 9 %ld, "
           "foreign %ld, remove hole %ld, current(d7) %ld, set_memory_map(2000) %ld\n",
           add_to_physmap(DOMID_SELF, XENMAPSPACE_shared_info, 1, HOLE_GFN),
           add_to_physmap(DOMID_SELF, XENMAPSPACE_shared_info, 0, 1UL << 52),
           add_to_physmap(7, XENMAPSPACE_shared_info, 0, HOLE_GFN),
           add_to_physmap(0, XENMAPSPACE_shared_info, 0, HOLE_GFN),
           add_to_physmap(DOMID_SELF, 9, 0, HOLE_GFN),
           add_to_physmap(DOMID_SELF, XENMAPSPACE_gmfn_foreign, 0, HOLE_GFN),
           memory_op(XENMEM_remove_from_physmap, &xr),
           memory_op(XENMEM_current_reservation, &other),
           memory_op(XENMEM_set_memory_map, &fm));
}

static void dirty(unsigned long first, unsigned long n)
{
    for (unsigned long i = 0; i < n; i++)
        *(volatile char *)((first + i) << 12) = (char)(1 + i % 251);  /* never 0 */
}

/* Pages among [first, first+n) that still hold what dirty() wrote; every step-th one
 * (reading a hole makes the host allocate it again, so a test that measures reads few). */
static unsigned long still_old(unsigned long first, unsigned long n, unsigned long step)
{
    unsigned long k = 0;
    for (unsigned long i = 0; i < n; i += step)
        if (*(volatile char *)((first + i) << 12) == (char)(1 + i % 251)) k++;
    return k;
}

static void interactive(const struct hvm_start_info *si)
{
    const unsigned long n = 1024;
    memory_map(si);
    domid_t self = DOMID_SELF;
    printk("balloon: reservation current %ld maximum %ld\n", current_pages(),
           memory_op(XENMEM_maximum_reservation, &self));
    shared_info_moves();
    errors();

    dirty(BALLOON_BASE_GFN, n);
    printk("balloon: dirtied %lu pages, reservation %ld\n", n, current_pages());
    wait_key('d');
    long rc = reservation(XENMEM_decrease_reservation, BALLOON_BASE_GFN, n, 0, DOMID_SELF);
    printk("balloon: decrease_reservation %ld, reservation %ld, old data left %lu, "
           "hypercall buffer there %ld\n", rc, current_pages(),
           still_old(BALLOON_BASE_GFN, n, 128),
           xen_version(XENVER_extraversion, (void *)(BALLOON_BASE_GFN << 12)));
    printk("balloon: decrease again (holes) %ld, domid 7 %ld, order 10 %ld\n",
           reservation(XENMEM_decrease_reservation, BALLOON_BASE_GFN, 1, 0, DOMID_SELF),
           reservation(XENMEM_decrease_reservation, BALLOON_BASE_GFN, 1, 0, 7),
           reservation(XENMEM_populate_physmap, BALLOON_BASE_GFN, 1, 10, DOMID_SELF));
    wait_key('p');
    rc = reservation(XENMEM_populate_physmap, BALLOON_BASE_GFN, n >> 9, 9, DOMID_SELF);
    printk("balloon: populate_physmap(order 9) %ld, reservation %ld, old data left %lu\n", rc,
           current_pages(), still_old(BALLOON_BASE_GFN, n, 1));
    dirty(BALLOON_BASE_GFN, n);
    printk("balloon: repopulated pages hold data: %s\n",
           still_old(BALLOON_BASE_GFN, n, 1) == n ? "yes" : "no");
    /* Above the RAM: inside the window up to maxmem, then one page beyond it. */
    unsigned long top = (unsigned long)memory_op(XENMEM_maximum_reservation, &self);
    long ram_end_gfn = 0x2000;  /* memory = 32 MiB */
    rc = reservation(XENMEM_populate_physmap, ram_end_gfn, 2 * (top - ram_end_gfn), 0,
                     DOMID_SELF);
    printk("balloon: populate above RAM %ld of %lu, reservation %ld\n", rc,
           2 * (top - ram_end_gfn), current_pages());
    unsigned long last = ram_end_gfn + rc - 1;
    dirty(last, 1);
    printk("balloon: last populated page %lx holds data: %s; more: %ld\n", last,
           still_old(last, 1, 1) ? "yes" : "no",
           reservation(XENMEM_populate_physmap, last + 1, 1, 0, DOMID_SELF));
    wait_key('q');
    shutdown(SHUTDOWN_poweroff);
}

void balloon_main(const struct hvm_start_info *si)
{
    unsigned long out = opt_ul("out", 0);
    if (!out) interactive(si);
    if (out > MAX_FRAMES) out = MAX_FRAMES;
    dirty(BALLOON_BASE_GFN, out);
    long rc = reservation(XENMEM_decrease_reservation, BALLOON_BASE_GFN, out, 0, DOMID_SELF);
    printk("balloon: gave back %ld pages, reservation %ld\n", rc, current_pages());
    pv_idle();
}
