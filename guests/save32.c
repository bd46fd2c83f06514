/*
 * save32.elf: a 32-bit PVH guest for xl save / restore / migrate (tests/migration/
 * test_compat32_save.py). Built -m32 (start32.S: 32-bit protected mode, paging off,
 * interrupts off), so Xen's headers give it the x86_32 layouts; its hypercall-page MSR
 * write in 32-bit mode latches the domain's shared_info layout to x86_32 (Xen's
 * hvm_latch_shinfo_size), and a restored domain must keep that layout.
 *
 * It cooperates with suspend as savetest.c does (Linux's drivers/xen/manage.c): it
 * watches control/shutdown and data/request over the xenstore ring (xenbus.c), and on
 * "suspend" acknowledges and calls SCHEDOP_shutdown(SHUTDOWN_suspend), which returns 1
 * (cancelled, or a checkpoint: carry on) or 0 (a new domain: map shared_info again, take
 * the new store/console channels, watch again). It counts one tick per 10 ms wait and
 * keeps a 64 KiB memory pattern. mode=nopv: no PV drivers at all (no xenstore, no
 * HVM_PARAM_CALLBACK_IRQ): it yields in a loop and prints "save32: nopv counter=C sum=X"
 * through console_io every `every` yields (default 3000: mostly in the hypercall). Else data/request = S -> data/report =
 *   "seq=S counter=C sum=X dom=D resumed=R cancelled=K time=T evtchn=E wc=W early=E/W
 *    port=P"
 * and the same line on the console, where
 *   evtchn  ok if an IPI port sent while masked is pending in its 32-bit evtchn_pending
 *           word without touching the vCPU, and EVTCHNOP_unmask then sets selector bit
 *           port/32 of the 32-bit evtchn_pending_sel at offset 4 of vcpu_info (a 64-bit
 *           layout puts the mask words elsewhere and the selector at offset 8)
 *   wc      ok if the wallclock read at the x86_32 offset of shared_info is plausible
 *   early   both checks right after the last (re)connect, before the guest set
 *           HVM_PARAM_CALLBACK_IRQ (which latches the layout again): the layout the
 *           restored domain had from the start.
 */
#include "pv.h"

#define PATTERN_WORDS 16384
#define TICK_NS 10000000ull

static uint32_t pattern[PATTERN_WORDS];
static volatile uint32_t counter;
static unsigned int domid, resumed, cancelled;
static evtchn_port_t ipi;
static volatile struct shared_info *si;
static char early[80];  /* the checks right after (re)connecting */

_Static_assert(offsetof(struct vcpu_info, evtchn_pending_sel) == 4, "x86_32 vcpu_info");
_Static_assert(sizeof(xen_ulong_t) == 4, "built -m32");

static uint32_t mix(uint32_t x)
{
    x ^= x >> 16; x *= 0x7feb352dU;
    x ^= x >> 15; x *= 0x846ca68bU;
    return x ^ (x >> 16);
}

static uint32_t pattern_sum(void)
{
    uint32_t h = 2166136261U;
    for (unsigned int i = 0; i < PATTERN_WORDS; i++) { h ^= pattern[i]; h *= 16777619U; }
    return h;
}

static unsigned int read_domid(void)
{
    uint32_t base = find_xen_leaves(), a, b, c, d;
    cpuid(base + 4, &a, &b, &c, &d);
    return (a & XEN_HVM_CPUID_DOMID_PRESENT) ? c : ~0u;
}

static const char *evtchn_check(void)
{
    unsigned int w = ipi / 32;
    uint32_t bit = 1u << (ipi % 32), wsel = 1u << w;
    __atomic_fetch_or(&si->evtchn_mask[w], bit, __ATOMIC_SEQ_CST);
    __atomic_fetch_and(&si->evtchn_pending[w], ~bit, __ATOMIC_SEQ_CST);
    __atomic_fetch_and(&si->vcpu_info[0].evtchn_pending_sel, ~wsel, __ATOMIC_SEQ_CST);
    struct evtchn_send s = { .port = ipi };
    long rc = pv_event_channel_op(EVTCHNOP_send, &s);
    int pending = !!(si->evtchn_pending[w] & bit);
    int sel_early = !!(si->vcpu_info[0].evtchn_pending_sel & wsel);
    struct evtchn_unmask um = { .port = ipi };
    long urc = pv_event_channel_op(EVTCHNOP_unmask, &um);
    int sel = !!(si->vcpu_info[0].evtchn_pending_sel & wsel);
    int masked = !!(si->evtchn_mask[w] & bit);
    __atomic_fetch_and(&si->evtchn_pending[w], ~bit, __ATOMIC_SEQ_CST);
    __atomic_fetch_and(&si->vcpu_info[0].evtchn_pending_sel, ~wsel, __ATOMIC_SEQ_CST);
    if (rc || urc || !pending || sel_early || !sel || masked) {
        static char why[64];
        snprintf(why, sizeof(why), "bad(%ld,%ld,%d%d%d%d)", rc, urc, pending, sel_early,
                 sel, masked);
        return why;
    }
    return "ok";
}

static const char *wc_check(void)
{ return si->wc_sec > 1500000000u && si->wc_nsec < 1000000000u ? "ok" : "bad"; }

/* PV set-up, at boot and after a resume in a new domain. The event channel and wallclock
 * checks run once right after shared_info is mapped, before HVM_PARAM_CALLBACK_IRQ is set
 * (which latches the layout again): they see the layout the domain was restored with. */
static void pv_connect(void)
{
    long rc = cons_init();                      /* maps shared_info (xenbus.c) */
    struct evtchn_bind_ipi b = { .vcpu = 0 };
    if (!rc) rc = pv_event_channel_op(EVTCHNOP_bind_ipi, &b);
    ipi = b.port;
    si = pv_shared_info();
    if (!rc) {
        const char *ev = evtchn_check();
        snprintf(early, sizeof(early), "%s/%s", ev, wc_check());
    }
    if (!rc) rc = xb_init();
    if (!rc) rc = pv_control_init();
    if (!rc) rc = xb_write("control/feature-suspend", "1");
    if (!rc) rc = xb_watch("data/request", "req");
    if (rc) {
        printk("save32: PV set-up failed: %ld\n", rc);
        shutdown(SHUTDOWN_crash);
    }
}

static void answer_request(void)
{
    char value[32], line[200];
    if (xb_read("data/request", value, sizeof(value)) <= 0) return;
    uint32_t sum = pattern_sum();
    const char *ev = evtchn_check();
    snprintf(line, sizeof(line), "seq=%s counter=%u sum=%08x dom=%u resumed=%u cancelled=%u "
             "time=%llu evtchn=%s wc=%s early=%s port=%u", value, (unsigned int)counter, sum,
             domid, resumed, cancelled, (unsigned long long)pv_time_ns(), ev, wc_check(),
             early, ipi);
    xb_write("data/report", line);
    cprintf("save32: %s\n", line);
}

static void do_suspend(void)
{
    struct sched_shutdown s = { .reason = SHUTDOWN_suspend };
    cprintf("save32: suspending at counter=%u\n", (unsigned int)counter);
    long rc = sched_op(SCHEDOP_shutdown, &s);
    if (rc == 0) {  /* a new domain: everything Xen-side is new */
        resumed++;
        pv_evtchn_reset();
        xb_reset_state();
        hvc_reset();
        domid = read_domid();
        pv_connect();
        cprintf("save32: resumed in domain %u at counter=%u\n", domid,
                (unsigned int)counter);
    } else {
        cancelled++;
        cprintf("save32: suspend cancelled (%ld), carrying on\n", rc);
    }
}

static void on_event(const char *token)
{
    if (!strncmp(token, "req", 4)) answer_request();
}

static void handle_xenstore(void)
{
    pv_serve_events(do_suspend, on_event);
}

void kmain32(uint32_t start_info_paddr)
{
    uint32_t base = find_xen_leaves(), a, b, c, d;
    if (!base) for (;;) asm volatile("cli; hlt");
    cpuid(base + 2, &a, &b, &c, &d);
    wrmsr(b, (uintptr_t)hypercall_page);
    domid = read_domid();
    struct hvm_start_info *start = GUEST_PTR(start_info_paddr);
    if (start->magic == XEN_HVM_START_MAGIC_VALUE) cmdline_load(start->cmdline_paddr);
    for (unsigned int i = 0; i < PATTERN_WORDS; i++) pattern[i] = mix(0x5EED32u ^ i);
    char mode[16] = "pv";
    opt("mode", mode, sizeof(mode));
    if (streq(mode, "nopv")) {  /* no PV drivers: saved as it is, never told */
        unsigned long every = opt_ul("every", 3000);
        debug_port_printk("save32: no PV drivers, reporting every %lu yields\n", every);
        for (;;) {
            counter++;
            sched_op(SCHEDOP_yield, NULL);
            if (counter % every == 0)
                printk("save32: nopv counter=%u sum=%08x\n", (unsigned int)counter,
                       pattern_sum());
        }
    }
    pv_connect();
    cprintf("save32: ready in domain %u, sum=%08x\n", domid, pattern_sum());
    for (;;) {
        counter++;
        xb_poll();
        if (!xb_events_queued()) pv_wait_until(pv_time_ns() + TICK_NS);
        pv_ack();
        handle_xenstore();
    }
}
