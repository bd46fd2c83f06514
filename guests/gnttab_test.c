/*
 * pyxen's grant table test guest (a PVH kernel, like evtchn_test.c): version 2, and
 * grants mapped into the guest's own physical address space. Its command line chooses
 * what it does; every result is one console line the tests read.
 *
 *   mode=v2
 *       set_version / get_version / status frames; reserved entries kept across the
 *       switch; a v2 request page granted to pyxen's loopback backend (dom0), whose maps
 *       and copies of v2 entries (full page, sub-page, transitive) show in the status words
 *   mode=map
 *       maps its own grants at a gfn beyond its RAM (a hole), reads and writes through
 *       them, unmaps them (a hole again); Xen's errors for bad maps and unmaps
 */
#include "gnttab.h"

static uint32_t xen_base;
static unsigned int domid;

void exception_report(uint64_t *frame)
{
    printk("gnttab test: unexpected exception %lu (error %lx) at rip %lx cs %lx\n",
           frame[0], frame[1], frame[2], frame[3]);
    shutdown(SHUTDOWN_crash);
}

void ap_main(unsigned int id) { (void)id; for (;;) asm volatile("cli; hlt"); }  /* 1 vCPU */

static void fail(const char *what, long rc)
{
    printk("gnttab test: %s failed: %ld\n", what, rc);
    shutdown(SHUTDOWN_crash);
}

static int16_t get_status_frames(uint32_t nr, uint64_t *frames)
{
    struct gnttab_get_status_frames gs = { .nr_frames = nr, .dom = DOMID_SELF };
    set_xen_guest_handle(gs.frame_list, frames);
    long rc = grant_table_op(GNTTABOP_get_status_frames, &gs, 1);
    return rc ? (int16_t)rc : gs.status;
}

static uint32_t nr_grant_frames(void)
{
    struct gnttab_query_size qs = { .dom = DOMID_SELF };
    grant_table_op(GNTTABOP_query_size, &qs, 1);
    return qs.nr_frames;
}

/* A gfn with no RAM: well above the top of this guest's memory (identity mapped: < 4G). */
static uint64_t hole_gfn(unsigned int n)
{
    domid_t self = DOMID_SELF;
    return (uint64_t)memory_op(XENMEM_maximum_gpfn, &self) + 0x100 + n;
}

/* GNTTABOP_copy of 8 bytes from our own frame gfn into dest: GNTST_bad_page for a hole. */
static char probe_dest[4096] __attribute__((aligned(4096)));
static int16_t copy_from_gfn(uint64_t gfn)
{
    struct gnttab_copy c;
    memset(&c, 0, sizeof(c));
    c.source.u.gmfn = gfn; c.source.domid = DOMID_SELF;
    c.dest.u.gmfn = (uint64_t)probe_dest >> 12; c.dest.domid = DOMID_SELF;
    c.len = 8;
    long rc = grant_table_op(GNTTABOP_copy, &c, 1);
    return rc ? (int16_t)rc : c.status;
}

/* --- mode=v2 ----------------------------------------------------------------------------- */

#define REQ_REF 8
static struct loopback_page req __attribute__((aligned(4096)));
static char other_page[4096] __attribute__((aligned(4096)));
static evtchn_port_t lb_port;

static int32_t request(uint32_t cmd, uint32_t a0, uint32_t a1, uint32_t a2)
{
    req.cmd = cmd; req.arg0 = a0; req.arg1 = a1; req.arg2 = a2; req.status = 0x7777;
    __atomic_store_n(&req.seq, req.seq + 1, __ATOMIC_SEQ_CST);
    evtchn_send(lb_port);
    while (__atomic_load_n(&req.done, __ATOMIC_SEQ_CST) != req.seq)
        if (!evtchn_test_and_clear(lb_port)) evtchn_poll(lb_port, 0);
    return req.status;
}

static void v2_mode(void)
{
    uint32_t v;
    uint64_t sf[2];
    long rc;
    if ((rc = shared_info_map())) fail("shared info", rc);
    if ((rc = gnttab_map_table())) fail("grant table", rc);
    gnttab_get_version(DOMID_SELF, &v);
    printk("v2: start version %u\n", v);
    printk("v2: v1 get_status_frames = %d\n", get_status_frames(1, sf));
    printk("v2: v1 get_status_frames none = %d\n", get_status_frames(0, sf));
    printk("v2: v1 map status frame = %ld\n", gnttab_map_status());

    /* Reserved entry 1 (v1) survives the switch, with its status bits; entry 9 does not. */
    gnttab_grant_access(1, 0, 0x1234, 1);
    gnttab_grant_access(9, 0, 0x1235, 0);
    rc = gnttab_set_version(3, &v);
    printk("v2: set_version 3 = %ld version %u\n", rc, v);
    rc = gnttab_set_version(2, &v);
    printk("v2: set_version 2 = %ld version %u\n", rc, v);
    if (rc) fail("set_version 2", rc);
    gnttab_get_version(DOMID_SELF, &v);
    printk("v2: get_version %u; ref 1 flags %x domid %u frame %lx; ref 9 flags %x\n", v,
           gnttab_v2[1].hdr.flags, gnttab_v2[1].hdr.domid, gnttab_v2[1].full_page.frame,
           gnttab_v2[9].hdr.flags);
    sf[0] = 0;
    int16_t st = get_status_frames(1, sf);
    printk("v2: get_status_frames = %d frame %s\n", st, sf[0] == ~0ul ? "unmapped" : "MAPPED");
    printk("v2: map status frame = %ld\n", gnttab_map_status());
    st = get_status_frames(1, sf);
    printk("v2: get_status_frames = %d frame %s\n", st,
           sf[0] == (uint64_t)gnttab_status >> 12 ? "ok" : "WRONG");
    printk("v2: get_status_frames 2 = %d\n", get_status_frames(2, sf));
    /* 9 status frames would need 72 grant frames: more than the 64 allowed */
    rc = gnttab_map_frame(XENMAPIDX_grant_table_status | 8, hole_gfn(0));
    printk("v2: map status frame 8 = %ld nr_frames %u\n", rc, nr_grant_frames());

    /* The loopback backend (dom0) maps the v2 request page: the status word shows it. */
    gnttab_grant_access_v2(REQ_REF, 0, (uint64_t)&req >> 12, 0);
    if ((rc = evtchn_alloc_unbound(0, &lb_port))) fail("alloc_unbound", rc);
    printk("v2: port=%u gref=%u\n", lb_port, REQ_REF);
    while (!evtchn_test_and_clear(lb_port)) evtchn_poll(lb_port, 0);  /* backend's hello */
    printk("v2: connected, request entry flags %x status %x\n", gnttab_v2[REQ_REF].hdr.flags,
           gnttab_status[REQ_REF]);
    rc = gnttab_set_version(1, &v);
    printk("v2: set_version 1 while mapped = %ld version %u\n", rc, v);

    gnttab_grant_access_v2(10, 0, (uint64_t)other_page >> 12, 1);
    st = request(LOOPBACK_MAP, 10, 1, 0);
    uint16_t flags = gnttab_v2[10].hdr.flags, status = gnttab_status[10];
    int revoke_mapped = gnttab_end_access_v2(10);
    int st2 = request(LOOPBACK_UNMAP, 0, 0, 0);
    uint16_t status_after = gnttab_status[10];
    printk("v2: map readonly = %d flags %x status %x end_access %d; unmap = %d status %x\n",
           st, flags, status, revoke_mapped, st2, status_after);
    gnttab_grant_access_v2(10, 0, (uint64_t)other_page >> 12, 1);
    printk("v2: map readonly for write = %d\n", request(LOOPBACK_MAP, 10, 0, 0));

    memcpy(other_page + 100, "sub-page", 9);
    gnttab_grant_sub_page(13, 0, (uint64_t)other_page >> 12, 100, 9);
    st = request(LOOPBACK_COPY, 13, 100, 9);
    status = gnttab_status[13];
    printk("v2: copy sub-page = %d \"%s\" status %x\n", st, (char *)req.reply, status);
    printk("v2: copy outside sub-page = %d\n", request(LOOPBACK_COPY, 13, 96, 9));
    printk("v2: copy beyond page = %d\n", request(LOOPBACK_COPY, 13, 4090, 9));
    printk("v2: map sub-page = %d\n", request(LOOPBACK_MAP, 13, 1, 0));
    gnttab_grant_transitive(14, 0, (domid_t)domid, 13);
    printk("v2: map transitive = %d\n", request(LOOPBACK_MAP, 14, 1, 0));
    st = request(LOOPBACK_COPY, 14, 100, 9);
    printk("v2: copy transitive = %d status %x\n", st, gnttab_status[14]);
    gnttab_grant_access_v2(15, 5, (uint64_t)other_page >> 12, 0);
    printk("v2: map foreign = %d\n", request(LOOPBACK_MAP, 15, 1, 0));

    /* Close the channel: the backend stops and unmaps the request page. */
    evtchn_close(lb_port);
    for (unsigned long i = 0; i < 1000000 && gnttab_status[REQ_REF]; i++)
        sched_op(SCHEDOP_yield, NULL);
    printk("v2: backend gone, request status %x\n", gnttab_status[REQ_REF]);

    /* A reserved entry v1 cannot hold (frame above 32 bits) blocks the way back. */
    gnttab_grant_access_v2(2, 0, 1ul << 32, 0);
    rc = gnttab_set_version(1, &v);
    printk("v2: set_version 1 with a wide reserved entry = %ld version %u\n", rc, v);
    gnttab_end_access_v2(2);
    rc = gnttab_set_version(1, &v);
    printk("v2: set_version 1 = %ld version %u; ref 1 flags %x domid %u frame %x\n", rc, v,
           gnttab[1].flags, gnttab[1].domid, gnttab[1].frame);
    printk("v2: back in v1 get_status_frames = %d\n", get_status_frames(1, sf));
    /* the status frame left the physmap: its gfn is a hole */
    printk("v2: old status frame gfn copy = %d\n", copy_from_gfn((uint64_t)gnttab_status >> 12));
    printk("v2: done\n");
    shutdown(SHUTDOWN_poweroff);
}

/* --- mode=map ---------------------------------------------------------------------------- */

static char self_page[4096] __attribute__((aligned(4096)));
static char ro_page[4096] __attribute__((aligned(4096)));

#define SHOW(name, expr) printk("map: %s = %ld\n", name, (long)(expr))

static int unmap_and_replace(grant_handle_t h, uint64_t host_addr, uint64_t new_addr)
{
    struct gnttab_unmap_and_replace op = { .host_addr = host_addr, .new_addr = new_addr,
                                           .handle = h };
    long rc = grant_table_op(GNTTABOP_unmap_and_replace, &op, 1);
    return rc ? (int)rc : op.status;
}

static void map_mode(void)
{
    long rc;
    grant_handle_t h, h2;
    uint64_t bus;
    uint32_t v;
    if ((rc = shared_info_map())) fail("shared info", rc);
    if ((rc = gnttab_map_table())) fail("grant table", rc);
    uint64_t hole = hole_gfn(0), hole2 = hole_gfn(1);
    volatile char *at = (volatile char *)(hole << 12);
    printk("map: hole before: %x\n", (uint8_t)at[0]);

    memcpy(self_page, "granted to myself", 18);
    gnttab_grant_access(20, (domid_t)domid, (uint64_t)self_page >> 12, 0);
    int st = gnttab_map_ref((domid_t)domid, 20, hole << 12, GNTMAP_host_map, &h, &bus);
    printk("map: map = %d handle %u bus %s flags %x\n", st, h,
           bus == (uint64_t)self_page ? "ok" : "WRONG", gnttab[20].flags);
    int same = 1;
    for (int i = 0; i < 18; i++) same &= at[i] == self_page[i];
    at[100] = 'W';
    int seen = self_page[100] == 'W';
    printk("map: read through map %s, write seen %s, revoke while mapped %d\n",
           same ? "ok" : "MISMATCH", seen ? "ok" : "NO", gnttab_end_access(20));
    rc = gnttab_set_version(2, &v);
    printk("map: set_version 2 while mapped = %ld version %u\n", rc, v);

    /* Bad unmaps leave the mapping in place. */
    SHOW("unmap bad handle", gnttab_unmap_ref(12345, hole << 12, 0));
    SHOW("unmap wrong bus address", gnttab_unmap_ref(h, hole << 12, 0x1000));
    SHOW("unmap wrong gfn", gnttab_unmap_ref(h, hole2 << 12, 0));
    SHOW("unmap_and_replace", unmap_and_replace(h, hole << 12, (uint64_t)ro_page));
    SHOW("map over a grant mapping", gnttab_map_ref((domid_t)domid, 20, hole << 12,
                                                     GNTMAP_host_map, &h2, NULL));
    st = gnttab_unmap_ref(h, hole << 12, 0);
    uint16_t flags = gnttab[20].flags;
    uint8_t after = (uint8_t)at[0];
    printk("map: unmap = %d flags %x hole after: %x end_access %d\n", st, flags, after,
           gnttab_end_access(20));
    SHOW("unmap twice", gnttab_unmap_ref(h, hole << 12, 0));

    /* Read-only: GTF_reading only; a writable map of it is refused. */
    memcpy(ro_page, "read-only grant", 16);
    gnttab_grant_access(21, (domid_t)domid, (uint64_t)ro_page >> 12, 1);
    SHOW("map read-only grant writable", gnttab_map_ref((domid_t)domid, 21, hole << 12,
                                                         GNTMAP_host_map, &h, NULL));
    st = gnttab_map_ref((domid_t)domid, 21, hole2 << 12, GNTMAP_host_map | GNTMAP_readonly,
                        &h, NULL);
    volatile char *at2 = (volatile char *)(hole2 << 12);
    printk("map: map read-only = %d flags %x reads \"%s\"\n", st, gnttab[21].flags,
           at2[0] == 'r' && at2[10] == 'g' ? "read-only grant" : "WRONG");
    st = gnttab_unmap_ref(h, hole2 << 12, 0);
    printk("map: unmap read-only = %d flags %x\n", st, gnttab[21].flags);

    /* Xen's refusals */
    gnttab_grant_access(22, 0, (uint64_t)self_page >> 12, 0);          /* for dom0 */
    gnttab_grant_access(23, (domid_t)domid, (uint64_t)self_page >> 12, 0);
    gnttab[23].flags |= GTF_PCD;                                        /* cache attribute */
    gnttab_grant_access(24, (domid_t)domid, 0xfffff, 0);                /* not RAM */
    SHOW("map no flags", gnttab_map_ref((domid_t)domid, 20, hole << 12, 0, &h, NULL));
    SHOW("map device_map", gnttab_map_ref((domid_t)domid, 20, hole << 12,
                                          GNTMAP_host_map | GNTMAP_device_map, &h, NULL));
    SHOW("map contains_pte", gnttab_map_ref((domid_t)domid, 20, hole << 12,
                                            GNTMAP_host_map | GNTMAP_contains_pte, &h, NULL));
    SHOW("map DOMID_SELF", gnttab_map_ref(DOMID_SELF, 20, hole << 12, GNTMAP_host_map, &h,
                                          NULL));
    SHOW("map dom0", gnttab_map_ref(0, 1, hole << 12, GNTMAP_host_map, &h, NULL));
    SHOW("map unknown domain", gnttab_map_ref(42, 1, hole << 12, GNTMAP_host_map, &h, NULL));
    SHOW("map ref out of range", gnttab_map_ref((domid_t)domid, 100000, hole << 12,
                                                GNTMAP_host_map, &h, NULL));
    SHOW("map ref granted to dom0", gnttab_map_ref((domid_t)domid, 22, hole << 12,
                                                   GNTMAP_host_map, &h, NULL));
    SHOW("map cache attribute", gnttab_map_ref((domid_t)domid, 23, hole << 12,
                                               GNTMAP_host_map, &h, NULL));
    SHOW("map bad frame", gnttab_map_ref((domid_t)domid, 24, hole << 12, GNTMAP_host_map,
                                         &h, NULL));
    printk("map: flags after refusals %x %x %x\n", gnttab[22].flags, gnttab[23].flags,
           gnttab[24].flags);

    /* Version 2: the status word shows the mapping. */
    rc = gnttab_set_version(2, &v);
    if (rc) fail("set_version 2", rc);
    if ((rc = gnttab_map_status())) fail("status frame", rc);
    gnttab_grant_access_v2(30, (domid_t)domid, (uint64_t)self_page >> 12, 0);
    st = gnttab_map_ref((domid_t)domid, 30, hole << 12, GNTMAP_host_map, &h, NULL);
    int reads = at[0] == 'g';
    printk("map: v2 map = %d flags %x status %x reads %s\n", st, gnttab_v2[30].hdr.flags,
           gnttab_status[30], reads ? "ok" : "WRONG");
    gnttab_grant_sub_page(31, (domid_t)domid, (uint64_t)self_page >> 12, 0, 16);
    SHOW("v2 map sub-page", gnttab_map_ref((domid_t)domid, 31, hole2 << 12, GNTMAP_host_map,
                                           &h2, NULL));
    st = gnttab_unmap_ref(h, hole << 12, 0);
    printk("map: v2 unmap = %d status %x\n", st, gnttab_status[30]);

    /* The grant frame itself moves to a hole; where it was becomes a hole. */
    uint64_t old = (uint64_t)gnttab >> 12, hole3 = hole_gfn(2);
    rc = gnttab_map_frame(0, hole3);
    grant_entry_v2_t *moved = (grant_entry_v2_t *)(hole3 << 12);
    printk("map: move frame 0 = %ld ref 30 there %s; old gfn copy = %d, new gfn copy = %d\n",
           rc, moved[30].full_page.frame == (uint64_t)self_page >> 12 ? "ok" : "WRONG",
           copy_from_gfn(old), copy_from_gfn(hole3));
    SHOW("map frame beyond the address width", gnttab_map_frame(0, 1ul << 52));
    printk("map: done\n");
    shutdown(SHUTDOWN_poweroff);
}

void kmain(uint32_t start_info_paddr)
{
    char mode[32];
    cpu_tables_init();
    idt_init256();
    idt_set_gate(UPCALL_VECTOR, evtchn_upcall_entry);
    xen_base = find_xen_leaves();
    if (!xen_base) for (;;) asm volatile("cli; hlt");
    uint32_t a, b, c, d;
    cpuid(xen_base + 2, &a, &b, &c, &d);
    wrmsr(b, (uint64_t)hypercall_page);
    cpuid(xen_base + 4, &a, &b, &c, &d);
    domid = (a & XEN_HVM_CPUID_DOMID_PRESENT) ? c : ~0u;
    struct hvm_start_info *si = (struct hvm_start_info *)(uint64_t)start_info_paddr;
    cmdline_load(si->cmdline_paddr);
    printk("gnttab test: domain %u, command line \"%s\"\n", domid, cmdline);
    if (!opt("mode", mode, sizeof(mode))) mode[0] = 0;
    if (streq(mode, "v2")) v2_mode();
    if (streq(mode, "map")) map_mode();
    printk("gnttab test: unknown mode \"%s\"\n", mode);
    shutdown(SHUTDOWN_crash);
}
