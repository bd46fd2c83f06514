/*
 * compat32.elf: a 32-bit PVH guest that exercises Xen's compat (x86_32) hypercall ABI.
 *
 * It stays in 32-bit protected mode with paging off (start32.S), built with -m32 against
 * Xen's public headers, which then describe the x86_32 layouts (xen_ulong_t, xen_pfn_t
 * and guest handles of 32 bits, 64-bit members 4-byte aligned). Each check prints one
 * line "compat32: <what>: <results>" through console_io and the PV console ring; the
 * tests (tests/compat/) compare them with Xen's behaviour. Where a struct is smaller in
 * the 32-bit ABI, a canary word follows it: a hypervisor using the 64-bit layout would
 * read or overwrite it. Interrupts stay off: events are seen with SCHEDOP_poll and in
 * shared_info, never as upcalls.
 */
#include "guest.h"
#include <xen/event_channel.h>
#include <xen/grant_table.h>

#define CANARY 0x5a5aa5a5u
#define MS 1000000ull

static inline long event_channel_op(int cmd, void *arg)
{ return HYPERCALL2(__HYPERVISOR_event_channel_op, cmd, arg); }
static inline long grant_table_op(int cmd, void *uop, unsigned int count)
{ return HYPERCALL3(__HYPERVISOR_grant_table_op, cmd, uop, count); }

static char vcpu_info_page[4096] __attribute__((aligned(4096)));
static char shared_info_page[4096] __attribute__((aligned(4096)));
static volatile struct vcpu_info *vi;      /* vCPU 0's, registered in vcpu_info_page */
static volatile struct shared_info *si;    /* once XENMAPSPACE_shared_info worked */

static const char *yesno(int b) { return b ? "yes" : "no"; }
static const char *intact(uint32_t c) { return c == CANARY ? "intact" : "OVERWRITTEN"; }

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* Xen system time (ns) from our vcpu_time_info, without 128-bit arithmetic. */
static uint64_t now_ns(void)
{
    volatile struct vcpu_time_info *t = &vi->time;
    uint32_t ver, mul;
    uint64_t st, ts;
    int8_t shift;
    do {
        ver = t->version;
        asm volatile("" ::: "memory");
        st = t->system_time; ts = t->tsc_timestamp;
        mul = t->tsc_to_system_mul; shift = t->tsc_shift;
        asm volatile("" ::: "memory");
    } while ((ver & 1) || ver != t->version);
    uint64_t d = rdtsc() - ts;
    d = shift >= 0 ? d << shift : d >> -shift;
    return st + (((uint64_t)(uint32_t)d * mul) >> 32) + (uint64_t)(uint32_t)(d >> 32) * mul;
}

static long poll1(evtchn_port_t port, uint64_t timeout_abs)
{
    struct { struct sched_poll p; uint32_t canary; } a = {
        .p = { .nr_ports = 1, .timeout = timeout_abs }, .canary = CANARY };
    set_xen_guest_handle(a.p.ports, &port);
    return sched_op(SCHEDOP_poll, &a.p);
}

static void check_mode(void)
{
    uint32_t cr0;
    asm volatile("mov %%cr0, %0" : "=r"(cr0));
    printk("compat32: mode: 32-bit protected %s, paging %s\n", yesno(cr0 & 1),
           (cr0 & 0x80000000u) ? "on" : "off");
}

static void check_version(void)
{
    static xen_capabilities_info_t caps;
    xen_extraversion_t extra;
    long ver = xen_version(XENVER_version, NULL);
    memset(extra, 0, sizeof(extra));
    xen_version(XENVER_extraversion, extra);
    extra[sizeof(extra) - 1] = 0;
    printk("compat32: xen_version: %ld.%ld%s\n", ver >> 16, ver & 0xffff, extra);
    xen_version(XENVER_capabilities, caps);
    printk("compat32: capabilities: \"%s\"\n", caps);
    struct { struct xen_platform_parameters p; uint32_t canary; } pp = { .canary = CANARY };
    long rc = xen_version(XENVER_platform_parameters, &pp.p);
    printk("compat32: platform_parameters: rc %ld virt_start %lx canary %s\n", rc,
           (unsigned long)pp.p.virt_start, intact(pp.canary));
    struct xen_feature_info fi = { .submap_idx = 0 };
    rc = xen_version(XENVER_get_features, &fi);
    printk("compat32: features: rc %ld submap %x\n", rc, fi.submap);
    printk("compat32: pagesize: %ld\n", xen_version(XENVER_pagesize, NULL));
}

/* vcpu_info in a page of ours (same layout in both ABIs): the time source for the rest. */
static void check_vcpu_info(void)
{
    struct vcpu_register_vcpu_info info = {
        .mfn = (uintptr_t)vcpu_info_page >> 12, .offset = 0 };
    long rc = vcpu_op(VCPUOP_register_vcpu_info, 0, &info);
    if (!rc) vi = (volatile struct vcpu_info *)vcpu_info_page;
    uint64_t t0 = rc ? 0 : now_ns();
    for (int i = 0; !rc && i < 20000; i++) cpu_relax();
    printk("compat32: register_vcpu_info: rc %ld, system time advances: %s\n", rc,
           yesno(!rc && t0 > 0 && now_ns() > t0));
}

static void check_pv_only(void)
{
    /* HVM/PVH guests get -ENOSYS for the PV-only pre-3.2 event channel hypercall */
    struct evtchn_op op = { .cmd = EVTCHNOP_send };
    printk("compat32: event_channel_op_compat: %ld\n",
           HYPERCALL2(__HYPERVISOR_event_channel_op_compat, &op, 0));
}

/* A fresh VIRQ_TIMER port per check: without shared_info (or before it) the guest cannot
 * clear a pending bit, and SCHEDOP_poll returns at once while one is set. Closing the
 * port clears it, as in Xen. */
static evtchn_port_t timer_port(long *rc)
{
    struct evtchn_bind_virq bv = { .virq = VIRQ_TIMER, .vcpu = 0 };
    *rc = event_channel_op(EVTCHNOP_bind_virq, &bv);
    return bv.port;
}

static void close_port(evtchn_port_t port)
{
    struct evtchn_close cl = { .port = port };
    event_channel_op(EVTCHNOP_close, &cl);
}

/* VIRQ_TIMER woken polls: VCPUOP_set_singleshot_timer and set_timer_op (lo, hi). */
static void check_timers(void)
{
    long rc;
    evtchn_port_t t = timer_port(&rc);
    printk("compat32: bind_virq(TIMER): rc %ld\n", rc);
    if (rc || !vi) return;

    struct { struct vcpu_set_singleshot_timer s; uint32_t canary; } ss = { .canary = CANARY };
    ss.s.timeout_abs_ns = now_ns() - MS;
    ss.s.flags = VCPU_SSHOTTMR_future;
    long past = vcpu_op(VCPUOP_set_singleshot_timer, 0, &ss.s);
    uint64_t start = now_ns(), deadline = start + 20 * MS;
    ss.s.timeout_abs_ns = deadline;
    rc = vcpu_op(VCPUOP_set_singleshot_timer, 0, &ss.s);
    long prc = poll1(t, start + 5000 * MS);
    uint64_t end = now_ns();
    printk("compat32: singleshot: past %ld, rc %ld, poll rc %ld, woken by the timer: %s, "
           "canary %s\n", past, rc, prc, yesno(end >= deadline && end < start + 5000 * MS),
           intact(ss.canary));
    close_port(t);

    t = timer_port(&rc);
    start = now_ns();
    deadline = start + 20 * MS;
    rc = HYPERCALL2(__HYPERVISOR_set_timer_op, (uint32_t)deadline, (uint32_t)(deadline >> 32));
    prc = poll1(t, start + 5000 * MS);
    end = now_ns();
    printk("compat32: set_timer_op: rc %ld, poll rc %ld, woken by the timer: %s\n", rc, prc,
           yesno(end >= deadline && end < start + 5000 * MS));
    close_port(t);

    /* the high half counts: 2^32 ns later is 4.3 s away, nothing within 100 ms */
    t = timer_port(&rc);
    start = now_ns();
    deadline = start + 20 * MS + (1ull << 32);
    rc = HYPERCALL2(__HYPERVISOR_set_timer_op, (uint32_t)deadline, (uint32_t)(deadline >> 32));
    prc = poll1(t, start + 100 * MS);
    end = now_ns();
    long stop = HYPERCALL2(__HYPERVISOR_set_timer_op, 0, 0);
    printk("compat32: set_timer_op(hi 1): rc %ld, poll rc %ld, fired within 100 ms: %s, "
           "stop rc %ld\n", rc, prc, yesno(end < start + 100 * MS), stop);
    close_port(t);
}

static evtchn_port_t ipi;

static void check_evtchn(void)
{
    struct evtchn_alloc_unbound au = { .dom = DOMID_SELF, .remote_dom = 0 };
    long rc = event_channel_op(EVTCHNOP_alloc_unbound, &au);
    printk("compat32: alloc_unbound: rc %ld port %s\n", rc, au.port > 0 ? "allocated" : "none");
    struct evtchn_bind_ipi bi = { .vcpu = 0 };
    rc = event_channel_op(EVTCHNOP_bind_ipi, &bi);
    ipi = bi.port;
    struct evtchn_send send = { .port = ipi };
    long src = event_channel_op(EVTCHNOP_send, &send);
    uint64_t start = vi ? now_ns() : 0;
    long prc = vi ? poll1(ipi, start + 5000 * MS) : -1;
    printk("compat32: bind_ipi: rc %ld, send rc %ld, poll rc %ld, at once: %s\n", rc, src,
           prc, yesno(vi && now_ns() < start + 1000 * MS));
}

static void check_gnttab(void)
{
    struct gnttab_query_size q = { .dom = DOMID_SELF };
    long rc = grant_table_op(GNTTABOP_query_size, &q, 1);
    printk("compat32: gnttab query_size: rc %ld status %d frames %u max %s\n", rc, q.status,
           q.nr_frames, q.max_nr_frames >= q.nr_frames ? "ok" : "BAD");
    struct { xen_pfn_t frames[1]; uint32_t canary; } fl = { { CANARY }, CANARY };
    struct { struct gnttab_setup_table s; uint32_t canary; } st = {
        .s = { .dom = DOMID_SELF, .nr_frames = 1 }, .canary = CANARY };
    set_xen_guest_handle(st.s.frame_list, fl.frames);
    rc = grant_table_op(GNTTABOP_setup_table, &st.s, 1);
    printk("compat32: gnttab setup_table: rc %ld status %d frame %s, canaries %s %s\n", rc,
           st.s.status, fl.frames[0] != CANARY ? "written" : "NOT WRITTEN",
           intact(st.canary), intact(fl.canary));
}

static void check_memory_map(void)
{
    struct __attribute__((packed)) { uint64_t addr, size; uint32_t type; } map[8];
    struct { struct xen_memory_map m; uint32_t canary; } mm = {
        .m = { .nr_entries = 8 }, .canary = CANARY };
    memset(map, 0, sizeof(map));
    set_xen_guest_handle(mm.m.buffer, (void *)map);
    long rc = memory_op(XENMEM_memory_map, &mm.m);
    printk("compat32: memory_map: rc %ld, %u entries, first [%llx, %llx) type %u, canary %s\n",
           rc, mm.m.nr_entries, (unsigned long long)map[0].addr,
           (unsigned long long)(map[0].addr + map[0].size), map[0].type, intact(mm.canary));
}

/* shared_info in its x86_32 layout: wallclock, pending bits, masks, pending_sel. */
static void check_shared_info(void)
{
    struct { struct xen_add_to_physmap x; uint32_t canary; } a = {
        .x = { .domid = DOMID_SELF, .space = XENMAPSPACE_shared_info, .idx = 0,
               .gpfn = (uintptr_t)shared_info_page >> 12 }, .canary = CANARY };
    long rc = memory_op(XENMEM_add_to_physmap, &a.x);
    printk("compat32: add_to_physmap(shared_info): rc %ld, canary %s\n", rc, intact(a.canary));
    if (rc || !vi) return;
    si = (volatile struct shared_info *)shared_info_page;
    printk("compat32: wallclock: plausible %s\n", yesno(si->wc_sec > 1600000000u));

    unsigned int w = ipi / (8 * sizeof(xen_ulong_t));
    xen_ulong_t bit = (xen_ulong_t)1 << (ipi % (8 * sizeof(xen_ulong_t)));
    /* a masked port: pending is set, the vCPU is not told; unmasking tells it */
    si->evtchn_pending[w] &= ~bit;
    si->evtchn_mask[w] |= bit;
    vi->evtchn_pending_sel = 0;
    vi->evtchn_upcall_pending = 0;
    struct evtchn_send send = { .port = ipi };
    long src = event_channel_op(EVTCHNOP_send, &send);
    int pending = !!(si->evtchn_pending[w] & bit);
    unsigned long sel = vi->evtchn_pending_sel;
    int upcall = vi->evtchn_upcall_pending;
    struct evtchn_unmask um = { .port = ipi };
    long urc = event_channel_op(EVTCHNOP_unmask, &um);
    printk("compat32: masked send: rc %ld pending %d sel %lx upcall %d; unmask rc %ld: "
           "mask %d sel %lx upcall %d\n", src, pending, sel, upcall, urc,
           !!(si->evtchn_mask[w] & bit), (unsigned long)vi->evtchn_pending_sel,
           vi->evtchn_upcall_pending);
}

void kmain32(uint32_t start_info_paddr)
{
    uint32_t base = find_xen_leaves();
    if (!base) {
        debug_port_printk("compat32: no Xen CPUID leaves, halting\n");
        for (;;) asm volatile("cli; hlt");
    }
    uint32_t a, b, c, d;
    cpuid(base + 2, &a, &b, &c, &d);
    wrmsr(b, (uintptr_t)hypercall_page);
    struct hvm_start_info *start_info = GUEST_PTR(start_info_paddr);
    if (start_info->magic == XEN_HVM_START_MAGIC_VALUE) cmdline_load(start_info->cmdline_paddr);

    check_mode();
    check_version();
    check_pv_only();
    check_vcpu_info();
    check_timers();
    check_evtchn();
    check_gnttab();
    check_memory_map();
    check_shared_info();
    printk("compat32: powering off\n");
    shutdown(SHUTDOWN_poweroff);
}
