/* Minimal freestanding C library of the test guests (64-bit and 32-bit builds). */
#include "guest.h"
#include <xen/event_channel.h>
#include <xen/io/console.h>

size_t strlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }
void *memset(void *d, int c, size_t n) { char *p = d; while (n--) *p++ = (char)c; return d; }
void *memcpy(void *d, const void *s, size_t n)
{ char *p = d; const char *q = s; while (n--) *p++ = *q++; return d; }
int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b) return (unsigned char)*a - (unsigned char)*b;
        if (!*a) return 0;
    }
    return 0;
}

struct out { char *buf; size_t size, len; };
static void put(struct out *o, char c) { if (o->len + 1 < o->size) o->buf[o->len] = c; o->len++; }

static void put_num(struct out *o, unsigned long long v, int base, int neg, int width, char pad)
{
    char tmp[24]; int n = 0;
    do { tmp[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
    if (neg) tmp[n++] = '-';
    while (n < width--) put(o, pad);
    while (n) put(o, tmp[--n]);
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = { buf, size, 0 };
    for (; *fmt; fmt++) {
        if (*fmt != '%') { put(&o, *fmt); continue; }
        fmt++;
        char pad = ' '; int width = 0, lng = 0;
        if (*fmt == '0') { pad = '0'; fmt++; }
        while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') { lng++; fmt++; }  /* l: long, ll: long long */
        switch (*fmt) {
        case 'd': {
            long long v = lng > 1 ? va_arg(ap, long long) : lng ? va_arg(ap, long) : va_arg(ap, int);
            put_num(&o, v < 0 ? -(unsigned long long)v : (unsigned long long)v, 10, v < 0, width, pad);
            break;
        }
        case 'u': case 'x': {
            unsigned long long v = lng > 1 ? va_arg(ap, unsigned long long)
                                 : lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
            put_num(&o, v, *fmt == 'u' ? 10 : 16, 0, width, pad);
            break;
        }
        case 'p': put(&o, '0'); put(&o, 'x'); put_num(&o, (unsigned long)va_arg(ap, void *), 16, 0, 0, ' '); break;
        case 's': { const char *s = va_arg(ap, const char *); while (*s) put(&o, *s++); break; }
        case 'c': put(&o, (char)va_arg(ap, int)); break;
        default: put(&o, '%'); put(&o, *fmt); break;
        }
    }
    if (size) buf[o.len < size ? o.len : size - 1] = 0;
    return (int)o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap; va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

void printk(const char *fmt, ...)
{
    char buf[256];
    va_list ap; va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    console_io(CONSOLEIO_write, (int)strlen(buf), buf);  /* the hypervisor log */
    hvc_write(buf, strlen(buf));                         /* the console (xl console) */
}

/* The PV console ring (xen/io/console.h, HVM_PARAM_CONSOLE_PFN/EVTCHN), as hvc_xen
 * writes it; "hvc=0" on the command line leaves it alone (console_io only). */
#define HVC_MAX_WAITS 1000  /* yields for ring space before output is dropped */
static struct xencons_interface *hvc;
static evtchn_port_t hvc_port;
static int hvc_state;  /* 0: not looked for yet, 1: usable, else -errno */

static void hvc_notify(void)
{
    struct evtchn_send send = { .port = hvc_port };
    HYPERCALL2(__HYPERVISOR_event_channel_op, EVTCHNOP_send, &send);
}

static long get_param(unsigned int index, uint64_t *value)
{
    struct xen_hvm_param p = { .domid = DOMID_SELF, .index = index };
    long rc = hvm_op(HVMOP_get_param, &p);
    *value = p.value;
    return rc;
}

int hvc_init(void)
{
    uint64_t pfn, port;
    if (hvc_state) return hvc_state == 1 ? 0 : hvc_state;
    hvc_state = -XEN_ENODEV;
    if (!opt_ul("hvc", 1)) return hvc_state;
    if (get_param(HVM_PARAM_CONSOLE_PFN, &pfn) || !pfn) return hvc_state;
    if (get_param(HVM_PARAM_CONSOLE_EVTCHN, &port)) return hvc_state;
    hvc = GUEST_PTR(pfn << 12);
    hvc_port = (evtchn_port_t)port;
    hvc_state = 1;
    return 0;
}

/* After a resume in a new domain: the console's event channel is the new domain's. */
void hvc_reset(void) { hvc_state = 0; }

size_t hvc_write(const char *s, size_t n)
{
    size_t done = 0;
    unsigned int waits = 0;
    if (hvc_init()) return 0;
    while (done < n) {
        uint32_t cons = hvc->out_cons, prod = hvc->out_prod;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint32_t used = prod - cons;
        if (used >= sizeof(hvc->out)) {  /* full (or indices not sane yet): let dom0 run */
            if (++waits > HVC_MAX_WAITS) break;
            hvc_notify();
            sched_op(SCHEDOP_yield, NULL);
            continue;
        }
        size_t room = sizeof(hvc->out) - used, k = n - done < room ? n - done : room;
        for (size_t i = 0; i < k; i++) hvc->out[MASK_XENCONS_IDX(prod + i, hvc->out)] = s[done + i];
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        hvc->out_prod = prod + k;
        done += k;
    }
    hvc_notify();
    return done;
}

size_t hvc_read(char *buf, size_t size)
{
    size_t n = 0;
    if (hvc_init()) return 0;
    uint32_t cons = hvc->in_cons, prod = hvc->in_prod;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    while (cons != prod && n < size) buf[n++] = hvc->in[MASK_XENCONS_IDX(cons++, hvc->in)];
    if (n) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        hvc->in_cons = cons;
        hvc_notify();
    }
    return n;
}

void debug_port_printk(const char *fmt, ...)
{
    char buf[256];
    va_list ap; va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    for (char *p = buf; *p; p++) outb(0xe9, (uint8_t)*p);
}

void shutdown(unsigned int reason)
{
    struct sched_shutdown s = { .reason = reason };
    for (;;) sched_op(SCHEDOP_shutdown, &s);
}

/* The guest's command line (from hvm_start_info) and its "key=value" options. */
char cmdline[1024];

void cmdline_load(uint64_t paddr)
{
    const char *s = GUEST_PTR(paddr);
    size_t n = 0;
    while (s && s[n] && n + 1 < sizeof(cmdline)) { cmdline[n] = s[n]; n++; }
    cmdline[n] = 0;
}

/* Value of "key=" in the command line (up to the next space), or NULL. */
const char *opt(const char *key, char *out, size_t size)
{
    size_t k = strlen(key);
    for (const char *p = cmdline; *p; p++) {
        if ((p == cmdline || p[-1] == ' ') && !strncmp(p, key, k) && p[k] == '=') {
            size_t n = 0;
            for (p += k + 1; *p && *p != ' ' && n + 1 < size; p++) out[n++] = *p;
            out[n] = 0;
            return out;
        }
    }
    return NULL;
}

/* A decimal option, or dflt when it is absent. */
unsigned long opt_ul(const char *key, unsigned long dflt)
{
    char val[32];
    if (!opt(key, val, sizeof(val))) return dflt;
    unsigned long v = 0;
    for (const char *s = val; *s >= '0' && *s <= '9'; s++) v = v * 10 + (*s - '0');
    return v;
}

int streq(const char *a, const char *b) { return !strncmp(a, b, 1 << 30); }

/* Xen's CPUID leaves sit at 0x40000000 + a multiple of 0x100; 0 if none. */
uint32_t find_xen_leaves(void)
{
    for (uint32_t base = 0x40000000; base < 0x40010000; base += 0x100) {
        uint32_t a, b, c, d;
        cpuid(base, &a, &b, &c, &d);
        if (b == XEN_CPUID_SIGNATURE_EBX && c == XEN_CPUID_SIGNATURE_ECX &&
            d == XEN_CPUID_SIGNATURE_EDX && a - base >= 2)
            return base;
    }
    return 0;
}

#ifdef __x86_64__
/* The 64-bit TSS: ring-3 code enters the kernel through exceptions (PLATFORM.md), which
 * switch to rsp0's stack. */
static char exception_stack[16384] __attribute__((aligned(16)));
static struct __attribute__((packed)) {
    uint32_t reserved0;
    uint64_t rsp0, rsp1, rsp2;
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3, iomap_base;
} tss;

/* Load the TSS (GDT slots 5-6, selector 0x28) and fill idt[] with the 32 exception
 * gates; the caller loads the IDT (it may add gates first). */
void cpu_tables_init(void)
{
    uint64_t base = (uint64_t)&tss, limit = sizeof(tss) - 1;
    tss.rsp0 = (uint64_t)(exception_stack + sizeof(exception_stack));
    tss.iomap_base = sizeof(tss);
    gdt[5] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ULL << 40) |
             (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
    gdt[6] = base >> 32;
    asm volatile("ltr %w0" :: "r"(0x28));
    for (int v = 0; v < 32; v++) {
        uint64_t h = (uint64_t)(exception_stubs + 16 * v);
        uint64_t *e = (uint64_t *)(idt + 16 * v);
        e[0] = (h & 0xffff) | (0x08ULL << 16) | (0x8eULL << 40) | (((h >> 16) & 0xffff) << 48);
        e[1] = h >> 32;
    }
}
#endif
