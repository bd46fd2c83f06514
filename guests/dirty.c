/*
 * mode=dirty [mib=M] [rate=R] [report=MS] [base=MIB]: a live-migration load. It fills M MiB
 * (from `base` MiB on) with a pattern, then, in ring 3 (native speed under kvm_pvm),
 * dirties R pages a second (0: as fast as it can), one 8-octet store per page, round robin,
 * paced by the TSC (Xen's CPUID time leaf gives its frequency). Every `report` ms it goes
 * back to ring 0, checks the whole region against what it knows it wrote (the counter
 * says which page had which value last) and prints
 *     dirty: n=<pages written> bad=<pages not as written> pages=<M*256>
 * so a test sees the counter go on after a migration and the memory come through intact.
 */
#include "guest.h"

static uint64_t tsc_khz;
static volatile uint64_t *region;
static uint64_t npages, rate, seq, t0;

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline uint64_t pattern(uint64_t page, uint64_t word)
{
    return (page * 0x9E3779B97F4A7C15ULL) ^ (word * 0xC2B2AE3D27D4EB4FULL) ^ 0x5A5AULL;
}

static uint64_t user_fill(uint64_t unused)
{
    (void)unused;
    for (uint64_t p = 0; p < npages; p++)
        for (uint64_t w = 0; w < 512; w++)
            region[p * 512 + w] = pattern(p, w);
    return 0;
}

/* Dirty pages for `ticks` TSC ticks at the set rate. */
static uint64_t user_burst(uint64_t ticks)
{
    uint64_t end = rdtsc() + ticks;
    for (;;) {
        uint64_t now = rdtsc();
        if (now >= end)
            return seq;
        uint64_t due = rate ? (now - t0) / 1000 * rate / tsc_khz : seq + 64;
        while (seq < due) {
            region[(seq % npages) * 512] = seq + 1;  /* word 0 of the page: who wrote last */
            seq++;
        }
    }
}

/* Pages whose contents are not what this guest wrote last. */
static uint64_t user_verify(uint64_t unused)
{
    (void)unused;
    uint64_t bad = 0;
    for (uint64_t p = 0; p < npages; p++) {
        uint64_t want0 = seq > p ? p + (seq - 1 - p) / npages * npages + 1 : pattern(p, 0);
        uint64_t w = 1 + p % 511;
        if (region[p * 512] != want0 || region[p * 512 + w] != pattern(p, w)
            || region[p * 512 + 511] != pattern(p, 511))
            bad++;
    }
    return bad;
}

static char user_stack[16384] __attribute__((aligned(16)));

void dirty_main(uint64_t ram_end)
{
    uint64_t base = opt_ul("base", 8) << 20;
    uint64_t mib = opt_ul("mib", 16);
    unsigned long report_ms = opt_ul("report", 200);
    rate = opt_ul("rate", 1000);
    if (base + (mib << 20) > ram_end)
        mib = (ram_end - base) >> 20;
    region = (volatile uint64_t *)base;
    npages = mib * 256;
    uint32_t leaves = find_xen_leaves(), a, b, c, d;
    cpuid(leaves + 3, &a, &b, &c, &d);
    tsc_khz = c ? c : 1000000;
    run_user(user_fill, 0, user_stack + sizeof(user_stack));
    printk("dirty: ready pages=%lu rate=%lu tsc_khz=%lu\n", npages, rate, tsc_khz);
    t0 = rdtsc();
    for (;;) {
        run_user(user_burst, report_ms * tsc_khz, user_stack + sizeof(user_stack));
        uint64_t bad = run_user(user_verify, 0, user_stack + sizeof(user_stack));
        printk("dirty: n=%lu bad=%lu pages=%lu\n", seq, bad, npages);
    }
}
