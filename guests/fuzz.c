/*
 * mode=fuzz seed=S n=N (hello.elf): N pseudo-random hypercalls (numbers 0..64) with random
 * sub-ops and arguments, pointers into a scratch area of this guest (filled with random
 * bytes before each call), across the end of RAM, outside RAM, non-canonical or huge; then
 * a summary line of the results and a normal poweroff.
 *
 * Left out, because they would legitimately end or stall this guest (not pyxen):
 * SCHEDOP_shutdown and SCHEDOP_watchdog (ends it), SCHEDOP_block (sleeps until an event),
 * SCHEDOP_poll only with a timeout already in the past, VCPUOP_down of vCPU 0 (stops it),
 * hypercall 23 (iret: its stub is ud2). Console writes are capped at 255 bytes (the log stays readable) and grant
 * copies at 63 entries (each costs time linear in its count). SCHEDOP_shutdown_code is
 * allowed: the guest resets it to poweroff before it powers off.
 * Random values that pyxen might write at as guest frames are the scratch area's, low
 * memory's (below this kernel) or not RAM, so the guest never overwrites its own code.
 */
#include "guest.h"
#include <xen/event_channel.h>
#include <xen/grant_table.h>

#define SCRATCH_PAGES 16
#define NR_MAX 65

static uint8_t scratch[SCRATCH_PAGES * 4096] __attribute__((aligned(4096)));
static struct sched_poll poll_arg;
static uint64_t rng_state, ram_top;
static unsigned int fuzz_domid;
static unsigned long results_ok, results_other, results_err[128];

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}
static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

static uint64_t scratch_ptr(void)
{
    uint64_t off = below(sizeof(scratch) - 8) & ~(uint64_t)(below(2) ? 7 : 0);
    return (uint64_t)scratch + off;
}

static uint64_t pointer(void)
{
    switch (below(10)) {
    case 0: case 1: case 2: case 3: case 4: return scratch_ptr();
    case 5: return ram_top - 1 - below(40);                     /* across the end of RAM */
    case 6: { static const uint64_t out[] = { 0xf0000000UL, 0xfee00000UL, 1UL << 32,
                                              0xdeadbeef000UL, 0x800000000000UL,
                                              0xffff800000000000UL, ~0UL, ~0UL - 7 };
              return out[below(8)]; }
    case 7: return (uint64_t)scratch + sizeof(scratch) - below(16);  /* scratch's end */
    case 8: return below(64);                                   /* NULL and near it */
    default: return rnd();
    }
}

static uint64_t value(void)
{
    switch (below(10)) {
    case 0: case 1: case 2: return below(70);       /* ports, refs, vCPUs, counts, sub-ops */
    case 3: { const uint64_t d[] = { DOMID_SELF, 0, fuzz_domid, 1, 0x7ff1, 0xffff };
              return d[below(6)]; }
    case 4: return pointer();
    case 5: return ((uint64_t)scratch >> 12) + below(SCRATCH_PAGES);  /* its frames */
    case 6: { static const uint64_t v[] = { 1023, 1024, 4095, 4096, 4097, 0x7fffffff,
                                            0x80000000UL, 0xffffffffUL, 1UL << 32, ~0UL };
              return v[below(10)]; }
    default: return rnd();
    }
}

/* Random bytes (mostly the values above, in 2/4/8-byte pieces) where a pointer leads. */
static void scribble(uint64_t p)
{
    uint64_t lo = (uint64_t)scratch, hi = lo + sizeof(scratch);
    if (p < lo || p >= hi) return;
    uint64_t n = 8 << below(6);
    if (n > hi - p) n = hi - p;
    uint8_t *b = (uint8_t *)p;
    for (uint64_t i = 0; i < n;) {
        uint64_t v = below(8) ? value() : rnd();
        unsigned int size = 2 << below(3);
        for (unsigned int j = 0; j < size && i < n; j++, i++) b[i] = (uint8_t)(v >> (8 * j));
    }
}

/* Hypercalls that would end or stall the guest itself; they are drawn again. */
static int excluded(unsigned int nr, uint64_t *a)
{
    int cmd = (int)(uint32_t)a[0];
    if (nr == 23) return 1;
    if (nr == __HYPERVISOR_sched_op) {
        if (cmd == SCHEDOP_shutdown || cmd == SCHEDOP_block || cmd == SCHEDOP_watchdog)
            return 1;
        if (cmd == SCHEDOP_poll) {  /* a timeout in the past: returns at once */
            poll_arg.nr_ports = (unsigned int)below(140);
            set_xen_guest_handle(poll_arg.ports, (evtchn_port_t *)pointer());
            poll_arg.timeout = 1 + below(1000);
            a[1] = (uint64_t)&poll_arg;
        }
    }
    if (nr == __HYPERVISOR_vcpu_op && cmd == VCPUOP_down && (uint32_t)a[1] == 0) return 1;
    if (nr == __HYPERVISOR_console_io) a[1] &= 0xff;
    /* Grant ops that write a status back per element (map, unmap, copy, unmap_and_replace,
     * swap) would, as on Xen, scribble over the guest's own memory for a huge count:
     * theirs stays small; the others get a huge one now and then. */
    if (nr == __HYPERVISOR_grant_table_op &&
        (below(20) != 0 || cmd == GNTTABOP_map_grant_ref || cmd == GNTTABOP_unmap_grant_ref ||
         cmd == GNTTABOP_copy || cmd == GNTTABOP_unmap_and_replace ||
         cmd == GNTTABOP_swap_grant_ref))
        a[2] &= 0x3f;
    return 0;
}

static const unsigned int implemented[] = {
    __HYPERVISOR_xen_version, __HYPERVISOR_console_io, __HYPERVISOR_sched_op,
    __HYPERVISOR_memory_op, __HYPERVISOR_hvm_op, __HYPERVISOR_vcpu_op,
    __HYPERVISOR_event_channel_op, __HYPERVISOR_event_channel_op_compat,
    __HYPERVISOR_grant_table_op, __HYPERVISOR_set_timer_op,
};
static const unsigned int subops[] = { 12, 2, 8, 30, 25, 14, 14, 0, 13, 0 };

void fuzz_main(uint64_t seed, unsigned long n, uint64_t ram_end, unsigned int domid)
{
    rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;
    ram_top = ram_end;
    fuzz_domid = domid;
    printk("pyxen fuzz: seed %lu, %lu hypercalls\n", (unsigned long)seed, n);
    for (unsigned long i = 0; i < n; i++) {
        unsigned int nr, k = (unsigned int)below(sizeof(implemented) / sizeof(implemented[0]));
        uint64_t a[5];
        do {
            nr = below(100) < 85 ? implemented[k] : (unsigned int)below(NR_MAX);
            for (int j = 0; j < 5; j++) {
                uint64_t r = below(8);
                if (j == 0 && r < 6) a[j] = below((nr == implemented[k] ? subops[k] : 8) + 2);
                else if (r < 2) a[j] = below(2) ? ~0UL - below(2) : rnd();
                else if (r < 6) a[j] = pointer();
                else a[j] = value();
            }
        } while (excluded(nr, a));
        for (int j = 0; j < 5; j++)
            if (below(10) < 7) scribble(a[j]);
        long rc = hypercall(nr, a[0], a[1], a[2], a[3], a[4]);
        if (rc >= 0) results_ok++;
        else if (rc > -128) results_err[-rc]++;
        else results_other++;
    }
    /* the summary, on a line of its own: ok, each errno seen, anything else (must stay 0) */
    char line[512];
    int len = snprintf(line, sizeof(line), "\npyxen fuzz: done %lu: ok %lu", n, results_ok);
    for (int e = 1; e < 128; e++)
        if (results_err[e] && len < (int)sizeof(line) - 32)
            len += snprintf(line + len, sizeof(line) - len, ", -%d %lu", e, results_err[e]);
    snprintf(line + len, sizeof(line) - len, ", other %lu\n", results_other);
    printk("%s", line);
    struct sched_shutdown s = { .reason = SHUTDOWN_poweroff };
    sched_op(SCHEDOP_shutdown_code, &s);  /* undo any random shutdown_code */
    printk("pyxen fuzz: powering off\n");
    shutdown(SHUTDOWN_poweroff);
}
