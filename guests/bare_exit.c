/* The floor pyxen's exit figures are measured against (bench/hypercall.py, bench/evtchn.py):
 * a minimal KVM VMM in C that runs, in 64-bit ring 0, the very instruction sequences of
 * hello.elf's `mode=bench` loops and answers their exits with nothing but C.
 *
 *   exit loop:      out %al,$0x80; add; cmp; jne              (4 guest instructions)
 *   hypercall loop: hello's xen_version(XENVER_version) caller (10 instructions) and a
 *                   hypercall-page stub (mov $17,%eax; out %eax,$0x9e; ret): 13 guest
 *                   instructions; the VMM writes %rax through the sync-regs area.
 *
 * Under kvm_pvm every ring-0 instruction is emulated, so the hypercall loop costs more
 * than the exit loop even here: that difference is the guest's, not the VMM's.
 *
 *   bare_exit N [VCPUS]    prints: exit_ns=.. hcall_ns=.. (wall, per iteration), the same
 *                          as CPU time of the vCPU thread (exit_cpu_ns, hcall_cpu_ns), and,
 *                          with VCPUS > 1, the same loops on every vCPU at once (threads).
 *
 * Host program (not a guest): built by guests/Makefile as build/bare_exit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE   (4u << 20)
#define PML4       0x1000
#define PDPT       0x2000
#define PD         0x3000
#define CODE       0x10000
#define STUB       0x11000
#define STACK_TOP  0x80000   /* each vCPU: STACK_TOP + id * 0x10000 */
#define END_PORT   0x81
#define HCALL_PORT 0x9e

static int kvm, vm;
static uint8_t *mem;
static struct kvm_cpuid2 *cpuid;
static int run_size;
static unsigned long n_iter;

static void die(const char *what)
{
    fprintf(stderr, "bare_exit: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* hello.elf's loops, byte for byte (objdump of kmain's mode=bench), each ending with an
 * `out` to END_PORT. rbx = rbp-independent counter, r12 = n (exit loop); rbx = n, rbp =
 * stub (hypercall loop). */
static const uint8_t exit_loop[] = {
    0x31, 0xdb,                         /* xor %ebx,%ebx */
    0x31, 0xc0,                         /* xor %eax,%eax */
    0xeb, 0x06,                         /* jmp cmp */
    0xe6, 0x80,                         /* out %al,$0x80 */
    0x48, 0x83, 0xc3, 0x01,             /* add $1,%rbx */
    0x49, 0x39, 0xdc,                   /* cmp %rbx,%r12 */
    0x75, 0xf5,                         /* jne out */
    0xe6, END_PORT,                     /* out %al,$END_PORT */
};
static const uint8_t hcall_loop[] = {
    0x31, 0xc9,                         /* xor %ecx,%ecx */
    0xeb, 0x17,                         /* jmp cmp */
    0x31, 0xff,                         /* xor %edi,%edi */
    0x45, 0x31, 0xd2,                   /* xor %r10d,%r10d */
    0x45, 0x31, 0xc0,                   /* xor %r8d,%r8d */
    0x48, 0x89, 0xe8,                   /* mov %rbp,%rax */
    0x48, 0x89, 0xfe,                   /* mov %rdi,%rsi */
    0x48, 0x89, 0xfa,                   /* mov %rdi,%rdx */
    0xff, 0xd0,                         /* call *%rax */
    0x48, 0x83, 0xc1, 0x01,             /* add $1,%rcx */
    0x48, 0x39, 0xcb,                   /* cmp %rcx,%rbx */
    0x75, 0xe4,                         /* jne loop */
    0xe6, END_PORT,                     /* out %al,$END_PORT */
};
static const uint8_t stub[] = {
    0xb8, 17, 0, 0, 0,                  /* mov $__HYPERVISOR_xen_version,%eax */
    0xe7, HCALL_PORT,                   /* out %eax,$0x9e */
    0xc3,                               /* ret */
};

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static double cpu_ns(void)  /* this thread's CPU time: KVM_RUN (guest emulation) included */
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

struct vcpu { int id, fd; struct kvm_run *run; double exit_ns, hcall_ns, exit_cpu, hcall_cpu; };

static void setup_vcpu(struct vcpu *c)
{
    c->fd = ioctl(vm, KVM_CREATE_VCPU, c->id);
    if (c->fd < 0) die("KVM_CREATE_VCPU");
    if (ioctl(c->fd, KVM_SET_CPUID2, cpuid) < 0) die("KVM_SET_CPUID2");
    c->run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
    if (c->run == MAP_FAILED) die("mmap kvm_run");
    struct kvm_sregs s;
    if (ioctl(c->fd, KVM_GET_SREGS, &s) < 0) die("KVM_GET_SREGS");
    struct kvm_segment cs = { .base = 0, .limit = 0xffffffff, .selector = 8, .type = 11,
                              .present = 1, .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1 };
    struct kvm_segment ds = cs;
    ds.selector = 16; ds.type = 3; ds.l = 0; ds.db = 1;
    s.cs = cs;
    s.ds = s.es = s.fs = s.gs = s.ss = ds;
    s.cr3 = PML4;
    s.cr4 = 1u << 5;                                  /* PAE */
    s.cr0 = 1u | (1u << 4) | (1u << 5) | (1u << 31);  /* PE ET NE PG */
    s.efer = (1u << 8) | (1u << 10);                  /* LME LMA */
    if (ioctl(c->fd, KVM_SET_SREGS, &s) < 0) die("KVM_SET_SREGS");
    c->run->kvm_valid_regs = KVM_SYNC_X86_REGS;
}

/* Run one loop to its END_PORT write; wall ns per iteration (CPU ns in *cpu). */
static double run_loop(struct vcpu *c, uint64_t code, double *cpu)
{
    struct kvm_regs r;
    memset(&r, 0, sizeof(r));
    r.rip = code;
    r.rsp = STACK_TOP + c->id * 0x10000;
    r.rflags = 2;
    r.r12 = n_iter;                                 /* exit loop's bound */
    r.rbx = n_iter;                                 /* hypercall loop's bound */
    r.rbp = STUB;
    if (code == CODE)
        r.rbx = 0;
    if (ioctl(c->fd, KVM_SET_REGS, &r) < 0) die("KVM_SET_REGS");
    double t0 = now_ns(), c0 = cpu_ns();
    for (;;) {
        if (ioctl(c->fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            die("KVM_RUN");
        }
        struct kvm_run *run = c->run;
        if (run->exit_reason != KVM_EXIT_IO) {
            fprintf(stderr, "bare_exit: unexpected exit %u\n", run->exit_reason);
            exit(1);
        }
        if (run->io.port == END_PORT)
            break;
        if (run->io.port == HCALL_PORT) {            /* answer as a VMM would: %rax */
            run->s.regs.regs.rax = 0x40011;
            run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
        }
    }
    *cpu = (cpu_ns() - c0) / n_iter;
    return (now_ns() - t0) / n_iter;
}

static void *vcpu_main(void *arg)
{
    struct vcpu *c = arg;
    c->exit_ns = run_loop(c, CODE, &c->exit_cpu);
    c->hcall_ns = run_loop(c, CODE + 0x100, &c->hcall_cpu);
    return NULL;
}

int main(int argc, char **argv)
{
    n_iter = argc > 1 ? strtoul(argv[1], NULL, 0) : 20000;
    int nv = argc > 2 ? atoi(argv[2]) : 1;
    if (n_iter == 0 || nv < 1 || nv > 8) {
        fprintf(stderr, "usage: bare_exit N [VCPUS 1..8]\n");
        return 2;
    }
    kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul);
    mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap guest RAM");
    struct kvm_userspace_memory_region reg = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE,
        .userspace_addr = (uint64_t)mem };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &reg) < 0) die("KVM_SET_USER_MEMORY_REGION");
    /* identity map of the first 1 GiB with 2 MiB pages */
    uint64_t *pml4 = (uint64_t *)(mem + PML4), *pdpt = (uint64_t *)(mem + PDPT),
             *pd = (uint64_t *)(mem + PD);
    pml4[0] = PDPT | 3;
    pdpt[0] = PD | 3;
    for (int i = 0; i < 512; i++)
        pd[i] = ((uint64_t)i << 21) | 0x83;
    memcpy(mem + CODE, exit_loop, sizeof(exit_loop));
    memcpy(mem + CODE + 0x100, hcall_loop, sizeof(hcall_loop));
    memcpy(mem + STUB, stub, sizeof(stub));

    int nent = 256;
    cpuid = calloc(1, sizeof(*cpuid) + nent * sizeof(struct kvm_cpuid_entry2));
    cpuid->nent = nent;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
    run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size <= 0) die("KVM_GET_VCPU_MMAP_SIZE");

    struct vcpu c[8];
    for (int i = 0; i < nv; i++) {
        c[i].id = i;
        setup_vcpu(&c[i]);
    }
    /* one vCPU alone, then (with VCPUS > 1) all at once */
    vcpu_main(&c[0]);
    printf("exit_ns=%.0f hcall_ns=%.0f exit_cpu_ns=%.0f hcall_cpu_ns=%.0f\n", c[0].exit_ns,
           c[0].hcall_ns, c[0].exit_cpu, c[0].hcall_cpu);
    if (nv > 1) {
        pthread_t t[8];
        for (int i = 0; i < nv; i++)
            pthread_create(&t[i], NULL, vcpu_main, &c[i]);
        double sum_exit = 0, sum_hcall = 0;
        for (int i = 0; i < nv; i++) {
            pthread_join(t[i], NULL);
            sum_exit += 1e9 / c[i].exit_ns;
            sum_hcall += 1e9 / c[i].hcall_ns;
        }
        printf("vcpus=%d exits_per_s=%.0f hcalls_per_s=%.0f\n", nv, sum_exit, sum_hcall);
    }
    return 0;
}
