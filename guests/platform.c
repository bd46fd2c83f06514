/*
 * pyxen's platform test guest (a PVH kernel): how a vCPU takes events, halts, and makes
 * hypercalls without the hypercall page. Its command line chooses what it does; every
 * result is one console line the tests read (tests/vmm/test_vmm_platform.py).
 *
 *   mode=callback n=N
 *       the domain-wide callback vector (HVM_PARAM_CALLBACK_IRQ, type vector) with the
 *       local APIC software-disabled and no EOI ever written: N IPI events (half sent
 *       with interrupts on, half with them off and taken after `sti; hlt`), an upcall
 *       left pending that must be re-injected, and single-shot timers waking `sti; hlt`
 *   mode=hlt
 *       vCPU 1 runs `cli; hlt` (Xen takes it down), is brought back with VCPUOP_up and
 *       halts again; after one byte of console input vCPU 0 runs `cli; hlt` too, which
 *       powers the domain off
 *   mode=idle
 *       `sti; hlt` for ever, no event source (what an idle vCPU costs)
 *   mode=vmcall insn=vmcall|vmmcall
 *       every hypercall from C made with that instruction instead of the hypercall page,
 *       with the results; one from ring 3 (Xen: -EPERM); the cost of one
 */
#include "evtchn.h"

#define CB_VECTOR 0xe5
#define LAPIC_SVR ((volatile uint32_t *)0xfee000f0UL)

static uint32_t xen_base, tsc_khz;

static int use_vmmcall, in_user_vmcall;
static void vprint(const char *fmt, ...);
static void vmcall_finish(void) __attribute__((noreturn));

void exception_report(uint64_t *frame)
{
    if (in_user_vmcall && frame[0] == 13 && (frame[3] & 3) == 3) {
        /* kvm_pvm raises #GP for a ring-3 VMCALL before any exit (Xen: -EPERM) */
        in_user_vmcall = 0;
        vprint("vmcall: from ring 3 = #GP\n");
        vmcall_finish();  /* on the exception stack: never returns */
    }
    printk("platform test: unexpected exception %lu (error %lx) at rip %lx cs %lx\n",
           frame[0], frame[1], frame[2], frame[3]);
    shutdown(SHUTDOWN_crash);
}

static void fail(const char *what, long rc)
{
    printk("platform test: %s failed: %ld\n", what, rc);
    shutdown(SHUTDOWN_crash);
}

static inline void sti_hlt_cli(void) { asm volatile("sti; hlt; cli" ::: "memory"); }

/* --- secondary vCPU ------------------------------------------------------------------- */

static volatile int ap_state;  /* 1: started; 2: resumed after its first hlt */
static char ap_stack[16384] __attribute__((aligned(16)));

void ap_main(unsigned int id)
{
    (void)id;
    ap_state = 1;
    asm volatile("cli; hlt" ::: "memory");  /* Xen: this vCPU goes down */
    ap_state = 2;                            /* VCPUOP_up resumes it here */
    asm volatile("cli; hlt" ::: "memory");
    for (;;) sched_op(SCHEDOP_yield, NULL);
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
    return rc;
}

/* --- mode=callback ---------------------------------------------------------------------- */

/* The callback vector's handler: the 2-level scan, with no EOI (the LAPIC is off). While
 * `keep_pending` is non-zero it leaves evtchn_upcall_pending set, which Xen answers by
 * injecting the vector again as soon as interrupts are back on. */
static volatile unsigned long cb_taken, keep_pending, ipis, ticks;
static volatile uint64_t tick_time;
static evtchn_handler_t cb_handlers[EVTCHN_2L_NR_CHANNELS];

void callback_upcall(void)
{
    struct vcpu_info *vi = &shared->vcpu_info[0];
    cb_taken++;
    if (keep_pending) {
        keep_pending--;
        return;
    }
    vi->evtchn_upcall_pending = 0;
    unsigned long sel = __atomic_exchange_n(&vi->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
    while (sel) {
        unsigned int w = __builtin_ctzl(sel);
        sel &= sel - 1;
        unsigned long bits;
        while ((bits = shared->evtchn_pending[w] & ~shared->evtchn_mask[w])) {
            unsigned int b = __builtin_ctzl(bits);
            evtchn_port_t port = w * 64 + b;
            __atomic_fetch_and(&shared->evtchn_pending[w], ~(1UL << b), __ATOMIC_SEQ_CST);
            if (cb_handlers[port]) cb_handlers[port](port);
        }
    }
}

extern void callback_entry(void);
asm(".text\n"
    "callback_entry:\n"
    "  pushq %rax; pushq %rcx; pushq %rdx; pushq %rsi; pushq %rdi\n"
    "  pushq %r8; pushq %r9; pushq %r10; pushq %r11\n"
    "  cld\n"
    "  call callback_upcall\n"
    "  popq %r11; popq %r10; popq %r9; popq %r8\n"
    "  popq %rdi; popq %rsi; popq %rdx; popq %rcx; popq %rax\n"
    "  iretq\n");

static void on_ipi(evtchn_port_t port) { (void)port; ipis++; }
static void on_timer(evtchn_port_t port) { (void)port; ticks++; tick_time = xen_system_time(); }

static void callback_mode(void)
{
    unsigned long n = opt_ul("n", 20), spins = 0;
    evtchn_port_t ipi, timer;
    long rc;
    if ((rc = shared_info_map())) fail("shared info", rc);
    *LAPIC_SVR = 0xff;  /* software-disabled: a LAPIC interrupt would be dropped */
    idt_init256();
    idt_set_gate(CB_VECTOR, callback_entry);
    if ((rc = evtchn_bind_ipi(0, &ipi))) fail("bind_ipi", rc);
    if ((rc = evtchn_bind_virq(VIRQ_TIMER, 0, &timer))) fail("bind_virq", rc);
    cb_handlers[ipi] = on_ipi;
    cb_handlers[timer] = on_timer;
    if ((rc = evtchn_upcall_callback(CB_VECTOR))) fail("callback vector", rc);
    printk("callback: vector 0x%x, LAPIC SVR 0x%x\n", CB_VECTOR, *LAPIC_SVR);
    /* GSI 5, then PCI INTx (dev 3, INTB), then GSI 0 ("none"): a PVH domain has no IOAPIC
     * or PIC to raise them on, so Xen keeps the vector (the value reads back). */
    static const uint64_t vias[] = { 5, (1ULL << 56) | (3 << 11) | 1, 0 };
    for (unsigned int k = 0; k < 3; k++) {
        struct xen_hvm_param p = { .domid = DOMID_SELF, .index = HVM_PARAM_CALLBACK_IRQ,
                                   .value = vias[k] };
        long set = hvm_op(HVMOP_set_param, &p);
        p.value = ~0ULL;
        long get = hvm_op(HVMOP_get_param, &p);
        printk("callback: via %lx set=%ld get=%ld reads %lx\n", vias[k], set, get, p.value);
    }

    /* Half the events sent with interrupts on (taken as the hypercall returns), half with
     * them off (taken once `sti; hlt` opens the window). */
    unsigned long on = 0, off = 0;
    for (unsigned long i = 1; i <= n; i++) {
        if (i <= n / 2) {
            irq_enable();
            evtchn_send(ipi);
            while (ipis < i) { cpu_relax(); spins++; }
            irq_disable();
            on++;
        } else {
            evtchn_send(ipi);
            while (ipis < i) sti_hlt_cli();
            off++;
        }
    }
    printk("callback: ipis=%lu (irq on %lu, off %lu) taken=%lu\n", ipis, on, off, cb_taken);

    /* Level semantics: an upcall whose handler leaves evtchn_upcall_pending set comes
     * back each time interrupts are re-enabled, with no new event. */
    unsigned long before = cb_taken, target = ipis + 1;
    keep_pending = 3;
    evtchn_send(ipi);
    while (ipis < target) sti_hlt_cli();
    printk("callback: left pending 3 times, taken %lu times for one event\n",
           cb_taken - before);

    /* Single-shot timers wake a vCPU sitting in `sti; hlt`. */
    unsigned long wakes = opt_ul("wakes", 5);
    uint64_t total = 0, worst = 0;
    for (unsigned long k = 0; k < wakes; k++) {
        unsigned long t0 = ticks;
        struct vcpu_set_singleshot_timer ss = { .timeout_abs_ns = xen_system_time() + 2000000 };
        if ((rc = vcpu_op(VCPUOP_set_singleshot_timer, 0, &ss))) fail("singleshot", rc);
        while (ticks == t0) sti_hlt_cli();
        uint64_t late = tick_time - ss.timeout_abs_ns;
        total += late;
        if (late > worst) worst = late;
    }
    printk("callback: %lu timer wakes from hlt, late avg %lu us max %lu us\n", wakes,
           total / wakes / 1000, worst / 1000);
    printk("callback: LAPIC SVR 0x%x at the end, no EOI written\n", *LAPIC_SVR);
    printk("callback: done\n");
    shutdown(SHUTDOWN_poweroff);
}

/* --- mode=hlt ------------------------------------------------------------------------------ */

static void wait_is_up(unsigned int vcpu, long want)
{
    while (vcpu_op(VCPUOP_is_up, vcpu, NULL) != want) sched_op(SCHEDOP_yield, NULL);
}

static void hlt_mode(void)
{
    long rc;
    if ((rc = start_vcpu1())) fail("vcpu 1", rc);
    while (!ap_state) cpu_relax();
    wait_is_up(1, 0);
    printk("hlt: vcpu 1 down after cli;hlt (is_up=0)\n");
    if ((rc = vcpu_op(VCPUOP_up, 1, NULL))) fail("VCPUOP_up", rc);
    while (ap_state != 2) cpu_relax();
    wait_is_up(1, 0);
    printk("hlt: vcpu 1 brought up resumed after its hlt, down again\n");
    printk("hlt: waiting for console input\n");
    char c;
    while (console_io(CONSOLEIO_read, 1, &c) <= 0 && hvc_read(&c, 1) == 0)
        sched_op(SCHEDOP_yield, NULL);  /* console_io, or the PV ring once printk uses it */
    printk("hlt: vcpu 0 cli;hlt\n");
    asm volatile("cli; hlt" ::: "memory");
    printk("hlt: vcpu 0 still running after cli;hlt\n");
    shutdown(SHUTDOWN_crash);
}

/* --- mode=vmcall ---------------------------------------------------------------------------- */

/* Current Linux's way: the instruction itself, number in rax, args rdi rsi rdx r10 r8. */
static long xhc(unsigned int nr, unsigned long a1, unsigned long a2, unsigned long a3)
{
    register unsigned long r10 asm("r10") = 0;
    register unsigned long r8 asm("r8") = 0;
    long ret = nr;
    if (use_vmmcall)
        asm volatile("vmmcall" : "+a"(ret), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                     : : "memory", "cc");
    else
        asm volatile("vmcall" : "+a"(ret), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                     : : "memory", "cc");
    return ret;
}

static void vprint(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    xhc(__HYPERVISOR_console_io, CONSOLEIO_write, strlen(buf), (unsigned long)buf);
}

static uint64_t user_vmcall(uint64_t nr)
{
    long ret = (long)nr;
    asm volatile("vmcall" : "+a"(ret) : "D"(0UL), "S"(0UL) : "memory", "cc");
    return (uint64_t)ret;
}

static uint64_t user_spin(uint64_t n)
{
    uint64_t acc = 1;
    for (uint64_t i = 0; i < n; i++) { acc = acc * 3 + i; asm volatile("" : "+r"(acc)); }
    return acc;
}

static char user_stack[8192] __attribute__((aligned(16)));

static void vmcall_mode(void)
{
    char insn[16] = "vmcall";
    opt("insn", insn, sizeof(insn));
    use_vmmcall = streq(insn, "vmmcall");
    long ver = xhc(__HYPERVISOR_xen_version, XENVER_version, 0, 0);
    vprint("vmcall: insn=%s version=%lx\n", insn, ver);
    xen_extraversion_t extra;
    memset(extra, 0, sizeof(extra));
    long rc = xhc(__HYPERVISOR_xen_version, XENVER_extraversion, (unsigned long)extra, 0);
    vprint("vmcall: extraversion rc=%ld \"%s\"\n", rc, extra);
    struct xen_hvm_param p = { .domid = DOMID_SELF, .index = HVM_PARAM_STORE_EVTCHN };
    rc = xhc(__HYPERVISOR_hvm_op, HVMOP_get_param, (unsigned long)&p, 0);
    vprint("vmcall: get_param store_evtchn rc=%ld nonzero=%d\n", rc, p.value != 0);
    struct evtchn_alloc_unbound au = { .dom = DOMID_SELF, .remote_dom = 0 };
    rc = xhc(__HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound, (unsigned long)&au, 0);
    struct evtchn_status es = { .dom = DOMID_SELF, .port = au.port };
    long rc2 = xhc(__HYPERVISOR_event_channel_op, EVTCHNOP_status, (unsigned long)&es, 0);
    vprint("vmcall: alloc_unbound rc=%ld status rc=%ld state=%u\n", rc, rc2, es.status);
    vprint("vmcall: unknown hypercall = %ld\n", xhc(60, 0, 0, 0));
    vprint("vmcall: bad pointer = %ld\n",
           xhc(__HYPERVISOR_xen_version, XENVER_extraversion, 0xdead0000000UL, 0));
    unsigned long n = opt_ul("n", 20), spin = opt_ul("spin", 0);
    uint64_t t0 = rdtsc();
    for (unsigned long i = 0; i < n; i++) xhc(__HYPERVISOR_xen_version, XENVER_version, 0, 0);
    uint64_t t1 = rdtsc();
    vprint("vmcall: bench n=%lu cycles=%lu tsc_khz=%u\n", n, (t1 - t0) / n, tsc_khz);
    if (spin) {  /* right after many VMCALLs: what computing then costs (no exits) */
        vprint("vmcall: spinning in ring 3\n");
        run_user(user_spin, spin, user_stack + sizeof(user_stack));
        vprint("vmcall: spun\n");
    }
    in_user_vmcall = 1;  /* last: a #GP continues in vmcall_finish on the exception stack */
    uint64_t user = run_user(user_vmcall, __HYPERVISOR_xen_version,
                             user_stack + sizeof(user_stack));
    in_user_vmcall = 0;
    vprint("vmcall: from ring 3 = %ld\n", (long)user);
    vmcall_finish();
}

static void vmcall_finish(void)
{
    vprint("vmcall: done\n");
    struct sched_shutdown s = { .reason = SHUTDOWN_poweroff };
    for (;;) xhc(__HYPERVISOR_sched_op, SCHEDOP_shutdown, (unsigned long)&s, 0);
}

void kmain(uint32_t start_info_paddr)
{
    char mode[32];
    cpu_tables_init();
    idt_init256();
    xen_base = find_xen_leaves();
    if (!xen_base) for (;;) asm volatile("cli; hlt");
    uint32_t a, b, c, d;
    cpuid(xen_base + 3, &a, &b, &c, &d);
    tsc_khz = c;
    struct hvm_start_info *si = (struct hvm_start_info *)(uint64_t)start_info_paddr;
    cmdline_load(si->cmdline_paddr);
    if (!opt("mode", mode, sizeof(mode))) mode[0] = 0;
    if (streq(mode, "vmcall")) vmcall_mode();  /* before anything uses the page */
    cpuid(xen_base + 2, &a, &b, &c, &d);
    wrmsr(b, (uint64_t)hypercall_page);
    printk("platform test: command line \"%s\"\n", cmdline);
    if (streq(mode, "callback")) callback_mode();
    if (streq(mode, "hlt")) hlt_mode();
    if (streq(mode, "idle")) {
        printk("idle: sti;hlt for ever\n");
        for (;;) sti_hlt_cli();
    }
    printk("platform test: unknown mode \"%s\"\n", mode);
    shutdown(SHUTDOWN_crash);
}
