/*
 * pyxen's test guest: a PVH kernel whose behaviour is chosen by its command line.
 *
 *   (default) / mode=hello   banner, ring-3 computation, SMP bring-up, poweroff
 *   mode=poweroff|reboot|suspend|crash|watchdog|soft_reset   SCHEDOP_shutdown(reason)
 *   mode=triplefault         triple fault (no IDT)
 *   mode=idle                stays alive, blocked; answers xl shutdown/reboot (PV control)
 *   mode=block               stays alive in SCHEDOP_block, no PV drivers at all
 *   mode=spin                stays busy in ring 3 (never exits to the VMM)
 *   mode=probe               informational hypercalls, each result printed, poweroff
 *   mode=misbehave           bad pointers / unknown hypercalls, prints the errors, poweroff
 *   mode=echo                echoes console input (CONSOLEIO_read, or the PV console ring
 *                            once the backend sends it there) until it reads 'q'
 *
 * printk writes each line twice, as a Xen guest may: to console_io (the hypervisor log,
 * `xl dmesg`) and to the PV console ring (`xl console`); "hvc=0" leaves the ring alone.
 *   mode=bench n=N [smp=1]   N ignored port writes, then N hypercalls (bench/hypercall.py);
 *                            smp=1: then N hypercalls on each of vCPUs 0 and 1 at once
 *   mode=xenbus|badconsole|xsflood   PV console ring and xenbus (pvdemo.c)
 *   mode=fuzz seed=S n=N     N pseudo-random hostile hypercalls, a summary, poweroff (fuzz.c)
 *   mode=balloon [out=N]     memory map, shared info moves, ballooning (balloon.c)
 *   mode=hotplug             vCPU hot-plug: watches cpu/N/availability, VCPUOP_up/down
 *   mode=balloond            balloons to xenstore memory/target (xl mem-set; balloond.c)
 *   mode=vnuma               its vNUMA topology: XENMEM_get_vnumainfo, SRAT, SLIT (vnuma.c)
 *   mode=disk                blkfront: pattern/checksum tests on every vbd, hot-plug (disk.c)
 *   mode=dirty [mib= rate=]  dirties memory from ring 3, checks it, reports (dirty.c)
 */
#include "guest.h"
#include "pv.h"

void pv_main(const char *mode, unsigned int domid);  /* pvdemo.c */
void pv_idle(void);                                  /* pvdemo.c */
void balloon_main(const struct hvm_start_info *si);  /* balloon.c */
void balloond_main(const struct hvm_start_info *si); /* balloond.c */
void vnuma_main(const struct hvm_start_info *si);    /* vnuma.c */
void disk_main(unsigned int domid);                  /* disk.c */
void dirty_main(uint64_t ram_end);                   /* dirty.c */
void fuzz_main(uint64_t seed, unsigned long n, uint64_t ram_end, unsigned int domid);

#define MAX_VCPUS 32
#define COLLATZ_N 300000

static struct hvm_start_info *start_info;
static uint32_t xen_base;
static unsigned int domid;
static volatile int ap_ready[MAX_VCPUS];
static char ap_stacks[MAX_VCPUS][8192] __attribute__((aligned(16)));
static char user_stack[16384] __attribute__((aligned(16)));
static char shared_info_page[4096] __attribute__((aligned(4096)));


static const char *mode_names[] = {
    [SHUTDOWN_poweroff] = "poweroff", [SHUTDOWN_reboot] = "reboot",
    [SHUTDOWN_suspend] = "suspend", [SHUTDOWN_crash] = "crash",
    [SHUTDOWN_watchdog] = "watchdog", [SHUTDOWN_soft_reset] = "soft_reset",
};

void exception_report(uint64_t *frame)
{
    printk("pyxen hello: unexpected exception %lu (error %lx) at rip %lx cs %lx\n",
           frame[0], frame[1], frame[2], frame[3]);
    shutdown(SHUTDOWN_crash);
}

static void setup_cpu(void)
{
    cpu_tables_init();
    asm volatile("lidt idt_ptr(%%rip)" ::: "memory");
}

static unsigned int cpuid_vcpu_id(void)
{
    uint32_t a, b, c, d;
    cpuid(xen_base + 4, &a, &b, &c, &d);
    return (a & XEN_HVM_CPUID_VCPU_ID_PRESENT) ? b : ~0u;
}

static uint64_t user_cpl(uint64_t unused)
{
    uint16_t cs;
    (void)unused;
    asm volatile("mov %%cs, %0" : "=r"(cs));
    return cs & 3;
}

static uint64_t user_collatz(uint64_t n)
{
    uint64_t total = 0;
    for (uint64_t i = 1; i <= n; i++)
        for (uint64_t x = i; x != 1; total++)
            x = (x & 1) ? 3 * x + 1 : x >> 1;
    return total;
}

static uint64_t user_spin(uint64_t x)
{
    for (;;) { x = x * 6364136223846793005ULL + 1442695040888963407ULL; asm volatile("" : "+r"(x)); }
    return x;
}

static int hotplug_mode;  /* mode=hotplug: APs stay up, blocked, until taken down */
static volatile unsigned long bench_smp_n;   /* mode=bench smp=1: the APs' loop */
static volatile int bench_go, bench_done;

void ap_main(unsigned int id)
{
    printk("pyxen hello: vcpu %u is up (cpuid vcpu id %u)\n", id, cpuid_vcpu_id());
    ap_ready[id] = 1;
    if (bench_smp_n) {
        while (!bench_go) cpu_relax();
        for (unsigned long i = 0; i < bench_smp_n; i++) xen_version(XENVER_version, NULL);
        __atomic_add_fetch(&bench_done, 1, __ATOMIC_SEQ_CST);
    }
    if (hotplug_mode)
        for (;;) sched_op(SCHEDOP_block, NULL);  /* VCPUOP_down from vCPU 0 parks us */
    vcpu_op(VCPUOP_down, id, NULL);
    for (;;) sched_op(SCHEDOP_block, NULL);
}

static unsigned int bring_up_vcpus(void)
{
    unsigned int n = 1;
    for (unsigned int v = 1; v < MAX_VCPUS; v++) {
        if (vcpu_op(VCPUOP_is_up, v, NULL) == -XEN_ENOENT) break;
        struct vcpu_hvm_context ctx;
        memset(&ctx, 0, sizeof(ctx));
        ctx.mode = VCPU_HVM_MODE_64B;
        ctx.cpu_regs.x86_64.rip = (uint64_t)ap_start64;
        ctx.cpu_regs.x86_64.rsp = (uint64_t)(ap_stacks[v] + sizeof(ap_stacks[v]));
        ctx.cpu_regs.x86_64.rdi = v;
        ctx.cpu_regs.x86_64.rflags = 0x2;
        ctx.cpu_regs.x86_64.cr0 = 0x80000011;   /* PG | ET | PE */
        ctx.cpu_regs.x86_64.cr3 = (uint64_t)pml4;
        ctx.cpu_regs.x86_64.cr4 = 0x20;         /* PAE */
        ctx.cpu_regs.x86_64.efer = 0x500;       /* LMA | LME */
        long rc = vcpu_op(VCPUOP_initialise, v, &ctx);
        if (!rc) rc = vcpu_op(VCPUOP_up, v, NULL);
        if (rc) { printk("pyxen hello: vcpu %u failed to start: %ld\n", v, rc); continue; }
        while (!ap_ready[v]) sched_op(SCHEDOP_yield, NULL);
        n++;
    }
    return n;
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
    return (int)(rc ? rc : vcpu_op(VCPUOP_up, v, NULL));
}

/* Linux's xen-hotplug (drivers/xen/cpu_hotplug.c) in miniature: on every change under
 * cpu/, read cpu/N/availability for each possible vCPU and bring it up ("online": first
 * time VCPUOP_initialise + up, then up) or down ("offline": VCPUOP_down). */
static void hotplug_scan(int *initialised)
{
    char path[32], value[16];
    for (unsigned int v = 1; v < MAX_VCPUS; v++) {
        if (vcpu_op(VCPUOP_is_up, v, NULL) == -XEN_ENOENT) break;
        snprintf(path, sizeof(path), "cpu/%u/availability", v);
        if (xb_read(path, value, sizeof(value)) < 0) continue;
        int want = !strncmp(value, "online", 7), up = vcpu_op(VCPUOP_is_up, v, NULL) == 1;
        if (want && !up) {
            long rc = initialised[v] ? vcpu_op(VCPUOP_up, v, NULL) : start_vcpu(v);
            initialised[v] = 1;
            if (rc) printk("pyxen hello: vcpu %u failed to come up: %ld\n", v, rc);
            else printk("pyxen hello: vcpu %u online\n", v);
        } else if (!want && up) {
            vcpu_op(VCPUOP_down, v, NULL);
            printk("pyxen hello: vcpu %u offline\n", v);
        }
    }
}

static void hotplug_main(void)
{
    static int initialised[MAX_VCPUS];
    char path[128], token[32];
    hotplug_mode = 1;
    long rc = xb_init();
    if (!rc) rc = pv_control_init();
    if (!rc) rc = xb_watch("cpu", "cpu");
    if (rc) {
        printk("pyxen hello: hotplug: no xenbus (%s)\n", xb_error_name(rc));
        shutdown(SHUTDOWN_crash);
    }
    printk("pyxen hello: hotplug ready\n");
    for (;;) {
        pv_ack();
        int scan = 0;
        while (xb_next_event(path, sizeof(path), token, sizeof(token))) {
            int reason = pv_control_event(token);
            if (reason >= 0) shutdown(reason);
            if (!strncmp(token, "cpu", 4)) scan = 1;
        }
        if (scan) hotplug_scan(initialised);
        xb_wait();  /* hotplug_scan's reads may have taken the next event's kick */
    }
}

static const char *check_shared_info(void)
{
    struct xen_add_to_physmap xatp = {
        .domid = DOMID_SELF, .space = XENMAPSPACE_shared_info, .idx = 0,
        .gpfn = (uint64_t)shared_info_page >> 12,
    };
    if (memory_op(XENMEM_add_to_physmap, &xatp)) return "add_to_physmap failed";
    struct shared_info *s = (struct shared_info *)shared_info_page;
    if (s->wc_sec < 1600000000u) return "bad wallclock";
    struct vcpu_register_vcpu_info info = {
        .mfn = (uint64_t)shared_info_page >> 12, .offset = 2048,
    };
    if (vcpu_op(VCPUOP_register_vcpu_info, 0, &info)) return "register_vcpu_info failed";
    struct vcpu_info *vi = (struct vcpu_info *)(shared_info_page + 2048);
    if (vi->time.version & 1 || !vi->time.tsc_to_system_mul) return "bad vcpu_time_info";
    return "ok";
}

static void hello(void)
{
    char user_line[128];
    uint64_t cpl = run_user(user_cpl, 0, user_stack + sizeof(user_stack));
    uint64_t steps = run_user(user_collatz, COLLATZ_N, user_stack + sizeof(user_stack));
    snprintf(user_line, sizeof(user_line),
             "pyxen hello: ring %lu computed collatz steps 1..%u = %lu\n", cpl, COLLATZ_N, steps);
    printk("%s", user_line);
    debug_port_printk("pyxen hello: domain %u says hello on port 0xe9\n", domid);
    printk("pyxen hello: shared info %s\n", check_shared_info());
    printk("pyxen hello: vcpu 0 is up (cpuid vcpu id %u)\n", cpuid_vcpu_id());
    printk("pyxen hello: %u vcpus up\n", bring_up_vcpus());
    printk("pyxen hello: powering off\n");
    shutdown(SHUTDOWN_poweroff);
}

/* End of the first RAM region of the start_info memory map. */
static uint64_t ram_end(void)
{
    struct hvm_memmap_table_entry *m = (void *)start_info->memmap_paddr;
    return m[0].addr + m[0].size;
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* Xen system time (ns) from a vcpu_time_info, as a PV clock reader computes it. */
static uint64_t system_time_now(volatile struct vcpu_time_info *t)
{
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
    return st + (uint64_t)(((unsigned __int128)d * mul) >> 32);
}

/* Informational hypercalls, each result printed (tests compare them with the config). */
static void probe(void)
{
    static xen_capabilities_info_t caps;
    static xen_commandline_t xen_cmdline;
    long rc;
    printk("pyxen probe: shared info %s\n", check_shared_info());

    struct __attribute__((packed)) { uint64_t addr, size; uint32_t type; } map[8];
    struct xen_memory_map mm = { .nr_entries = 8 };
    set_xen_guest_handle(mm.buffer, (void *)map);
    rc = memory_op(XENMEM_memory_map, &mm);
    printk("pyxen probe: memory_map rc %ld, %u entries, first [%lx, %lx) type %u\n", rc,
           mm.nr_entries, map[0].addr, map[0].addr + map[0].size, map[0].type);
    domid_t self = DOMID_SELF;
    printk("pyxen probe: reservation current %ld maximum %ld pages\n",
           memory_op(XENMEM_current_reservation, &self),
           memory_op(XENMEM_maximum_reservation, &self));
    xen_version(XENVER_capabilities, caps);
    printk("pyxen probe: capabilities \"%s\"\n", caps);
    struct xen_feature_info fi = { .submap_idx = 0 };
    rc = xen_version(XENVER_get_features, &fi);
    printk("pyxen probe: features rc %ld submap %x\n", rc, fi.submap);
    printk("pyxen probe: pagesize %ld\n", xen_version(XENVER_pagesize, NULL));
    xen_domain_handle_t h;
    xen_version(XENVER_guest_handle, h);
    char hex[33];
    for (int i = 0; i < 16; i++) {
        hex[2 * i] = "0123456789abcdef"[h[i] >> 4];
        hex[2 * i + 1] = "0123456789abcdef"[h[i] & 15];
    }
    hex[32] = 0;
    printk("pyxen probe: guest handle %s\n", hex);
    xen_version(XENVER_commandline, xen_cmdline);
    printk("pyxen probe: xen commandline \"%s\"\n", xen_cmdline);

    struct xen_hvm_param p = { .domid = DOMID_SELF, .index = HVM_PARAM_STORE_EVTCHN };
    rc = hvm_op(HVMOP_get_param, &p);
    printk("pyxen probe: get_param(STORE_EVTCHN) rc %ld value %lu\n", rc, (unsigned long)p.value);
    p.index = HVM_PARAM_IOREQ_PFN;
    printk("pyxen probe: get_param(IOREQ_PFN) rc %ld\n", hvm_op(HVMOP_get_param, &p));
    p.index = HVM_PARAM_CALLBACK_IRQ;
    p.value = (2ULL << 56) | 0xf3;
    rc = hvm_op(HVMOP_set_param, &p);
    p.value = 0;
    hvm_op(HVMOP_get_param, &p);
    printk("pyxen probe: set_param(CALLBACK_IRQ) rc %ld, reads back %lx\n", rc,
           (unsigned long)p.value);

    volatile struct vcpu_time_info *t =
        &((struct vcpu_info *)(shared_info_page + 2048))->time;
    uint64_t deadline = system_time_now(t) + 10000000;
    struct sched_poll poll = { .nr_ports = 0, .timeout = deadline };
    rc = sched_op(SCHEDOP_poll, &poll);
    printk("pyxen probe: poll(10 ms) rc %ld, woke after the deadline: %s\n", rc,
           system_time_now(t) + 1000000 >= deadline ? "yes" : "no");
    struct sched_watchdog wd = { .id = 0, .timeout = 60 };
    long id = sched_op(SCHEDOP_watchdog, &wd);
    wd.id = (uint32_t)id;
    wd.timeout = 0;
    printk("pyxen probe: watchdog id %ld, disarm rc %ld\n", id, sched_op(SCHEDOP_watchdog, &wd));
    printk("pyxen probe: powering off\n");
    shutdown(SHUTDOWN_poweroff);
}

static void misbehave(void)
{
    char buf[16];
    long rc;
    rc = xen_version(XENVER_extraversion, (void *)0xdeadbeef000UL);
    printk("pyxen misbehave: xen_version(extraversion, unmapped pointer) = %ld\n", rc);
    rc = console_io(CONSOLEIO_write, 16, (void *)0xf0000000UL);
    printk("pyxen misbehave: console_io(write, pointer outside RAM) = %ld\n", rc);
    rc = console_io(CONSOLEIO_write, 64, (void *)(ram_end() - 8));
    printk("pyxen misbehave: console_io(write, buffer across the end of RAM) = %ld\n", rc);
    rc = hypercall(__HYPERVISOR_arch_7, 1, 2, 3, 4, 5);
    printk("pyxen misbehave: hypercall 55 = %ld\n", rc);
    rc = hypercall(127, 0, 0, 0, 0, 0);
    printk("pyxen misbehave: hypercall 127 = %ld\n", rc);
    rc = sched_op(99, NULL);
    printk("pyxen misbehave: sched_op(99) = %ld\n", rc);
    struct xen_foreign_memory_map fmap;
    memset(&fmap, 0, sizeof(fmap));
    fmap.domid = DOMID_SELF;
    rc = memory_op(XENMEM_set_memory_map, &fmap);
    printk("pyxen misbehave: memory_op(set_memory_map) = %ld\n", rc);
    rc = vcpu_op(VCPUOP_is_up, 5000, NULL);
    printk("pyxen misbehave: vcpu_op(is_up, 5000) = %ld\n", rc);
    rc = vcpu_op(VCPUOP_initialise, 0, (void *)0xdeadbeef000UL);
    printk("pyxen misbehave: vcpu_op(initialise, unmapped pointer) = %ld\n", rc);
    (void)buf;
    printk("pyxen misbehave: still alive, powering off\n");
    shutdown(SHUTDOWN_poweroff);
}

static void echo(void)
{
    char buf[64], line[80];
    printk("pyxen echo: ready\n");
    for (;;) {
        long n = console_io(CONSOLEIO_read, sizeof(buf) - 1, buf);
        if (n <= 0) n = (long)hvc_read(buf, sizeof(buf) - 1);  /* once the ring is used */
        if (n > 0) {
            buf[n] = 0;
            snprintf(line, sizeof(line), "pyxen echo: %s\n", buf);
            printk("%s", line);
            for (long i = 0; i < n; i++)
                if (buf[i] == 'q') shutdown(SHUTDOWN_poweroff);
        } else {
            sched_op(SCHEDOP_yield, NULL);
        }
    }
}


static void bench(unsigned long n, int smp)
{
    printk("pyxen bench: exit loop start n=%lu\n", n);
    for (unsigned long i = 0; i < n; i++) outb(0x80, 0);
    printk("pyxen bench: exit loop done\n");
    printk("pyxen bench: hypercall loop start n=%lu\n", n);
    for (unsigned long i = 0; i < n; i++) xen_version(XENVER_version, NULL);
    printk("pyxen bench: hypercall loop done\n");
    if (smp) {  /* the same loop on every vCPU at once */
        bench_smp_n = n;
        unsigned int nv = bring_up_vcpus();
        printk("pyxen bench: smp hypercall loop start n=%lu vcpus=%u\n", n, nv);
        bench_go = 1;
        for (unsigned long i = 0; i < n; i++) xen_version(XENVER_version, NULL);
        while (bench_done < (int)nv - 1) cpu_relax();
        printk("pyxen bench: smp hypercall loop done\n");
    }
    shutdown(SHUTDOWN_poweroff);
}

void kmain(uint32_t start_info_paddr)
{
    char mode[32];
    setup_cpu();
    xen_base = find_xen_leaves();
    if (!xen_base) {
        debug_port_printk("pyxen hello: no Xen CPUID leaves, halting\n");
        for (;;) asm volatile("cli; hlt");
    }
    uint32_t a, b, c, d;
    cpuid(xen_base + 2, &a, &b, &c, &d);        /* hypercall page count and MSR */
    wrmsr(b, (uint64_t)hypercall_page);
    cpuid(xen_base + 4, &a, &b, &c, &d);
    domid = (a & XEN_HVM_CPUID_DOMID_PRESENT) ? c : ~0u;

    start_info = (struct hvm_start_info *)(uint64_t)start_info_paddr;
    if (start_info->magic != XEN_HVM_START_MAGIC_VALUE) {
        printk("pyxen hello: bad start_info magic %x\n", start_info->magic);
        shutdown(SHUTDOWN_crash);
    }
    cmdline_load(start_info->cmdline_paddr);

    long ver = xen_version(XENVER_version, NULL);
    xen_extraversion_t extra;
    memset(extra, 0, sizeof(extra));
    xen_version(XENVER_extraversion, extra);
    extra[sizeof(extra) - 1] = 0;
    printk("pyxen hello: Xen %ld.%ld%s, domain %u, %u module(s)\n",
           ver >> 16, ver & 0xffff, extra, domid, start_info->nr_modules);
    printk("pyxen hello: command line \"%s\"\n", cmdline);

    if (!opt("mode", mode, sizeof(mode)) || streq(mode, "hello")) hello();
    for (unsigned int r = 0; r < sizeof(mode_names) / sizeof(mode_names[0]); r++) {
        if (streq(mode, mode_names[r])) {
            printk("pyxen hello: shutting down (%s)\n", mode_names[r]);
            shutdown(r);
        }
    }
    if (streq(mode, "triplefault")) {
        printk("pyxen hello: triple faulting\n");
        triple_fault();
    }
    if (streq(mode, "idle")) {
        printk("pyxen hello: idle\n");
        pv_idle();
    }
    if (streq(mode, "hotplug")) hotplug_main();
    if (streq(mode, "block")) {
        printk("pyxen hello: blocked, no PV drivers\n");
        for (;;) sched_op(SCHEDOP_block, NULL);
    }
    if (streq(mode, "spin")) {
        printk("pyxen hello: spinning in ring 3\n");
        run_user(user_spin, 1, user_stack + sizeof(user_stack));
    }
    if (streq(mode, "misbehave")) misbehave();
    if (streq(mode, "probe")) probe();
    if (streq(mode, "echo")) echo();
    if (streq(mode, "balloon")) balloon_main(start_info);
    if (streq(mode, "balloond")) balloond_main(start_info);
    if (streq(mode, "vnuma")) vnuma_main(start_info);
    if (streq(mode, "bench")) bench(opt_ul("n", 100000), (int)opt_ul("smp", 0));
    if (streq(mode, "fuzz")) {
        unsigned long seed = opt_ul("seed", 1);
        fuzz_main(seed, opt_ul("n", 2000), ram_end(), domid);
    }
    if (streq(mode, "disk")) disk_main(domid);
    if (streq(mode, "dirty")) dirty_main(ram_end());
    if (streq(mode, "xenbus") || streq(mode, "badconsole") || streq(mode, "xsflood"))
        pv_main(mode, domid);
    printk("pyxen hello: unknown mode \"%s\"\n", mode);
    shutdown(SHUTDOWN_crash);
}
