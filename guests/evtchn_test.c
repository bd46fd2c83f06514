/*
 * pyxen's event channel / timer / grant table test guest (a PVH kernel, like hello.c).
 * Its command line chooses what it does; every result is one console line the tests read.
 *
 *   mode=timer period=NS ticks=N via=percpu|callback wait=block|hlt [abi=fifo]
 *       VIRQ_TIMER from a periodic timer, counted in the upcall handler; then single-shot
 *   mode=loopback n=N end=poweroff|idle [abi=fifo]
 *       grants a page to dom0, and drives pyxen's loopback backend through it (echo,
 *       the backend's grant checks, a notification round-trip benchmark); with the FIFO
 *       ABI every notification from the backend is taken from the queue by the upcall
 *   mode=fifo
 *       the FIFO ABI: Xen's errors, pending events carried over from 2-level, delivery
 *       order by priority (and by arrival within one), the event array limit, reset
 *   mode=latch
 *       the shared info layout Xen latches from the vCPU's mode: 32-bit after start.S
 *       wrote the hypercall page MSR in 32-bit protected mode (kmain does not write it
 *       again in this mode), 64-bit after HVM_PARAM_CALLBACK_IRQ is set in long mode
 *   mode=hostile
 *       event channel and grant table calls that Xen refuses, with the error codes
 *   mode=debugkey
 *       binds VIRQ_DEBUG on vCPU 0 (and the global VIRQ_CONSOLE / VIRQ_DOM_EXC, which a
 *       domU may bind but never receives), says it is ready, blocks until `xl debug-keys q`
 *       sends VIRQ_DEBUG, reports it and powers off
 */
#include "evtchn.h"

static uint32_t xen_base, tsc_khz;
static unsigned int domid;


void exception_report(uint64_t *frame)
{
    printk("evtchn test: unexpected exception %lu (error %lx) at rip %lx cs %lx\n",
           frame[0], frame[1], frame[2], frame[3]);
    shutdown(SHUTDOWN_crash);
}

static volatile int ap_up;
static char ap_stack[16384] __attribute__((aligned(16)));

/* vCPU 1: takes its upcalls (on its own vector) while blocked with interrupts on. */
void ap_main(unsigned int id)
{
    (void)id;
    idt_load256();
    lapic_enable();
    ap_up = 1;
    for (;;) { irq_enable(); sched_op(SCHEDOP_block, NULL); irq_disable(); }
}

static long start_vcpu1(void)
{
    struct vcpu_hvm_context ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.mode = VCPU_HVM_MODE_64B;
    ctx.cpu_regs.x86_64.rip = (uint64_t)ap_start64;
    ctx.cpu_regs.x86_64.rsp = (uint64_t)(ap_stack + sizeof(ap_stack));
    ctx.cpu_regs.x86_64.rdi = 1;
    ctx.cpu_regs.x86_64.rflags = 0x2;
    ctx.cpu_regs.x86_64.cr0 = 0x80000011;
    ctx.cpu_regs.x86_64.cr3 = (uint64_t)pml4;
    ctx.cpu_regs.x86_64.cr4 = 0x20;
    ctx.cpu_regs.x86_64.efer = 0x500;
    long rc = vcpu_op(VCPUOP_initialise, 1, &ctx);
    if (!rc) rc = vcpu_op(VCPUOP_up, 1, NULL);
    while (!rc && !ap_up) sched_op(SCHEDOP_yield, NULL);
    return rc;
}

static void setup_cpu(void)
{
    cpu_tables_init();
    idt_init256();
    idt_set_gate(UPCALL_VECTOR, evtchn_upcall_entry);
}

static void fail(const char *what, long rc)
{
    printk("evtchn test: %s failed: %ld\n", what, rc);
    shutdown(SHUTDOWN_crash);
}

/* abi=fifo on the command line: switch to the FIFO ABI now (before binding anything). */
static void abi_init(void)
{
    char abi[16] = "2l";
    opt("abi", abi, sizeof(abi));
    if (!streq(abi, "fifo")) return;
    long rc = evtchn_fifo_init();
    if (rc) fail("FIFO init", rc);
    printk("evtchn: FIFO ABI, link_bits %u\n", evtchn_fifo_link_bits);
}

/* Wait, interrupts off, until *count reaches target: sleep in SCHEDOP_poll until the port
 * is pending, then let the upcall that is on its way run (sti; hlt). */
static void wait_upcalls(volatile unsigned long *count, unsigned long target,
                         evtchn_port_t port)
{
    while (*count < target) {
        if (!evtchn_is_pending(port)) evtchn_poll(port, 0);
        else asm volatile("sti; hlt; cli" ::: "memory");
    }
}

/* --- mode=timer ----------------------------------------------------------------------- */

static volatile unsigned long ticks, tick_target;
static volatile uint64_t tick_time;

static void on_timer(evtchn_port_t port)
{
    (void)port;
    if (++ticks == tick_target) tick_time = xen_system_time();
}

static volatile unsigned long ipis;
static volatile unsigned int ipi_cpu = ~0u;
static void on_ipi(evtchn_port_t port) { (void)port; ipi_cpu = this_cpu(); ipis++; }

/* An IPI event channel bound to vCPU 1 arrives there, on vCPU 1's own upcall vector. */
static void ipi_test(void)
{
    evtchn_port_t port;
    long rc = start_vcpu1();
    if (!rc && evtchn_fifo) rc = evtchn_fifo_init_vcpu(1);
    if (!rc) rc = evtchn_upcall_percpu(1, UPCALL_VECTOR);
    if (!rc) rc = evtchn_bind_ipi(1, &port);
    if (rc) fail("vcpu 1 / ipi", rc);
    evtchn_set_handler(port, on_ipi);
    for (unsigned long i = 1; i <= 10; i++) {
        evtchn_send(port);
        while (ipis < i) sched_op(SCHEDOP_yield, NULL);
    }
    printk("ipi: %lu delivered on vcpu %u\n", ipis, ipi_cpu);
}

static void timer_mode(void)
{
    char via[16] = "percpu", wait[16] = "block";
    uint64_t period = opt_ul("period", 10000000), n = opt_ul("ticks", 100);
    opt("via", via, sizeof(via));
    opt("wait", wait, sizeof(wait));
    long rc;
    evtchn_port_t port;
    if ((rc = shared_info_map())) fail("shared info", rc);
    lapic_enable();
    rc = streq(via, "callback") ? evtchn_upcall_callback(UPCALL_VECTOR)
                                : evtchn_upcall_percpu(0, UPCALL_VECTOR);
    if (rc) fail("upcall vector", rc);
    abi_init();
    if ((rc = evtchn_bind_virq(VIRQ_TIMER, 0, &port))) fail("bind_virq", rc);
    evtchn_set_handler(port, on_timer);
    upcalls = 0;
    tick_target = n;
    struct vcpu_set_periodic_timer pt = { .period_ns = period };
    uint64_t t0 = xen_system_time();
    if ((rc = vcpu_op(VCPUOP_set_periodic_timer, 0, &pt))) fail("set_periodic_timer", rc);
    while (ticks < n) {
        if (streq(wait, "hlt")) asm volatile("sti; hlt; cli" ::: "memory");
        else { irq_enable(); sched_op(SCHEDOP_block, NULL); irq_disable(); }
    }
    vcpu_op(VCPUOP_stop_periodic_timer, 0, NULL);
    printk("timer: ticks=%lu upcalls=%lu elapsed=%lu period=%lu via=%s wait=%s\n",
           n, upcalls, tick_time - t0, period, via, wait);

    /* A period below 1 ms is refused. */
    struct vcpu_set_periodic_timer tiny = { .period_ns = 999999 };
    printk("timer: tiny period = %ld\n", vcpu_op(VCPUOP_set_periodic_timer, 0, &tiny));

    /* Single shot: in the past with VCPU_SSHOTTMR_future -> -ETIME; then 3 ms ahead. */
    struct vcpu_set_singleshot_timer ss = { .timeout_abs_ns = xen_system_time() - 1000000,
                                            .flags = VCPU_SSHOTTMR_future };
    long past = vcpu_op(VCPUOP_set_singleshot_timer, 0, &ss);
    long other = vcpu_op(VCPUOP_set_singleshot_timer, 1, &ss);
    ticks = 0;
    tick_target = 1;
    uint64_t deadline = xen_system_time() + 3000000;
    ss.timeout_abs_ns = deadline;
    ss.flags = 0;
    if ((rc = vcpu_op(VCPUOP_set_singleshot_timer, 0, &ss))) fail("singleshot", rc);
    while (!ticks) { irq_enable(); sched_op(SCHEDOP_block, NULL); irq_disable(); }
    printk("singleshot: past=%ld other_vcpu=%ld fired=%lu on_time=%d\n", past, other, ticks,
           tick_time >= deadline);

    /* A stopped single shot never fires: poll the timer port 30 ms with interrupts off. */
    ticks = 0;
    /* 10 s ahead: stopped long before it could fire, however slow this host is */
    ss.timeout_abs_ns = xen_system_time() + 10000000000ULL;
    vcpu_op(VCPUOP_set_singleshot_timer, 0, &ss);
    vcpu_op(VCPUOP_stop_singleshot_timer, 0, NULL);
    evtchn_poll(port, xen_system_time() + 30000000);
    printk("singleshot stopped: pending=%d ticks=%lu\n", evtchn_test_and_clear(port), ticks);

    /* The old set_timer_op hypercall drives the same single-shot timer. */
    ticks = 0;
    deadline = xen_system_time() + 2000000;
    rc = HYPERCALL2(__HYPERVISOR_set_timer_op, deadline, 0);
    while (!ticks) { irq_enable(); sched_op(SCHEDOP_block, NULL); irq_disable(); }
    printk("set_timer_op: rc=%ld fired=%lu on_time=%d\n", rc, ticks, tick_time >= deadline);
    if (vcpu_op(VCPUOP_is_up, 1, NULL) != -XEN_ENOENT) ipi_test();
    printk("timer: done\n");
    shutdown(SHUTDOWN_poweroff);
}

/* --- mode=loopback ---------------------------------------------------------------------- */

#define REQ_REF 8
static struct loopback_page req __attribute__((aligned(4096)));
static char other_page[4096] __attribute__((aligned(4096)));
static evtchn_port_t lb_port;
static volatile unsigned long lb_events;   /* FIFO: backend notifications taken */
static unsigned long lb_expected;
static void on_lb(evtchn_port_t port) { (void)port; lb_events++; }

static int32_t request(uint32_t cmd, uint32_t a0, uint32_t a1, uint32_t a2)
{
    req.cmd = cmd; req.arg0 = a0; req.arg1 = a1; req.arg2 = a2; req.status = 0x7777;
    __atomic_store_n(&req.seq, req.seq + 1, __ATOMIC_SEQ_CST);
    evtchn_send(lb_port);
    if (evtchn_fifo) wait_upcalls(&lb_events, ++lb_expected, lb_port);  /* one per reply */
    while (__atomic_load_n(&req.done, __ATOMIC_SEQ_CST) != req.seq)
        if (!evtchn_test_and_clear(lb_port)) evtchn_poll(lb_port, 0);
    return req.status;
}

static void loopback_mode(void)
{
    char end[16] = "poweroff";
    unsigned long n = opt_ul("n", 200);
    opt("end", end, sizeof(end));
    long rc;
    if ((rc = shared_info_map())) fail("shared info", rc);
    if ((rc = gnttab_map_table())) fail("grant table", rc);
    abi_init();
    if (evtchn_fifo) {
        lapic_enable();
        if ((rc = evtchn_upcall_percpu(0, UPCALL_VECTOR))) fail("upcall vector", rc);
    }
    gnttab_grant_access(REQ_REF, 0, (uint64_t)&req >> 12, 0);
    if ((rc = evtchn_alloc_unbound(0, &lb_port))) fail("alloc_unbound", rc);
    evtchn_set_handler(lb_port, on_lb);
    printk("loopback: port=%u gref=%u\n", lb_port, REQ_REF);
    if (evtchn_fifo) wait_upcalls(&lb_events, ++lb_expected, lb_port);  /* backend's hello */
    else while (!evtchn_test_and_clear(lb_port)) evtchn_poll(lb_port, 0);
    printk("loopback: connected, request page flags %x\n", gnttab[REQ_REF].flags);

    const char *msg = "ping from the guest";
    size_t len = strlen(msg);
    memcpy(req.data, msg, len + 1);
    int32_t st = request(LOOPBACK_ECHO, (uint32_t)len, 0, 0);
    int ok = st == 0;
    for (size_t i = 0; i < len; i++) ok &= req.reply[i] == (uint8_t)(msg[i] + 1);
    printk("loopback: echo status=%d %s\n", st, ok ? "ok" : "MISMATCH");

    /* The backend's grant checks, as Xen makes them. */
    gnttab_grant_access(9, 5, (uint64_t)other_page >> 12, 0);      /* for d5, not dom0 */
    gnttab_grant_access(10, 0, (uint64_t)other_page >> 12, 1);     /* read-only */
    gnttab[11].domid = 0; gnttab[11].frame = (uint64_t)other_page >> 12;
    __atomic_store_n(&gnttab[11].flags, GTF_transitive, __ATOMIC_SEQ_CST);
    gnttab_grant_access(12, 0, 0xfffff, 0);                        /* not RAM */
    printk("loopback: map out_of_range = %d\n", request(LOOPBACK_MAP, 100000, 1, 0));
    printk("loopback: map foreign = %d\n", request(LOOPBACK_MAP, 9, 1, 0));
    printk("loopback: map readonly_for_write = %d\n", request(LOOPBACK_MAP, 10, 0, 0));
    printk("loopback: map transitive = %d\n", request(LOOPBACK_MAP, 11, 1, 0));
    printk("loopback: map unused = %d\n", request(LOOPBACK_MAP, 100, 1, 0));
    printk("loopback: map bad_frame = %d\n", request(LOOPBACK_MAP, 12, 1, 0));
    st = request(LOOPBACK_MAP, 10, 1, 0);
    uint16_t mapped_flags = gnttab[10].flags;
    int revoke_mapped = gnttab_end_access(10);
    int st2 = request(LOOPBACK_UNMAP, 0, 0, 0);
    uint16_t unmapped_flags = gnttab[10].flags;
    int revoke_unmapped = gnttab_end_access(10);
    printk("loopback: map readonly = %d flags %x end_access %d; unmap = %d flags %x "
           "end_access %d\n", st, mapped_flags, revoke_mapped, st2, unmapped_flags,
           revoke_unmapped);
    memcpy(other_page + 100, "copy me", 8);
    gnttab_grant_access(13, 0, (uint64_t)other_page >> 12, 1);
    st = request(LOOPBACK_COPY, 13, 100, 8);
    printk("loopback: copy = %d \"%s\" flags %x\n", st, (char *)req.reply, gnttab[13].flags);
    printk("loopback: copy beyond page = %d\n", request(LOOPBACK_COPY, 13, 4000, 200));
    printk("loopback: still served: echo %d\n", request(LOOPBACK_ECHO, 1, 0, 0));

    /* guest -> dom0 -> guest notification round trip vs a bare exit round trip */
    uint64_t t0 = rdtsc();
    for (unsigned long i = 0; i < n; i++) outb(0x80, 0);
    uint64_t t1 = rdtsc();
    printk("loopback: ping loop\n");  /* bench/evtchn.py samples the VMM's CPU time here */
    uint64_t exit_cycles = t1 - t0;
    t1 = rdtsc();
    for (unsigned long i = 0; i < n; i++) request(LOOPBACK_PING, 0, 0, 0);
    uint64_t t2 = rdtsc();
    printk("loopback: bench n=%lu exit_cycles=%lu rtt_cycles=%lu tsc_khz=%u\n", n,
           exit_cycles / n, (t2 - t1) / n, tsc_khz);
    if (evtchn_fifo)
        printk("loopback: fifo events=%lu expected=%lu\n", lb_events, lb_expected);
    if (streq(end, "idle")) {
        printk("loopback: idle\n");
        for (;;) sched_op(SCHEDOP_block, NULL);
    }
    printk("loopback: done\n");
    shutdown(SHUTDOWN_poweroff);
}

/* --- mode=hostile ---------------------------------------------------------------------- */

static char self_page[4096] __attribute__((aligned(4096)));
static char dest_page[4096] __attribute__((aligned(4096)));

static int16_t guest_copy(uint32_t ref, domid_t dom, uint16_t offset, uint16_t len,
                          uint64_t dest_gfn, int to_gref)
{
    struct gnttab_copy c;
    memset(&c, 0, sizeof(c));
    c.source.u.ref = ref; c.source.domid = dom; c.source.offset = offset;
    c.dest.u.gmfn = dest_gfn; c.dest.domid = DOMID_SELF;
    c.len = len;
    c.flags = GNTCOPY_source_gref;
    if (to_gref) { c.dest.u.ref = ref; c.flags = GNTCOPY_dest_gref; c.source.u.gmfn = dest_gfn;
                   c.source.domid = DOMID_SELF; c.dest.domid = dom; c.dest.offset = offset; }
    long rc = grant_table_op(GNTTABOP_copy, &c, 1);
    return rc ? (int16_t)rc : c.status;
}

#define SHOW(name, expr) printk("hostile: %s = %ld\n", name, (long)(expr))

static void hostile_mode(void)
{
    long rc;
    evtchn_port_t p, q;
    if ((rc = shared_info_map())) fail("shared info", rc);
    if ((rc = gnttab_map_table())) fail("grant table", rc);

    SHOW("send never opened", evtchn_send(77));
    evtchn_alloc_unbound(0, &p);
    evtchn_close(p);
    SHOW("send closed", evtchn_send(p));
    SHOW("close closed", evtchn_close(p));
    SHOW("close port 0", evtchn_close(0));
    SHOW("close out of range", evtchn_close(100000));
    SHOW("unmask out of range", evtchn_unmask(5000));
    SHOW("bind_interdomain dom0 bad port", evtchn_bind_interdomain(0, 999, &q));
    SHOW("bind_interdomain no such domain", evtchn_bind_interdomain(42, 1, &q));
    evtchn_alloc_unbound(5, &p);                 /* unbound for d5, not for us */
    SHOW("bind_interdomain not for us", evtchn_bind_interdomain(DOMID_SELF, p, &q));
    struct evtchn_alloc_unbound au = { .dom = 0, .remote_dom = DOMID_SELF };
    SHOW("alloc_unbound in dom0", event_channel_op(EVTCHNOP_alloc_unbound, &au));
    struct evtchn_status es = { .dom = 0, .port = 1 };
    SHOW("status of dom0", event_channel_op(EVTCHNOP_status, &es));
    struct evtchn_reset er = { .dom = 0 };
    SHOW("reset dom0", event_channel_op(EVTCHNOP_reset, &er));
    evtchn_bind_virq(VIRQ_TIMER, 0, &p);
    SHOW("bind_virq twice", evtchn_bind_virq(VIRQ_TIMER, 0, &q));
    SHOW("bind_virq 99", evtchn_bind_virq(99, 0, &q));
    SHOW("bind_virq global on vcpu 1", evtchn_bind_virq(VIRQ_DOM_EXC, 1, &q));
    SHOW("bind_ipi vcpu 9", evtchn_bind_ipi(9, &q));
    struct evtchn_bind_vcpu bv = { .port = p, .vcpu = 9 };
    SHOW("bind_vcpu vcpu 9", event_channel_op(EVTCHNOP_bind_vcpu, &bv));
    /* FIFO calls that fail leave the domain on 2-level (checked by what follows) */
    SHOW("fifo set_priority on 2-level", evtchn_set_priority(p, 3));
    SHOW("fifo expand_array on 2-level", evtchn_expand_array(evtchn_fifo_spare_gfn()));
    SHOW("fifo init_control not ram", evtchn_init_control(0, 0xfffffffUL, 0));
    SHOW("poll out of range", evtchn_poll(5000, 0));
    SHOW("evtchn bad pointer", event_channel_op(EVTCHNOP_send, (void *)0xdead0000000UL));
    evtchn_bind_ipi(0, &p);
    es.dom = DOMID_SELF; es.port = p;
    rc = event_channel_op(EVTCHNOP_status, &es);
    printk("hostile: ipi status = %ld status %u vcpu %u\n", rc, es.status, es.vcpu);
    evtchn_send(p);
    SHOW("ipi pending after send", evtchn_test_and_clear(p));
    /* loopback inside the guest: the new end is born pending, as in Xen */
    evtchn_alloc_unbound(DOMID_SELF, &p);
    evtchn_bind_interdomain(DOMID_SELF, p, &q);
    SHOW("loopback bound pending", evtchn_test_and_clear(q));
    evtchn_send(p);
    SHOW("loopback delivered", evtchn_test_and_clear(q));

    /* grant tables */
    struct gnttab_setup_table su = { .dom = 0, .nr_frames = 1 };
    uint64_t frames[2];
    set_xen_guest_handle(su.frame_list, frames);
    grant_table_op(GNTTABOP_setup_table, &su, 1);
    SHOW("setup_table dom0", su.status);
    su.dom = DOMID_SELF; su.nr_frames = 65;
    grant_table_op(GNTTABOP_setup_table, &su, 1);
    SHOW("setup_table 65 frames", su.status);
    su.nr_frames = 2;
    grant_table_op(GNTTABOP_setup_table, &su, 1);
    printk("hostile: setup_table 2 frames = %d frame0 %s\n", su.status,
           frames[0] == (uint64_t)gnttab >> 12 ? "ok" : "WRONG");
    struct gnttab_query_size qs = { .dom = DOMID_SELF };
    grant_table_op(GNTTABOP_query_size, &qs, 1);
    printk("hostile: query_size = %d nr_frames %u max %u\n", qs.status, qs.nr_frames,
           qs.max_nr_frames);
    struct gnttab_set_version sv = { .version = 2 };
    rc = grant_table_op(GNTTABOP_set_version, &sv, 1);
    printk("hostile: set_version 2 = %ld version %u\n", rc, sv.version);
    sv.version = 1;
    SHOW("set_version 1", grant_table_op(GNTTABOP_set_version, &sv, 1));
    struct gnttab_get_version gv = { .dom = DOMID_SELF };
    rc = grant_table_op(GNTTABOP_get_version, &gv, 1);
    printk("hostile: get_version = %ld version %u\n", rc, gv.version);
    struct xen_add_to_physmap xatp = { .domid = DOMID_SELF, .space = XENMAPSPACE_grant_table,
                                       .idx = 64, .gpfn = (uint64_t)dest_page >> 12 };
    SHOW("map grant frame 64", memory_op(XENMEM_add_to_physmap, &xatp));
    SHOW("grant op bad cmd", grant_table_op(99, &gv, 1));

    memcpy(self_page + 8, "granted to myself", 18);
    gnttab_grant_access(20, 0, (uint64_t)self_page >> 12, 0);        /* for dom0 */
    gnttab_grant_access(21, domid, (uint64_t)self_page >> 12, 1);    /* for us, r/o */
    SHOW("copy ref out of range", guest_copy(100000, DOMID_SELF, 0, 8, (uint64_t)dest_page >> 12, 0));
    SHOW("copy ref granted to dom0", guest_copy(20, DOMID_SELF, 0, 8, (uint64_t)dest_page >> 12, 0));
    SHOW("copy from dom0 grant", guest_copy(1, 0, 0, 8, (uint64_t)dest_page >> 12, 0));
    SHOW("copy into read-only grant", guest_copy(21, DOMID_SELF, 0, 8, (uint64_t)dest_page >> 12, 1));
    SHOW("copy beyond page", guest_copy(21, DOMID_SELF, 4090, 18, (uint64_t)dest_page >> 12, 0));
    rc = guest_copy(21, DOMID_SELF, 8, 18, (uint64_t)dest_page >> 12, 0);
    printk("hostile: copy own grant = %ld \"%s\" flags %x\n", rc, dest_page, gnttab[21].flags);
    printk("hostile: still alive\n");
    shutdown(SHUTDOWN_poweroff);
}

/* --- mode=fifo ------------------------------------------------------------------------- */

static evtchn_port_t fifo_seen[16];
static volatile unsigned long fifo_events;
static void on_fifo(evtchn_port_t port)
{
    if (fifo_events < 16) fifo_seen[fifo_events] = port;
    fifo_events++;
}

#define SHOWF(name, expr) printk("fifo: %s = %ld\n", name, (long)(expr))

static void fifo_mode(void)
{
    long rc;
    evtchn_port_t early, p[4], q;
    uint64_t spare = evtchn_fifo_spare_gfn();
    if ((rc = shared_info_map())) fail("shared info", rc);
    lapic_enable();
    if ((rc = evtchn_upcall_percpu(0, UPCALL_VECTOR))) fail("upcall vector", rc);

    /* Still 2-level: raise a port (interrupts are off: the upcall waits in the LAPIC). */
    if ((rc = evtchn_bind_ipi(0, &early))) fail("bind_ipi", rc);
    evtchn_set_handler(early, on_fifo);
    evtchn_send(early);
    SHOWF("2-level pending before the switch", evtchn_is_pending(early));

    /* init_control's checks, in Xen's order; none of these switches ABI */
    SHOWF("init_control vcpu 9", evtchn_init_control(9, spare, 0));
    SHOWF("init_control offset beyond page", evtchn_init_control(0, spare, 4096 - 64));
    SHOWF("init_control offset unaligned", evtchn_init_control(0, spare, 4));
    SHOWF("init_control not ram", evtchn_init_control(0, 0xfffffffUL, 0));
    SHOWF("set_priority before init", evtchn_set_priority(early, 3));
    SHOWF("expand_array before init", evtchn_expand_array(spare));

    rc = evtchn_fifo_init();
    printk("fifo: init = %ld link_bits %u\n", rc, evtchn_fifo_link_bits);
    if (rc) fail("FIFO init", rc);
    SHOWF("init_control again", evtchn_init_control(0, spare, 0));
    SHOWF("init_control vcpu 1 not ram", evtchn_init_control(1, 0xfffffffUL, 0));

    /* The event raised under 2-level arrives from the FIFO queue. */
    wait_upcalls(&fifo_events, 1, early);
    printk("fifo: carried over %s\n", fifo_seen[0] == early ? "ok" : "WRONG PORT");

    /* Priorities: queue 3 before 7 before 9; within 7, arrival order (not port order). */
    for (int i = 0; i < 4; i++) {
        if ((rc = evtchn_bind_ipi(0, &p[i]))) fail("bind_ipi", rc);
        evtchn_set_handler(p[i], on_fifo);
    }
    SHOWF("set_priority 9", evtchn_set_priority(p[0], 9));
    SHOWF("set_priority 3", evtchn_set_priority(p[2], 3));
    SHOWF("set_priority 16", evtchn_set_priority(p[1], 16));
    SHOWF("set_priority bad port", evtchn_set_priority(5000, 3));
    fifo_events = 0;
    evtchn_send(p[3]);   /* priority 7 */
    evtchn_send(p[0]);   /* 9 */
    evtchn_send(p[1]);   /* 7 */
    evtchn_send(p[2]);   /* 3 */
    wait_upcalls(&fifo_events, 4, p[2]);
    char order[32];
    int n = 0;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            if (fifo_seen[i] == p[j]) n += snprintf(order + n, sizeof(order) - n, "p%d ", j);
    printk("fifo: delivery order %s\n", order);

    /* A masked event is held (pending, not queued) until EVTCHNOP_unmask. */
    fifo_events = 0;
    evtchn_mask(p[1]);
    evtchn_send(p[1]);
    asm volatile("sti; nop; nop; cli" ::: "memory");
    SHOWF("masked: delivered", fifo_events);
    SHOWF("masked: pending", evtchn_is_pending(p[1]));
    SHOWF("unmask", evtchn_unmask(p[1]));
    wait_upcalls(&fifo_events, 1, p[1]);
    SHOWF("unmasked: delivered", fifo_events);

    /* Ports beyond the one array page need more pages: up to 128 pages (131072 ports). */
    SHOWF("expand_array not ram", evtchn_expand_array(0xfffffffUL));
    long ok = 0;
    for (int i = 1; i < 128; i++) ok += evtchn_expand_array(spare) == 0;
    SHOWF("expand_array to 128 pages", ok);
    SHOWF("expand_array page 129", evtchn_expand_array(spare));

    /* EVTCHNOP_reset closes everything and goes back to 2-level. */
    SHOWF("reset", evtchn_reset());
    SHOWF("set_priority after reset", evtchn_set_priority(early, 3));
    if ((rc = evtchn_bind_ipi(0, &q))) fail("bind_ipi after reset", rc);
    evtchn_send(q);
    SHOWF("2-level again: pending", evtchn_is_pending(q));
    printk("fifo: done\n");
    shutdown(SHUTDOWN_poweroff);
}

/* --- mode=latch ------------------------------------------------------------------------ */

/* A 32-bit guest's shared_info (Xen's x86_32 layout), seen from this 64-bit guest. */
struct vcpu_info32 {
    uint8_t evtchn_upcall_pending, evtchn_upcall_mask;
    uint16_t pad;
    uint32_t evtchn_pending_sel;
    uint32_t arch[6];
    struct vcpu_time_info time;
};
struct shared_info32 {
    struct vcpu_info32 vcpu_info[XEN_LEGACY_MAX_VCPUS];
    uint32_t evtchn_pending[32], evtchn_mask[32];
    uint32_t wc_version, wc_sec, wc_nsec;
    uint32_t arch[6];
    uint32_t wc_sec_hi;  /* arch_shared_info.wc_sec_hi on x86_32 */
};
_Static_assert(sizeof(struct vcpu_info32) == 64, "x86_32 vcpu_info");
_Static_assert(offsetof(struct shared_info32, wc_version) == 2304, "x86_32 shared_info");
_Static_assert(offsetof(struct shared_info32, wc_sec_hi) == 2340, "x86_32 shared_info");

static evtchn_port_t bind_ipis_up_to(evtchn_port_t want)
{
    evtchn_port_t p = 0;
    long rc;
    while (p < want)
        if ((rc = evtchn_bind_ipi(0, &p))) fail("bind_ipi", rc);
    return p;
}

static void latch_mode(void)
{
    long rc;
    if ((rc = shared_info_map())) fail("shared info", rc);
    volatile struct shared_info32 *s32 = (void *)shared;
    volatile struct shared_info *s64 = shared;
    printk("latch: 32-bit wallclock version %u sec_ok %d; 64-bit wallclock version %u\n",
           s32->wc_version, s32->wc_sec > 1600000000u, s64->wc_version);
    /* selector bit 0 stands for ports 0-31, which the console and xenstore backends may
     * raise at any time: port 33's is bit 1 of a 32-bit word (bit 0 of a 64-bit one) */
    evtchn_port_t p = bind_ipis_up_to(33);
    unsigned before = (s32->vcpu_info[0].evtchn_pending_sel >> 1) & 1;
    evtchn_send(p);
    printk("latch: port %u pending %d selector bit 1 %u -> %u upcall %u; 64-bit selector %lx\n",
           p, !!(s32->evtchn_pending[p / 32] & (1u << (p % 32))), before,
           (s32->vcpu_info[0].evtchn_pending_sel >> 1) & 1,
           s32->vcpu_info[0].evtchn_upcall_pending, s64->vcpu_info[0].evtchn_pending_sel);
    rc = evtchn_upcall_callback(UPCALL_VECTOR);  /* from long mode: 64-bit from now on */
    printk("latch: callback from 64-bit mode = %ld; 64-bit wallclock version %u sec_ok %d\n",
           rc, s64->wc_version, s64->wc_sec > 1600000000u);
    s64->vcpu_info[0].evtchn_upcall_pending = 0;
    p = bind_ipis_up_to(65);
    evtchn_send(p);
    printk("latch: port %u selector bit 1 %lu upcall %u\n", p,
           (s64->vcpu_info[0].evtchn_pending_sel >> 1) & 1,
           s64->vcpu_info[0].evtchn_upcall_pending);
    shutdown(SHUTDOWN_poweroff);
}

/* --- mode=debugkey --------------------------------------------------------------------- */

static volatile unsigned long debug_virqs;
static volatile unsigned int debug_cpu = ~0u;
static volatile unsigned long global_virqs;  /* VIRQ_CONSOLE, VIRQ_DOM_EXC: never here */
static void on_debug(evtchn_port_t port) { (void)port; debug_cpu = this_cpu(); debug_virqs++; }
static void on_global(evtchn_port_t port) { (void)port; global_virqs++; }

static void debugkey_mode(void)
{
    evtchn_port_t port, console, dom_exc;
    long rc;
    if ((rc = shared_info_map())) fail("shared info", rc);
    lapic_enable();
    if ((rc = evtchn_upcall_percpu(0, UPCALL_VECTOR))) fail("upcall vector", rc);
    if ((rc = evtchn_bind_virq(VIRQ_DEBUG, 0, &port))) fail("bind VIRQ_DEBUG", rc);
    if ((rc = evtchn_bind_virq(VIRQ_CONSOLE, 0, &console))) fail("bind VIRQ_CONSOLE", rc);
    if ((rc = evtchn_bind_virq(VIRQ_DOM_EXC, 0, &dom_exc))) fail("bind VIRQ_DOM_EXC", rc);
    evtchn_set_handler(port, on_debug);
    evtchn_set_handler(console, on_global);
    evtchn_set_handler(dom_exc, on_global);
    printk("evtchn: VIRQ_DEBUG bound to port %u (VIRQ_CONSOLE %u, VIRQ_DOM_EXC %u), waiting\n",
           port, console, dom_exc);
    while (!debug_virqs) { irq_enable(); sched_op(SCHEDOP_block, NULL); irq_disable(); }
    printk("evtchn: VIRQ_DEBUG received on vcpu %u (%lu VIRQ_CONSOLE/VIRQ_DOM_EXC)\n",
           debug_cpu, global_virqs);
    shutdown(SHUTDOWN_poweroff);
}

void kmain(uint32_t start_info_paddr)
{
    char mode[32];
    setup_cpu();
    xen_base = find_xen_leaves();
    if (!xen_base) for (;;) asm volatile("cli; hlt");
    uint32_t a, b, c, d;
    struct hvm_start_info *si = (struct hvm_start_info *)(uint64_t)start_info_paddr;
    cmdline_load(si->cmdline_paddr);
    if (!opt("mode", mode, sizeof(mode))) mode[0] = 0;
    cpuid(xen_base + 2, &a, &b, &c, &d);
    if (!streq(mode, "latch"))  /* the page is there already: start.S wrote it in 32-bit mode */
        wrmsr(b, (uint64_t)hypercall_page);
    cpuid(xen_base + 3, &a, &b, &c, &d);
    tsc_khz = c;
    cpuid(xen_base + 4, &a, &b, &c, &d);
    domid = (a & XEN_HVM_CPUID_DOMID_PRESENT) ? c : ~0u;
    printk("evtchn test: domain %u, command line \"%s\"\n", domid, cmdline);
    if (streq(mode, "timer")) timer_mode();
    if (streq(mode, "loopback")) loopback_mode();
    if (streq(mode, "fifo")) fifo_mode();
    if (streq(mode, "latch")) latch_mode();
    if (streq(mode, "hostile")) hostile_mode();
    if (streq(mode, "debugkey")) debugkey_mode();
    printk("evtchn test: unknown mode \"%s\"\n", mode);
    shutdown(SHUTDOWN_crash);
}
