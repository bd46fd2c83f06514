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
 *   bare_exit N [VCPUS [EVTCHN_ELF]]
 *                          prints: exit_ns=.. hcall_ns=.. (wall, per iteration), the same
 *                          as CPU time of the vCPU thread (exit_cpu_ns, hcall_cpu_ns), and,
 *                          with VCPUS > 1, the same loops on every vCPU at once (threads).
 *                          With EVTCHN_ELF (guests/build/evtchn_test.elf), also the floor of
 *                          the event channel round trip of bench/evtchn.py: see evtchn_floor.
 *
 * Host program (not a guest): built by guests/Makefile as build/bare_exit.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
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

/* --- the event channel round trip floor (bench/evtchn.py) -------------------------------
 *
 * evtchn_test.elf's own code, loaded at its link addresses: its `request(LOOPBACK_PING,
 * 0, 0, 0)` (guests/evtchn_test.c) N times, called from a copy of the guest's own loop
 * (mode=loopback: xor ecx, xor edx, xor esi, mov $5,edi, call request, add, cmp, jne).
 * The environment is the least the function needs: `shared` -> a zeroed shared_info page,
 * `lb_port`, the 2-level ABI (evtchn_fifo = 0) and pyxen's hypercall page stubs (mov
 * $nr,%eax; out %eax,$0x9e; ret). The VMM answers in C, three ways:
 *
 *   sync:   at EVTCHNOP_send, completes the request (done = seq) and sets the port
 *           pending: the reply is there when the guest looks, the fewest guest instructions
 *           (send, one done check). The floor of any VMM running this guest code.
 *   poll:   at EVTCHNOP_send, nothing; at SCHEDOP_poll, completes it and sets the port
 *           pending. The guest runs what it runs under pyxen when the backend answers
 *           after it blocked: send, test_and_clear (the last reply's stale pending bit),
 *           test_and_clear, poll, done check: the asynchronous path's shape.
 *   thread: as pyxen: EVTCHNOP_send kicks a backend thread through an eventfd; that
 *           thread completes the request, sets the port pending and kicks the vCPU thread,
 *           which SCHEDOP_poll blocked on its own eventfd: the poll shape plus two
 *           cross-thread wake-ups, all in C.
 */
#define EVT_PORT        3         /* lb_port: any valid port */
#define HC_SCHED_OP     29        /* __HYPERVISOR_sched_op */
#define HC_EVTCHN_OP    32        /* __HYPERVISOR_event_channel_op */
#define SCHEDOP_POLL    3
#define EVTCHNOP_SEND   4
#define SI_PENDING      0x800     /* shared_info.evtchn_pending[] (64-bit layout) */
#define SI_MASK         0xa00     /* shared_info.evtchn_mask[] */
#define REQ_DONE        0x18      /* struct loopback_page: seq at 0, done at 24 */

enum floor_mode { FLOOR_SYNC, FLOOR_POLL, FLOOR_THREAD };
struct floor { uint64_t req, shared; int efd_req, efd_ack; volatile int stop; };

static void *elf_at(const uint8_t *img, size_t size, uint64_t off, size_t len)
{
    if (off > size || len > size - off) {
        fprintf(stderr, "bare_exit: truncated ELF\n");
        exit(1);
    }
    return (void *)(img + off);
}

/* Load the ELF's PT_LOAD segments at their physical addresses; find symbols by name. */
static uint64_t load_elf(const char *path, const char *const *names, uint64_t *addrs, int n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(path);
    off_t size = lseek(fd, 0, SEEK_END);
    uint8_t *img = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (img == MAP_FAILED) die("mmap ELF");
    close(fd);
    Elf64_Ehdr *eh = elf_at(img, size, 0, sizeof(*eh));
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_ident[EI_CLASS] != ELFCLASS64) {
        fprintf(stderr, "bare_exit: %s: not a 64-bit ELF\n", path);
        exit(1);
    }
    uint64_t end = 0;
    for (int i = 0; i < eh->e_phnum; i++) {
        Elf64_Phdr *ph = elf_at(img, size, eh->e_phoff + (uint64_t)i * sizeof(*ph), sizeof(*ph));
        if (ph->p_type != PT_LOAD) continue;
        if (ph->p_paddr < 0x100000 || ph->p_paddr + ph->p_memsz > MEM_SIZE / 2) {
            fprintf(stderr, "bare_exit: segment at %#lx does not fit\n", (long)ph->p_paddr);
            exit(1);
        }
        memcpy(mem + ph->p_paddr, elf_at(img, size, ph->p_offset, ph->p_filesz), ph->p_filesz);
        memset(mem + ph->p_paddr + ph->p_filesz, 0, ph->p_memsz - ph->p_filesz);
        if (ph->p_paddr + ph->p_memsz > end) end = ph->p_paddr + ph->p_memsz;
    }
    for (int i = 0; i < n; i++) addrs[i] = 0;
    for (int i = 0; i < eh->e_shnum; i++) {
        Elf64_Shdr *sh = elf_at(img, size, eh->e_shoff + (uint64_t)i * sizeof(*sh), sizeof(*sh));
        if (sh->sh_type != SHT_SYMTAB) continue;
        Elf64_Shdr *st = elf_at(img, size, eh->e_shoff + (uint64_t)sh->sh_link * sizeof(*sh),
                                sizeof(*sh));
        const char *strtab = elf_at(img, size, st->sh_offset, st->sh_size);
        Elf64_Sym *sym = elf_at(img, size, sh->sh_offset, sh->sh_size);
        for (size_t k = 0; k < sh->sh_size / sizeof(*sym); k++)
            for (int j = 0; j < n; j++)
                if (sym[k].st_name < st->sh_size && !strcmp(strtab + sym[k].st_name, names[j]))
                    addrs[j] = sym[k].st_value;
    }
    for (int j = 0; j < n; j++)
        if (!addrs[j]) {
            fprintf(stderr, "bare_exit: %s: no symbol %s\n", path, names[j]);
            exit(1);
        }
    munmap(img, size);
    return (end + 0xfff) & ~0xfffull;
}

static int port_pending(struct floor *f)
{
    uint64_t *w = (uint64_t *)(mem + f->shared + SI_PENDING) + EVT_PORT / 64;
    return !!(__atomic_load_n(w, __ATOMIC_SEQ_CST) & (1ull << (EVT_PORT % 64)));
}

/* The backend's answer: done = seq, then the port pending as Xen's 2-level send sets it
 * (pending bit; if it was clear and the port unmasked, vCPU 0's selector and upcall flag). */
static void floor_complete(struct floor *f)
{
    uint32_t *req = (uint32_t *)(mem + f->req);
    __atomic_store_n(&req[REQ_DONE / 4], __atomic_load_n(&req[0], __ATOMIC_SEQ_CST),
                     __ATOMIC_SEQ_CST);
    uint64_t bit = 1ull << (EVT_PORT % 64);
    uint64_t *pend = (uint64_t *)(mem + f->shared + SI_PENDING) + EVT_PORT / 64;
    uint64_t *mask = (uint64_t *)(mem + f->shared + SI_MASK) + EVT_PORT / 64;
    if (!(__atomic_fetch_or(pend, bit, __ATOMIC_SEQ_CST) & bit) && !(*mask & bit)) {
        __atomic_fetch_or((uint64_t *)(mem + f->shared + 8), 1ull << (EVT_PORT / 64),
                          __ATOMIC_SEQ_CST);
        __atomic_store_n(mem + f->shared, 1, __ATOMIC_SEQ_CST);
    }
}

static void *floor_backend(void *arg)
{
    struct floor *f = arg;
    uint64_t v;
    while (read(f->efd_req, &v, sizeof(v)) == sizeof(v) && !f->stop) {
        floor_complete(f);
        v = 1;
        if (write(f->efd_ack, &v, sizeof(v)) != sizeof(v)) die("eventfd write");
    }
    return NULL;
}

static unsigned long steps;  /* single-stepped guest instructions (count runs) */
static unsigned long polls;  /* SCHEDOP_poll calls of the last run */

/* One run of the driver loop; wall ns per round trip, process CPU ns in *cpu. With
 * `count`, single-steps the guest instead and counts its instructions (into steps). */
static double floor_run(struct vcpu *c, struct floor *f, enum floor_mode mode, double *cpu,
                        int count)
{
    struct kvm_guest_debug dbg = { .control = count ? KVM_GUESTDBG_ENABLE |
                                   KVM_GUESTDBG_SINGLESTEP : 0 };
    if (ioctl(c->fd, KVM_SET_GUEST_DEBUG, &dbg) < 0) die("KVM_SET_GUEST_DEBUG");
    steps = polls = 0;
    struct kvm_regs r;
    memset(&r, 0, sizeof(r));
    r.rip = CODE + 0x200;
    r.rsp = STACK_TOP;
    r.rflags = 2;
    r.r13 = n_iter;
    if (ioctl(c->fd, KVM_SET_REGS, &r) < 0) die("KVM_SET_REGS");
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    double c0 = ts.tv_sec * 1e9 + ts.tv_nsec, t0 = now_ns();
    for (;;) {
        if (ioctl(c->fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            die("KVM_RUN");
        }
        struct kvm_run *run = c->run;
        if (run->exit_reason == KVM_EXIT_DEBUG) {
            steps++;
            continue;
        }
        if (run->exit_reason != KVM_EXIT_IO) {
            fprintf(stderr, "bare_exit: unexpected exit %u at %#llx\n", run->exit_reason,
                    run->s.regs.regs.rip);
            exit(1);
        }
        if (run->io.port == END_PORT)
            break;
        struct kvm_regs *g = &run->s.regs.regs;
        uint32_t nr = *(uint32_t *)((uint8_t *)run + run->io.data_offset);
        long rc = -38;                                              /* -ENOSYS */
        if (nr == HC_EVTCHN_OP && g->rdi == EVTCHNOP_SEND &&
            *(uint32_t *)(mem + g->rsi) == EVT_PORT) {
            rc = 0;
            if (mode == FLOOR_SYNC) {
                floor_complete(f);
            } else if (mode == FLOOR_THREAD) {
                uint64_t v = 1;
                if (write(f->efd_req, &v, sizeof(v)) != sizeof(v)) die("eventfd write");
            }
        } else if (nr == HC_SCHED_OP && g->rdi == SCHEDOP_POLL) {
            rc = 0;
            polls++;
            if (mode == FLOOR_POLL) {
                floor_complete(f);
            } else if (mode == FLOOR_THREAD) {
                uint64_t v;
                while (!port_pending(f))
                    if (read(f->efd_ack, &v, sizeof(v)) != sizeof(v)) die("eventfd read");
            }
        }
        if (rc) {
            fprintf(stderr, "bare_exit: unexpected hypercall %u/%llu\n", nr, g->rdi);
            exit(1);
        }
        g->rax = rc;
        run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
    }
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    *cpu = (ts.tv_sec * 1e9 + ts.tv_nsec - c0) / n_iter;
    return (now_ns() - t0) / n_iter;
}

static void evtchn_floor(struct vcpu *c, const char *elf)
{
    static const char *const names[] = { "request", "req", "lb_port", "shared",
                                         "evtchn_fifo", "hypercall_page" };
    enum { REQUEST, REQ, LB_PORT, SHARED, EVTCHN_FIFO, HYPERCALL_PAGE };
    uint64_t a[6];
    uint64_t si = load_elf(elf, names, a, 6);            /* shared_info: the page after */
    memset(mem + si, 0, 4096);
    *(uint64_t *)(mem + a[SHARED]) = si;
    *(uint32_t *)(mem + a[LB_PORT]) = EVT_PORT;
    *(uint32_t *)(mem + a[EVTCHN_FIFO]) = 0;
    for (int nr = 0; nr < 128; nr++) {                    /* pyxen's hypercall page */
        uint8_t *s = mem + a[HYPERCALL_PAGE] + nr * 32;
        memset(s, 0xcc, 32);
        s[0] = 0xb8;
        memcpy(s + 1, &nr, 4);
        s[5] = 0xe7; s[6] = HCALL_PORT; s[7] = 0xc3;
    }
    /* the guest's PING loop (kmain, mode=loopback), with r13 = n, r14 = i */
    uint8_t loop[] = {
        0x45, 0x31, 0xf6,                   /* xor %r14d,%r14d */
        0xeb, 0x14,                         /* jmp cmp */
        0x31, 0xc9,                         /* xor %ecx,%ecx */
        0x31, 0xd2,                         /* xor %edx,%edx */
        0x31, 0xf6,                         /* xor %esi,%esi */
        0xbf, 0x05, 0, 0, 0,                /* mov $LOOPBACK_PING,%edi */
        0xe8, 0, 0, 0, 0,                   /* call request */
        0x49, 0x83, 0xc6, 0x01,             /* add $1,%r14 */
        0x4d, 0x39, 0xf5,                   /* cmp %r14,%r13 */
        0x75, 0xe7,                         /* jne loop */
        0xe6, END_PORT,                     /* out %al,$END_PORT */
    };
    int32_t rel = (int32_t)(a[REQUEST] - (CODE + 0x200 + 21));  /* from the call's end */
    memcpy(loop + 17, &rel, 4);
    memcpy(mem + CODE + 0x200, loop, sizeof(loop));

    struct floor f = { .req = a[REQ], .shared = si };
    f.efd_req = eventfd(0, EFD_CLOEXEC);
    f.efd_ack = eventfd(0, EFD_CLOEXEC);
    if (f.efd_req < 0 || f.efd_ack < 0) die("eventfd");
    pthread_t backend;
    if (pthread_create(&backend, NULL, floor_backend, &f)) die("pthread_create");
    double cpu[3], ns[3];
    for (int m = FLOOR_SYNC; m <= FLOOR_THREAD; m++)
        ns[m] = floor_run(c, &f, m, &cpu[m], 0);
    double thread_polls = (double)polls / n_iter;
    unsigned long n_timed = n_iter, insns[2];
    n_iter = 100;
    for (int m = FLOOR_SYNC; m <= FLOOR_POLL; m++) {
        double unused;
        floor_run(c, &f, m, &unused, 1);
        insns[m] = steps;
    }
    n_iter = n_timed;
    f.stop = 1;
    uint64_t v = 1;
    if (write(f.efd_req, &v, sizeof(v)) != sizeof(v)) die("eventfd write");
    pthread_join(backend, NULL);
    uint32_t want = 3 * n_timed + 200;
    if (*(uint32_t *)(mem + a[REQ]) != want || *(uint32_t *)(mem + a[REQ] + REQ_DONE) != want) {
        fprintf(stderr, "bare_exit: the guest made %u requests, %u done, not %u\n",
                *(uint32_t *)(mem + a[REQ]), *(uint32_t *)(mem + a[REQ] + REQ_DONE), want);
        exit(1);
    }
    printf("evtchn_sync_ns=%.0f evtchn_poll_ns=%.0f evtchn_thread_ns=%.0f "
           "evtchn_sync_cpu_ns=%.0f evtchn_poll_cpu_ns=%.0f evtchn_thread_cpu_ns=%.0f "
           "evtchn_sync_insns=%.1f evtchn_poll_insns=%.1f evtchn_thread_polls=%.2f\n",
           ns[0], ns[1], ns[2], cpu[0], cpu[1], cpu[2], insns[0] / 100.0, insns[1] / 100.0,
           thread_polls);
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
    if (argc > 3)
        evtchn_floor(&c[0], argv[3]);
    return 0;
}
