/*
 * savetest: a guest for xl save / restore / migrate (tests/migration). It counts in
 * ring 3 (native speed on kvm_pvm) and keeps a memory pattern; on request it reports
 * the counter and the pattern's checksum, and it cooperates with suspend as a Xen guest
 * with PV drivers does (Linux's drivers/xen/manage.c):
 *
 *   mode=pv (default)  watches control/shutdown and data/request. "suspend": acknowledge,
 *                      SCHEDOP_shutdown(SHUTDOWN_suspend); it returns 1 (cancelled, or a
 *                      checkpoint: carry on) or 0 (a new domain: map shared_info again,
 *                      take the new store/console channels, watch again, re-advertise).
 *                      data/request = S -> data/report = "seq=S counter=C sum=X dom=D
 *                      resumed=R cancelled=K time=T" (T: Xen system time, ns) and the
 *                      same line on the console.
 *   mode=nopv          no PV drivers at all (HVM_PARAM_CALLBACK_IRQ stays 0): a report
 *                      line on the debug port (xl dmesg) every `every` chunks.
 *   pattern_mb=N       size of the pattern (default 16), at 16 MiB.
 *   dirty=1            the counting loop rewrites one pattern word per page as it goes
 *                      (same value: pages get dirty, the checksum stays).
 *   disk=1             (mode=pv) connects blkfront to device/vbd/51712 (xvda), writes
 *                      a 64 KiB pattern at sector 0; each report reads it back and says
 *                      disk=ok or disk=bad (disk=- without a disk). After a resume in a
 *                      new domain it forgets the old rings and grants and connects again.
 */
#include "blkfront.h"

#define PATTERN_BASE (16ull << 20)
#define CHUNK 20000000ull

static char user_stack[16384] __attribute__((aligned(16)));
static volatile uint64_t counter;
static uint64_t pattern_words, seed = 0x5EED5EED, dirty_cursor;
static unsigned int opt_dirty, opt_disk, domid, resumed, cancelled;
static struct blkfront disk;
#define DISK_DEVID 51712
#define DISK_SECTORS 128
void ap_main(unsigned int id) { (void)id; for (;;) asm volatile("cli; hlt"); }

void exception_report(uint64_t *frame)
{
    printk("savetest: unexpected exception %lu (error %lx) at rip %lx cs %lx\n",
           frame[0], frame[1], frame[2], frame[3]);
    shutdown(SHUTDOWN_crash);
}

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* --- ring 3 ------------------------------------------------------------------------ */

static uint64_t user_fill(uint64_t unused)
{
    (void)unused;
    uint64_t *w = (uint64_t *)PATTERN_BASE;
    for (uint64_t i = 0; i < pattern_words; i++) w[i] = mix(seed ^ i);
    return 0;
}

static uint64_t user_sum(uint64_t unused)
{
    (void)unused;
    const uint64_t *w = (const uint64_t *)PATTERN_BASE;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (uint64_t i = 0; i < pattern_words; i++) { h ^= w[i]; h *= 0x100000001b3ULL; }
    return h;
}

static uint64_t user_count(uint64_t n)
{
    volatile uint64_t *w = (volatile uint64_t *)PATTERN_BASE;
    uint64_t pages = pattern_words / 512, cur = dirty_cursor;
    for (uint64_t i = 0; i < n; i++) {
        counter++;
        if (opt_dirty && !(i & 255) && pages) {  /* same value: dirty, checksum kept */
            uint64_t k = (cur % pages) * 512;
            w[k] = w[k];
            cur++;
        }
    }
    dirty_cursor = cur;
    return 0;
}

/* arg 0: fill the disk buffer with its pattern; 1: 0 if it holds it, else 1 */
static uint64_t user_disk(uint64_t check)
{
    uint64_t *w = (uint64_t *)blkfront_iobuf;
    for (uint64_t i = 0; i < DISK_SECTORS * 512 / 8; i++) {
        uint64_t want = mix(0xD15C ^ i);
        if (!check) w[i] = want;
        else if (w[i] != want) return 1;
    }
    return 0;
}

static uint64_t user_zero(uint64_t unused)
{
    (void)unused;
    uint64_t *w = (uint64_t *)blkfront_iobuf;
    for (uint64_t i = 0; i < DISK_SECTORS * 512 / 8; i++) w[i] = 0;
    return 0;
}

static uint64_t ring3(uint64_t (*fn)(uint64_t), uint64_t arg)
{ return run_user(fn, arg, user_stack + sizeof(user_stack)); }

/* --- PV part ------------------------------------------------------------------------ */

static const char *disk_state(void)
{
    if (!opt_disk) return "-";
    if (!disk.connected) return "down";
    ring3(user_zero, 0);
    if (blkfront_rw(&disk, 0, 0, DISK_SECTORS, 0, 0) != BLKIF_RSP_OKAY) return "ioerror";
    return ring3(user_disk, 1) ? "bad" : "ok";
}

static void report_line(char *buf, size_t size, const char *seq)
{
    uint64_t sum = ring3(user_sum, 0);
    const char *dstate = disk_state();
    snprintf(buf, size, "seq=%s counter=%lu sum=%016lx dom=%u resumed=%u cancelled=%u "
             "time=%lu disk=%s", seq, (unsigned long)counter, (unsigned long)sum, domid,
             resumed, cancelled, (unsigned long)pv_time_ns(), dstate);
}

static void disk_connect(int write_pattern)
{
    int rc = blkfront_init();
    if (!rc) rc = blkfront_connect(&disk, DISK_DEVID, 1, 0, 0);
    if (rc) { cprintf("savetest: blkfront: %d\n", rc); return; }
    if (write_pattern) {
        ring3(user_disk, 0);
        int st = blkfront_rw(&disk, 1, 0, DISK_SECTORS, 0, 0);
        cprintf("savetest: disk pattern written (%d)\n", st);
    }
}

static void pv_connect(void)
{
    long rc = cons_init();
    if (!rc) rc = xb_init();
    if (!rc) rc = pv_control_init();
    if (!rc) rc = xb_write("control/feature-suspend", "1");
    if (!rc) rc = xb_watch("data/request", "req");
    if (rc) {
        printk("savetest: PV set-up failed: %ld\n", rc);
        shutdown(SHUTDOWN_crash);
    }
}

static unsigned int read_domid(void)
{
    uint32_t base = find_xen_leaves(), a, b, c, d;
    cpuid(base + 4, &a, &b, &c, &d);
    return (a & XEN_HVM_CPUID_DOMID_PRESENT) ? c : ~0u;
}

static void do_suspend(void)
{
    struct sched_shutdown s = { .reason = SHUTDOWN_suspend };
    cprintf("savetest: suspending at counter=%lu\n", (unsigned long)counter);
    long rc = sched_op(SCHEDOP_shutdown, &s);
    if (rc == 0) {  /* a new domain: everything Xen-side is new */
        resumed++;
        pv_evtchn_reset();
        xb_reset_state();
        domid = read_domid();
        pv_connect();
        if (opt_disk) {
            blkfront_forget(&disk);
            disk_connect(0);
        }
        cprintf("savetest: resumed in domain %u at counter=%lu\n", domid,
                (unsigned long)counter);
    } else {
        cancelled++;
        cprintf("savetest: suspend cancelled (%ld), carrying on\n", rc);
    }
}

static void answer_request(void)
{
    char value[32], line[200];
    if (xb_read("data/request", value, sizeof(value)) <= 0) return;
    report_line(line, sizeof(line), value);
    xb_write("data/report", line);
    cprintf("savetest: %s\n", line);
}

static void on_event(const char *token)
{
    if (!strncmp(token, "req", 4)) answer_request();
}

static void handle_xenstore(void)
{
    if (blkfront_events_lost) {  /* blkfront drained our events while it waited */
        blkfront_events_lost = 0;
        answer_request();
    }
    pv_serve_events(do_suspend, on_event);
}

void kmain(uint32_t start_info_paddr)
{
    cpu_tables_init();
    asm volatile("lidt idt_ptr(%%rip)" ::: "memory");
    uint32_t base = find_xen_leaves(), a, b, c, d;
    if (!base) for (;;) asm volatile("cli; hlt");
    cpuid(base + 2, &a, &b, &c, &d);
    wrmsr(b, (uint64_t)hypercall_page);
    domid = read_domid();
    struct hvm_start_info *si = (struct hvm_start_info *)(uint64_t)start_info_paddr;
    cmdline_load(si->cmdline_paddr);
    char mode[16] = "pv";
    opt("mode", mode, sizeof(mode));
    pattern_words = opt_ul("pattern_mb", 16) << 17;
    opt_dirty = (unsigned int)opt_ul("dirty", 0);
    ring3(user_fill, 0);
    char line[200];
    if (streq(mode, "nopv")) {
        unsigned long every = opt_ul("every", 10), n = 0;
        debug_port_printk("savetest: no PV drivers, reporting every %lu chunks\n", every);
        for (;;) {
            ring3(user_count, CHUNK);
            if (++n % every == 0) {
                report_line(line, sizeof(line), "-");
                debug_port_printk("savetest: %s\n", line);
            }
        }
    }
    pv_connect();
    opt_disk = (unsigned int)opt_ul("disk", 0);
    if (opt_disk) disk_connect(1);
    report_line(line, sizeof(line), "0");
    cprintf("savetest: ready, %s\n", line);
    for (;;) {
        ring3(user_count, CHUNK);
        pv_ack();
        handle_xenstore();
    }
}
