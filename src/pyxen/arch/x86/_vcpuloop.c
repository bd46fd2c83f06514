/* The inner vCPU loop of arch/x86/machine.py in C (why and what: docs/vmm.md, "Threads",
 * and docs/hypercalls.md): KVM_RUN without the GIL, the exits that need no Xen logic answered
 * here, and a hypercall through the hypercall page handed to one Python callable with
 * plain ints, its result written to %rax through the sync-regs area (no ioctl).
 *
 * run(fd, kvm_run_addr, ctl_addr, hypercall, hypercall_port, debug_port[, fast_send_addr])
 *     -> int
 *   ctl: two uint64 shared with Python (arch/x86/watchdog.py VcpuWatch): [0] exits,
 *        counted for every return from KVM_RUN; [1] armed (a callback vector waits).
 *   fast_send: the domain's hypervisor/event_channel.py FastSend area (0: none): an
 *        EVTCHNOP_send from a 64-bit caller to a port entered there is completed here,
 *        with a write to the dom0 backend's eventfd and no Python (see fast_send()).
 *   hypercall(nr, a1, a2, a3, a4, a5, flags) -> int: flags bit 0 long mode, bit 1
 *        RFLAGS.IF. The arguments are already the caller's ABI registers (truncated to
 *        32 bits for a 32-bit caller); a guest user-mode caller gets -EPERM here.
 * Returns to Python (which handles the rest as its pure-Python loop does) with:
 *   -EINTR / -EAGAIN   KVM_RUN was interrupted (a kick, or immediate_exit set)
 *   ARMED (-1000)      after an exit, a callback vector waits and RFLAGS.IF is set
 *   a KVM_EXIT_*       any other exit (MSR, MMIO, debug port, HLT, shutdown, errors...)
 * An exception from `hypercall` propagates (the loop crashes the domain).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stddef.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define EFER_LMA   (1ull << 10)
#define RFLAGS_IF  (1ull << 9)
#define XEN_EPERM  1
#define ARMED      (-1000)
#define CR0_PG     (1ull << 31)
#define CR4_LA57   (1ull << 12)
#define PTE_P      (1ull << 0)
#define PTE_PS     (1ull << 7)
#define ADDR_MASK  0x000ffffffffff000ull
#define HYPERVISOR_event_channel_op 32
#define EVTCHNOP_send 4

/* hypervisor/event_channel.py _FastSendArea */
struct fast_send_port { int32_t fd; uint32_t gen; };
struct fast_send {
    uint32_t gen;            /* entries of another generation are not valid */
    uint32_t busy;           /* vCPU threads between reading gen and their write(2) */
    uint64_t ram_hva;        /* guest-physical a is at ram_hva + a below *ram_end_addr */
    uint64_t ram_end_addr;
    uint32_t nports, pad;
    uint64_t sends;          /* sends completed here (tests, debug keys) */
    struct fast_send_port port[];
};

/* The u32 at guest-virtual va, read through the guest's 4-level page tables as
 * arch/x86/paging.py's translate walks them (present bits, 2 MiB / 1 GiB pages) in the
 * RAM below fast_end. 0: not done here (another paging mode, a fault, other memory): the
 * Python path then gives the same answer it always gives. */
static int guest_read_u32(const struct fast_send *fs, const struct kvm_sregs *s, uint64_t va,
                          uint32_t *out)
{
    if (!(s->cr0 & CR0_PG) || !(s->efer & EFER_LMA) || (s->cr4 & CR4_LA57) || !fs->ram_end_addr)
        return 0;
    int64_t top = (int64_t)va >> 47;
    if ((top != 0 && top != -1) || (va & 0xfff) > 0xffc)
        return 0;
    const uint8_t *ram = (const uint8_t *)(uintptr_t)fs->ram_hva;
    uint64_t end = __atomic_load_n((const uint64_t *)(uintptr_t)fs->ram_end_addr,
                                   __ATOMIC_ACQUIRE);
    uint64_t table = s->cr3 & ADDR_MASK, gpa, e;
    for (int shift = 39;; shift -= 9) {
        uint64_t a = table + ((va >> shift) & 511) * 8;
        if (a + 8 > end)
            return 0;
        e = __atomic_load_n((const uint64_t *)(ram + a), __ATOMIC_RELAXED);
        if (!(e & PTE_P))
            return 0;
        if (shift == 12) {
            gpa = (e & ADDR_MASK) | (va & 0xfff);
            break;
        }
        if ((e & PTE_PS) && shift <= 30) {
            uint64_t off = (1ull << shift) - 1;
            gpa = (e & ADDR_MASK & ~off) | (va & off);
            break;
        }
        table = e & ADDR_MASK;
    }
    if (gpa + 4 > end)
        return 0;
    memcpy(out, ram + gpa, 4);
    return 1;
}

/* EVTCHNOP_send(struct evtchn_send *arg) to a port whose peer is a dom0 backend here: what
 * BackendEventChannels.set_pending does (one eventfd write), without the GIL. 1: done
 * (the guest gets 0); 0: the Python path runs it. */
static int fast_send(struct fast_send *fs, const struct kvm_sregs *s, uint64_t arg)
{
    uint32_t port;
    if (!guest_read_u32(fs, s, arg, &port) || port >= fs->nports)
        return 0;
    int done = 0;
    __atomic_add_fetch(&fs->busy, 1, __ATOMIC_SEQ_CST);  /* then gen: see FastSend */
    const struct fast_send_port *p = &fs->port[port];
    if (__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == __atomic_load_n(&fs->gen, __ATOMIC_SEQ_CST)
        && p->fd >= 0) {
        uint64_t one = 1;
        done = write(p->fd, &one, sizeof(one)) == sizeof(one);
    }
    if (done)
        __atomic_add_fetch(&fs->sends, 1, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&fs->busy, 1, __ATOMIC_SEQ_CST);
    return done;
}

static PyObject *run(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 6 && nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "run() takes 6 or 7 arguments");
        return NULL;
    }
    int fd = (int)PyLong_AsLong(args[0]);
    struct kvm_run *r = PyLong_AsVoidPtr(args[1]);
    uint64_t *ctl = PyLong_AsVoidPtr(args[2]);
    PyObject *hypercall = args[3];
    long hport = PyLong_AsLong(args[4]), dport = PyLong_AsLong(args[5]);
    struct fast_send *fs = nargs > 6 ? PyLong_AsVoidPtr(args[6]) : NULL;
    if (PyErr_Occurred())
        return NULL;
    struct kvm_regs *regs = &r->s.regs.regs;
    struct kvm_sregs *sregs = &r->s.regs.sregs;

    /* The GIL is held only while Python runs: from KVM_RUN through every exit answered
     * here (ignored port I/O), this thread leaves the interpreter to the others. */
    PyThreadState *ts = PyEval_SaveThread();
    long rc;
    for (;;) {
        /* with immediate_exit set, KVM_RUN returns -EINTR at once */
        int ret = ioctl(fd, KVM_RUN, 0);
        __atomic_add_fetch(&ctl[0], 1, __ATOMIC_RELAXED);
        if (ret < 0) {
            int e = errno;
            if (e == EINTR || e == EAGAIN) {
                rc = -e;
                break;
            }
            PyEval_RestoreThread(ts);
            errno = e;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (r->exit_reason != KVM_EXIT_IO) {
            rc = r->exit_reason;
            break;
        }
        uint8_t *data = (uint8_t *)r + r->io.data_offset;
        if (r->io.direction == KVM_EXIT_IO_IN) {
            /* nothing behind the port: all ones */
            memset(data, 0xff, (size_t)r->io.size * r->io.count);
        } else if (r->io.port == hport && r->io.size == 4 && r->io.count == 1) {
            uint32_t nr;
            memcpy(&nr, data, 4);
            int long_mode = (sregs->efer & EFER_LMA) && sregs->cs.l;
            uint64_t mask = long_mode ? ~0ull : 0xffffffffull, rax;
            if (sregs->ss.dpl != 0) {  /* as Xen: not from guest user mode */
                rax = (uint64_t)-XEN_EPERM;
            } else if (fs && long_mode && nr == HYPERVISOR_event_channel_op
                       && (uint32_t)regs->rdi == EVTCHNOP_send
                       && fast_send(fs, sregs, regs->rsi)) {
                rax = 0;
            } else {
                uint64_t a[5];
                if (long_mode) {
                    a[0] = regs->rdi; a[1] = regs->rsi; a[2] = regs->rdx;
                    a[3] = regs->r10; a[4] = regs->r8;
                } else {
                    a[0] = regs->rbx; a[1] = regs->rcx; a[2] = regs->rdx;
                    a[3] = regs->rsi; a[4] = regs->rdi;
                }
                PyEval_RestoreThread(ts);
                PyObject *argv[7];
                int n = 0, ok = 1;
                argv[n++] = PyLong_FromUnsignedLong(nr);
                for (int i = 0; i < 5; i++)
                    argv[n++] = PyLong_FromUnsignedLongLong(a[i] & mask);
                argv[n++] = PyLong_FromLong(long_mode | ((regs->rflags & RFLAGS_IF) ? 2 : 0));
                for (int i = 0; i < n; i++)
                    ok &= argv[i] != NULL;
                PyObject *res = ok ? PyObject_Vectorcall(hypercall, argv, n, NULL) : NULL;
                for (int i = 0; i < n; i++)
                    Py_XDECREF(argv[i]);
                if (res == NULL)
                    return NULL;
                rax = PyLong_AsUnsignedLongLongMask(res);
                Py_DECREF(res);
                if (rax == (uint64_t)-1 && PyErr_Occurred())
                    return NULL;
                ts = PyEval_SaveThread();
            }
            regs->rax = rax & mask;
            r->kvm_dirty_regs = KVM_SYNC_X86_REGS;
        } else if (r->io.port == dport) {
            rc = KVM_EXIT_IO;
            break;
        }
        /* else: a port nobody emulates, writes are ignored */
        if (__atomic_load_n(&ctl[1], __ATOMIC_RELAXED) && (regs->rflags & RFLAGS_IF)) {
            rc = ARMED;
            break;
        }
    }
    PyEval_RestoreThread(ts);
    return PyLong_FromLong(rc);
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))run, METH_FASTCALL,
     "run(fd, kvm_run_addr, ctl_addr, hypercall, hypercall_port, debug_port"
     "[, fast_send_addr]) -> int"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_vcpuloop",
    "pyxen's vCPU exit loop in C (arch/x86/machine.py uses it when built).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__vcpuloop(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "ARMED", ARMED) < 0
                      || PyModule_AddIntConstant(m, "FAST_SEND_SENDS_OFFSET",
                                                 offsetof(struct fast_send, sends)) < 0
                      || PyModule_AddIntConstant(m, "FAST_SEND_PORT_OFFSET",
                                                 offsetof(struct fast_send, port)) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
