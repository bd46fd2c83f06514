/* mode=balloond: a balloon driver as Linux's xen-balloon is one, for the toolstack's
 * memory tests (tests/toolstack/test_xl_mem.py). It watches memory/target (KiB, written
 * by `xl mem-set`) and moves its reservation there: XENMEM_decrease_reservation gives
 * back the highest populated gfns (never below 16 MiB, where the guest's image and
 * stacks live), XENMEM_populate_physmap takes gfns back from there upwards, as far as
 * the domain's maximum reservation lets it. Answers control/shutdown like mode=idle.
 * Ring-0 work per step: one array of at most BATCH frame numbers per hypercall.
 */
#include "pv.h"

#define FLOOR_GFN 0x1000UL   /* 16 MiB */
#define BATCH 512
#define TARGET_TOKEN "balloon-target"

static xen_pfn_t frames[BATCH];

static long current_pages(void)
{
    domid_t self = DOMID_SELF;
    return memory_op(XENMEM_current_reservation, &self);
}

static long op_range(int op, unsigned long first, unsigned long n)
{
    for (unsigned long i = 0; i < n; i++) frames[i] = first + i;
    struct xen_memory_reservation r = { .nr_extents = n, .extent_order = 0, .domid = DOMID_SELF };
    set_xen_guest_handle(r.extent_start, frames);
    return memory_op(op, &r);
}

/* gfns [top, ...) are the balloon: given back, or never populated (maxmem > memory) */
static unsigned long top;

static void balance(void)
{
    char value[32];
    long len = xb_read("memory/target", value, sizeof(value) - 1);
    if (len <= 0) return;
    value[len] = 0;
    unsigned long kib = 0;
    for (long i = 0; i < len && value[i] >= '0' && value[i] <= '9'; i++)
        kib = kib * 10 + (unsigned long)(value[i] - '0');
    long want = (long)(kib >> 2), have = current_pages();
    long moved = 0;
    while (have > want && top > FLOOR_GFN) {          /* deflate: give pages back */
        unsigned long n = (unsigned long)(have - want);
        if (n > BATCH) n = BATCH;
        if (n > top - FLOOR_GFN) n = top - FLOOR_GFN;
        long rc = op_range(XENMEM_decrease_reservation, top - n, n);
        if (rc <= 0) break;
        top -= (unsigned long)rc;
        have -= rc;
        moved -= rc;
    }
    while (have < want) {                              /* inflate: take pages back */
        unsigned long n = (unsigned long)(want - have);
        if (n > BATCH) n = BATCH;
        long rc = op_range(XENMEM_populate_physmap, top, n);
        if (rc > 0) {
            top += (unsigned long)rc;
            have += rc;
            moved += rc;
        }
        if ((unsigned long)rc < n) break;              /* the maximum reservation */
    }
    printk("balloond: target %lu KiB: moved %ld pages, reservation %ld pages (%ld KiB)\n",
           kib, moved, current_pages(), current_pages() * 4);
}

void balloond_main(const struct hvm_start_info *si)
{
    const struct hvm_memmap_table_entry *m = (const void *)si->memmap_paddr;
    for (unsigned int i = 0; i < si->memmap_entries; i++)
        if (m[i].type == XEN_HVM_MEMMAP_TYPE_RAM && m[i].addr == 0)
            top = (unsigned long)(m[i].size >> 12);
    char path[128], token[32];
    long rc = xb_init();
    if (!rc) rc = pv_control_init();
    if (!rc) rc = xb_watch("memory/target", TARGET_TOKEN);
    if (rc) {
        printk("balloond: no xenstore (%s)\n", xb_error_name(rc));
        for (;;) sched_op(SCHEDOP_block, NULL);
    }
    /* Touch every page above the floor so the host holds them: giving them back shows */
    for (unsigned long g = FLOOR_GFN; g < top; g++) *(volatile char *)(g << 12) = 1;
    printk("balloond: RAM ends at gfn %lx, reservation %ld pages\n", top, current_pages());
    for (;;) {
        pv_ack();
        while (xb_next_event(path, sizeof(path), token, sizeof(token))) {
            if (!strncmp(token, TARGET_TOKEN, sizeof(TARGET_TOKEN))) {
                balance();
                continue;
            }
            int reason = pv_control_event(token);
            if (reason >= 0) {
                printk("balloond: shutdown requested: %s\n", pv_control_name(reason));
                shutdown(reason);
            }
        }
        xb_wait();  /* balance()'s xenstore reads may have taken the next event's kick */
    }
}
