/* The inner vCPU loop of arch/x86/machine.py in C (why and what: docs/vmm.md, "Threads",
 * and docs/hypercalls.md): KVM_RUN without the GIL, the exits that need no Xen logic answered
 * here, and a hypercall through the hypercall page handed to one Python callable with
 * plain ints, its result written to %rax through the sync-regs area (no ioctl).
 *
 * run(fd, kvm_run_addr, ctl_addr, hypercall, hypercall_port, debug_port) -> int
 *   ctl: two uint64 shared with Python (arch/x86/watchdog.py VcpuWatch): [0] exits,
 *        counted for every return from KVM_RUN; [1] armed (a callback vector waits).
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
#include <linux/kvm.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>

#define EFER_LMA   (1ull << 10)
#define RFLAGS_IF  (1ull << 9)
#define XEN_EPERM  1
#define ARMED      (-1000)

static PyObject *run(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "run() takes 6 arguments");
        return NULL;
    }
    int fd = (int)PyLong_AsLong(args[0]);
    struct kvm_run *r = PyLong_AsVoidPtr(args[1]);
    uint64_t *ctl = PyLong_AsVoidPtr(args[2]);
    PyObject *hypercall = args[3];
    long hport = PyLong_AsLong(args[4]), dport = PyLong_AsLong(args[5]);
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
     "run(fd, kvm_run_addr, ctl_addr, hypercall, hypercall_port, debug_port) -> int"},
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
    if (m != NULL && PyModule_AddIntConstant(m, "ARMED", ARMED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
