/*
 * Test guest of arch/x86/emulate.py: ring-0 instructions the host's KVM cannot emulate
 * (PLATFORM.md), each run with known inputs and its result checked, as a kernel would
 * use them (CPUID checked first). One "emulate: PASS|FAIL|SKIP name ..." line each.
 *
 *   mode=insns   ldmxcsr/stmxcsr, pxor, xorps, addps, movq, cmpxchg16b, popcnt, xgetbv,
 *                rdtscp, stac/clac, an operand across a page boundary, #UD cases
 *   mode=faults  faulting memory operands: #PF (not present, read-only, across a page
 *                into a hole: the handler checks CR2 and the error code), #GP
 *   stay=1       block afterwards (for `xl debug-keys q`) instead of powering off
 */
#include "guest.h"

void exception_report(uint64_t *frame)
{
    printk("emulate: unexpected exception %lu (error %lx) at rip %lx\n",
           frame[0], frame[1], frame[2]);
    shutdown(SHUTDOWN_crash);
}

void ap_main(unsigned int id) { (void)id; for (;;) sched_op(SCHEDOP_block, NULL); }

/* --- expected exceptions: the handler records them and resumes at fixup_rip -------- */
volatile uint64_t fault_vec, fault_err, fault_cr2, fault_rip, fixup_rip;

asm(".text\n"
    ".p2align 4\n"
    "ud_stub: pushq $0\n pushq $6\n jmp catch_common\n"
    "gp_stub: pushq $13\n jmp catch_common\n"
    "pf_stub: pushq $14\n jmp catch_common\n"
    "catch_common:\n"
    "  cmpq $0, fixup_rip(%rip)\n"
    "  jne 1f\n"
    "  movq %rsp, %rdi\n"
    "  andq $-16, %rsp\n"
    "  call exception_report\n"
    "1: pushq %rax\n"
    "  movq 8(%rsp), %rax\n  movq %rax, fault_vec(%rip)\n"
    "  movq 16(%rsp), %rax\n  movq %rax, fault_err(%rip)\n"
    "  movq 24(%rsp), %rax\n  movq %rax, fault_rip(%rip)\n"
    "  movq %cr2, %rax\n  movq %rax, fault_cr2(%rip)\n"
    "  movq fixup_rip(%rip), %rax\n  movq %rax, 24(%rsp)\n"
    "  movq $0, fixup_rip(%rip)\n"
    "  popq %rax\n"
    "  addq $16, %rsp\n"
    "  iretq\n");
extern char ud_stub[], gp_stub[], pf_stub[];

static void set_gate(int vec, void *handler)
{
    uint64_t h = (uint64_t)handler;
    uint64_t *e = (uint64_t *)(idt + 16 * vec);
    e[0] = (h & 0xffff) | (0x08ULL << 16) | (0x8eULL << 40) | (((h >> 16) & 0xffff) << 48);
    e[1] = h >> 32;
}

/* Run one instruction (asm text using %[a] = addr) with the fault catcher armed; the
 * instruction's address goes to *at. Returns the vector caught, or -1. */
#define CATCH(insn, addr_, at_)                                                    \
    ({                                                                           \
        fault_vec = ~0ULL;                                                       \
        asm volatile("leaq 1f(%%rip), %%rax\n\t"                                 \
                     "movq %%rax, fixup_rip(%%rip)\n\t"                          \
                     "leaq 2f(%%rip), %%rax\n\t"                                 \
                     "movq %%rax, %[at]\n\t"                                     \
                     "2: " insn "\n\t"                                           \
                     "1: movq $0, fixup_rip(%%rip)"                              \
                     : [at] "=m"(*(at_)) : [a] "r"(addr_) : "rax", "memory", "cc"); \
        (int)fault_vec;                                                          \
    })

static unsigned passed, failed, skipped;

static void report(int ok, const char *name, const char *fmt, ...)
{
    char detail[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    printk("emulate: %s %s %s\n", ok ? "PASS" : "FAIL", name, detail);
    if (ok) passed++; else failed++;
}

static void skip(const char *name, const char *why)
{
    printk("emulate: SKIP %s %s\n", name, why);
    skipped++;
}

static inline uint64_t read_cr4(void) { uint64_t v; asm volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static inline void write_cr4(uint64_t v) { asm volatile("mov %0, %%cr4" :: "r"(v) : "memory"); }
static inline uint64_t read_cr0(void) { uint64_t v; asm volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline void write_cr0(uint64_t v) { asm volatile("mov %0, %%cr0" :: "r"(v) : "memory"); }
static inline uint64_t read_cr3(void) { uint64_t v; asm volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline void write_cr3(uint64_t v) { asm volatile("mov %0, %%cr3" :: "r"(v) : "memory"); }
static inline uint64_t rflags(void) { uint64_t f; asm volatile("pushfq; popq %0" : "=r"(f)); return f; }
static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

#define CR4_OSFXSR (1u << 9)
#define CR4_OSXMMEXCPT (1u << 10)
#define CR4_OSXSAVE (1u << 18)

struct xmm { uint64_t lo, hi; } __attribute__((aligned(16)));

static uint32_t cpuid_reg(uint32_t leaf, uint32_t sub, int reg)
{
    uint32_t r[4];
    asm volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
    return r[reg];
}
enum { EAX, EBX, ECX, EDX };

static char cross[8192] __attribute__((aligned(4096)));
static uint64_t fault_at;

static void test_ud(void)
{
    uint32_t v = 0x1f80;
    /* without CR4.OSFXSR an SSE instruction is #UD: KVM fails ldmxcsr, pyxen decides */
    int vec = CATCH("ldmxcsr (%[a])", &v, &fault_at);
    report(vec == 6 && fault_rip == fault_at, "ud-ldmxcsr-without-osfxsr",
           "vector %d at %lx (instruction at %lx)", vec, fault_rip, fault_at);
    /* an undefined opcode (0f 04): #UD, whoever decodes it */
    vec = CATCH(".byte 0x0f, 0x04", 0, &fault_at);
    report(vec == 6 && fault_rip == fault_at, "ud-undefined-opcode",
           "vector %d at %lx (instruction at %lx)", vec, fault_rip, fault_at);
}

static void test_mxcsr(void)
{
    uint32_t in = 0xff80, out = 0;  /* all exceptions masked, round toward zero, FTZ */
    asm volatile("ldmxcsr %1; stmxcsr %0" : "=m"(out) : "m"(in));
    report(out == in, "ldmxcsr-stmxcsr", "wrote %x read %x", in, out);
    in = 0x1f80;
    asm volatile("ldmxcsr %0" :: "m"(in));
    /* a reserved bit: #GP(0) */
    uint32_t bad = 0x1f80 | (1u << 20);
    int vec = CATCH("ldmxcsr (%[a])", &bad, &fault_at);
    asm volatile("stmxcsr %0" : "=m"(out));
    report(vec == 13 && fault_err == 0 && out == 0x1f80, "ldmxcsr-reserved-gp",
           "vector %d error %lx, mxcsr still %x", vec, fault_err, out);
}

static void test_sse(void)
{
    static struct xmm a = { 0x0123456789abcdefULL, 0xfedcba9876543210ULL };
    static struct xmm b = { 0xffff0000ffff0000ULL, 0x00000000ffffffffULL };
    static struct xmm fa = { 0x400000003fc00000ULL, 0x42c88000c0400000ULL }; /* 1.5 2 -3 100.25 */
    static struct xmm fb = { 0x3e8000003f000000ULL, 0x3f40000040400000ULL }; /* .5 .25 3 .75 */
    struct xmm r;
    asm volatile("movdqu %1, %%xmm0; movdqu %2, %%xmm1; pxor %%xmm1, %%xmm0; movdqu %%xmm0, %0"
                 : "=m"(r) : "m"(a), "m"(b));
    report(r.lo == (a.lo ^ b.lo) && r.hi == (a.hi ^ b.hi), "pxor", "%lx:%lx", r.hi, r.lo);
    asm volatile("movdqu %1, %%xmm2; xorps %2, %%xmm2; movdqu %%xmm2, %0"
                 : "=m"(r) : "m"(a), "m"(b));
    report(r.lo == (a.lo ^ b.lo) && r.hi == (a.hi ^ b.hi), "xorps-mem", "%lx:%lx", r.hi, r.lo);
    asm volatile("movdqu %1, %%xmm3; movdqu %2, %%xmm9; addps %%xmm9, %%xmm3; movdqu %%xmm3, %0"
                 : "=m"(r) : "m"(fa), "m"(fb));
    /* 2.0 2.25 0.0 101.0 */
    report(r.lo == 0x4010000040000000ULL && r.hi == 0x42ca000000000000ULL, "addps",
           "%lx:%lx", r.hi, r.lo);
    uint64_t x = 0x8000000180000001ULL, y = 0;
    asm volatile("movdqu %2, %%xmm4; movq %1, %%xmm4; movdqu %%xmm4, %0"
                 : "=m"(r) : "r"(x), "m"(a));
    report(r.lo == x && r.hi == 0, "movq-r64-to-xmm", "%lx:%lx", r.hi, r.lo);
    asm volatile("movq %%xmm4, %0" : "=r"(y));
    report(y == x, "movq-xmm-to-r64", "%lx", y);
}

static void test_cmpxchg16b(void)
{
    if (!(cpuid_reg(1, 0, ECX) & (1u << 13))) { skip("cmpxchg16b", "no CX16 in CPUID"); return; }
    static struct xmm m;
    m.lo = 0x1111; m.hi = 0x2222;
    uint64_t lo = 0x1111, hi = 0x2222;
    uint8_t zf;
    asm volatile("lock cmpxchg16b %1; sete %0"
                 : "=q"(zf), "+m"(m), "+a"(lo), "+d"(hi) : "b"(0x3333ULL), "c"(0x4444ULL)
                 : "memory", "cc");
    report(zf && m.lo == 0x3333 && m.hi == 0x4444, "cmpxchg16b-success",
           "zf %u memory %lx:%lx", zf, m.hi, m.lo);
    lo = 0x1111; hi = 0x2222;   /* memory now holds 0x4444:0x3333 */
    asm volatile("lock cmpxchg16b %1; sete %0"
                 : "=q"(zf), "+m"(m), "+a"(lo), "+d"(hi) : "b"(0x5555ULL), "c"(0x6666ULL)
                 : "memory", "cc");
    report(!zf && lo == 0x3333 && hi == 0x4444 && m.lo == 0x3333 && m.hi == 0x4444,
           "cmpxchg16b-failure", "zf %u rdx:rax %lx:%lx memory %lx:%lx", zf, hi, lo, m.hi, m.lo);
}

static void test_popcnt(void)
{
    if (!(cpuid_reg(1, 0, ECX) & (1u << 23))) { skip("popcnt", "no POPCNT in CPUID"); return; }
    uint64_t v = 0xf0f0000000000101ULL, n;
    uint8_t zf;
    asm volatile("popcnt %2, %0; setz %1" : "=r"(n), "=q"(zf) : "r"(v) : "cc");
    report(n == 10 && !zf, "popcnt", "%lu zf %u", n, zf);
    v = 0;
    asm volatile("popcnt %2, %0; setz %1" : "=r"(n), "=q"(zf) : "r"(v) : "cc");
    report(n == 0 && zf, "popcnt-zero", "%lu zf %u", n, zf);
}

static void test_xgetbv(void)
{
    if (!(cpuid_reg(1, 0, ECX) & (1u << 26))) { skip("xgetbv", "no XSAVE in CPUID"); return; }
    write_cr4(read_cr4() | CR4_OSXSAVE);
    uint32_t lo, hi;
    asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    uint64_t supported = cpuid_reg(0xd, 0, EAX) | ((uint64_t)cpuid_reg(0xd, 0, EDX) << 32);
    uint64_t xcr0 = ((uint64_t)hi << 32) | lo;
    /* a vCPU starts with XCR0 = x87 only (its reset value) */
    report(xcr0 == 1 && (xcr0 & ~supported) == 0, "xgetbv", "xcr0 %lx (supported %lx)",
           xcr0, supported);
}

static void test_rdtscp(void)
{
    if (!(cpuid_reg(0x80000001, 0, EDX) & (1u << 27))) {
        /* hidden from this vCPU: #UD, as a CPU with it disabled (VMX) raises */
        int vec = CATCH("rdtscp", 0, &fault_at);
        report(vec == 6 && fault_rip == fault_at, "rdtscp-hidden-ud", "vector %d", vec);
        return;
    }
    wrmsr(0xc0000103, 0x2a);   /* TSC_AUX */
    uint32_t lo, hi, aux;
    uint64_t t1 = rdtsc();
    asm volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(aux));
    uint64_t t3 = rdtsc();
    uint64_t t2 = ((uint64_t)hi << 32) | lo;
    report(aux == 0x2a && t1 <= t2 && t2 <= t3, "rdtscp", "aux %x tsc %lx <= %lx <= %lx",
           aux, t1, t2, t3);
}

static void test_stac(void)
{
    if (!(cpuid_reg(7, 0, EBX) & (1u << 20))) { skip("stac-clac", "no SMAP in CPUID"); return; }
    asm volatile("stac" ::: "cc");
    uint64_t f1 = rflags();
    asm volatile("clac" ::: "cc");
    uint64_t f2 = rflags();
    report((f1 & (1u << 18)) && !(f2 & (1u << 18)), "stac-clac", "rflags %lx then %lx", f1, f2);
}

static void test_page_crossing(void)
{
    char *p = cross + 4096 - 2;   /* 2 bytes in one page, 2 in the next */
    uint32_t in = 0x3f80, out = 0; /* round down */
    memcpy(p, &in, 4);
    asm volatile("ldmxcsr (%0)" :: "r"(p) : "memory");
    memset(p, 0, 4);
    asm volatile("stmxcsr (%0)" :: "r"(p) : "memory");
    memcpy(&out, p, 4);
    in = 0x1f80;
    asm volatile("ldmxcsr %0" :: "m"(in));
    report(out == 0x3f80, "page-crossing-operand", "mxcsr %x through %p", out, p);
}

/* --- faults ---------------------------------------------------------------------------- */
static uint64_t pd_extra[512] __attribute__((aligned(4096)));
#define RO_VA   0x140000000ULL   /* 5 GiB: a read-only 2 MiB page, then a hole */
#define RO_PA   0x1000000ULL     /* backed by guest RAM at 16 MiB */
#define HOLE_VA 0x200000000ULL   /* 8 GiB: nothing mapped */

static void test_faults(void)
{
    uint64_t *pdpt = (uint64_t *)(((uint64_t *)pml4)[0] & ~0xfffULL);
    pd_extra[0] = RO_PA | 0x81;           /* present, 2 MiB, read-only, supervisor */
    pd_extra[1] = pd_extra[2] = 0;
    pdpt[5] = (uint64_t)pd_extra | 0x3;
    write_cr3(read_cr3());
    write_cr0(read_cr0() | (1u << 16));   /* CR0.WP: ring 0 too respects read-only pages */
    *(volatile uint32_t *)(RO_PA + 0x10) = 0x1f80 | 0x4000;   /* round up, via the 1:1 map */

    uint32_t out = 0;
    int vec = CATCH("ldmxcsr (%[a])", RO_VA + 0x10, &fault_at);
    asm volatile("stmxcsr %0" : "=m"(out));
    report(vec == -1 && out == 0x5f80, "read-through-guest-page-tables", "vector %d mxcsr %x",
           vec, out);

    report(pd_extra[0] & 0x20, "accessed-bit", "pde %lx", pd_extra[0]);
    pd_extra[2] = RO_PA | 0x83;           /* present, 2 MiB, writable, at RO_VA + 4 MiB */
    write_cr3(read_cr3());
    vec = CATCH("stmxcsr (%[a])", RO_VA + 0x400000 + 0x40, &fault_at);
    report(vec == -1 && (pd_extra[2] & 0x60) == 0x60 &&
           *(volatile uint32_t *)(RO_PA + 0x40) == 0x5f80, "dirty-bit-and-write",
           "vector %d pde %lx", vec, pd_extra[2]);

    vec = CATCH("stmxcsr (%[a])", RO_VA + 0x20, &fault_at);
    report(vec == 14 && fault_cr2 == RO_VA + 0x20 && fault_err == 3 && fault_rip == fault_at,
           "pf-write-read-only", "vector %d cr2 %lx error %lx rip %lx", vec, fault_cr2,
           fault_err, fault_rip);

    vec = CATCH("ldmxcsr (%[a])", HOLE_VA + 0x123, &fault_at);
    report(vec == 14 && fault_cr2 == HOLE_VA + 0x123 && fault_err == 0 && fault_rip == fault_at,
           "pf-not-present", "vector %d cr2 %lx error %lx rip %lx", vec, fault_cr2, fault_err,
           fault_rip);

    vec = CATCH("ldmxcsr (%[a])", RO_VA + 0x200000 - 2, &fault_at);
    report(vec == 14 && fault_cr2 == RO_VA + 0x200000 && fault_err == 0,
           "pf-crossing-into-hole", "vector %d cr2 %lx error %lx", vec, fault_cr2, fault_err);

    vec = CATCH("ldmxcsr (%[a])", 0x8000000000000000ULL, &fault_at);
    report(vec == 13 && fault_err == 0 && fault_rip == fault_at, "gp-non-canonical",
           "vector %d error %lx", vec, fault_err);

    uint32_t keep = 0x1f80;
    asm volatile("ldmxcsr %0" :: "m"(keep));
    pdpt[5] = 0;
    write_cr3(read_cr3());
}

/* mode=bench n=N: the cost of an emulated instruction seen from the guest, against a
 * port-I/O exit to the VMM (the cheapest user-space round trip) measured alongside. */
static void bench(unsigned long n, uint32_t tsc_khz)
{
    uint64_t t0 = rdtsc();
    for (unsigned long i = 0; i < n; i++)
        asm volatile("pxor %xmm0, %xmm0");
    uint64_t t1 = rdtsc();
    for (unsigned long i = 0; i < n; i++) outb(0x80, 0);
    uint64_t t2 = rdtsc();
    printk("emulate: bench n=%lu emulated pxor %lu ns each, port-I/O exit %lu ns each\n", n,
           (t1 - t0) * 1000000 / tsc_khz / n, (t2 - t1) * 1000000 / tsc_khz / n);
}

void kmain(uint32_t start_info_paddr)
{
    char mode[16];
    cpu_tables_init();
    set_gate(6, ud_stub);
    set_gate(13, gp_stub);
    set_gate(14, pf_stub);
    asm volatile("lidt idt_ptr(%%rip)" ::: "memory");
    uint32_t base = find_xen_leaves(), a, b, c, d;
    if (!base) for (;;) asm volatile("cli; hlt");
    cpuid(base + 2, &a, &b, &c, &d);
    wrmsr(b, (uint64_t)hypercall_page);
    struct hvm_start_info *si = (void *)(uint64_t)start_info_paddr;
    cmdline_load(si->cmdline_paddr);
    if (!opt("mode", mode, sizeof(mode))) mode[0] = 0;
    printk("emulate: start mode=%s\n", mode);

    test_ud();   /* first: CR4.OSFXSR still clear */
    write_cr4(read_cr4() | CR4_OSFXSR | CR4_OSXMMEXCPT);
    if (streq(mode, "bench")) {
        cpuid(base + 3, &a, &b, &c, &d);   /* Xen's time leaf: c = TSC kHz */
        bench(opt_ul("n", 1000), c ? c : 1000000);
    } else if (streq(mode, "faults")) {
        test_faults();
    } else {
        test_mxcsr();
        test_sse();
        test_cmpxchg16b();
        test_popcnt();
        test_xgetbv();
        test_rdtscp();
        test_stac();
        test_page_crossing();
    }
    printk("emulate: done %u passed %u failed %u skipped\n", passed, failed, skipped);
    if (opt_ul("stay", 0))
        for (;;) sched_op(SCHEDOP_block, NULL);
    shutdown(SHUTDOWN_poweroff);
}
