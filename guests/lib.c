/* Minimal freestanding C library of the test guests. */
#include "guest.h"

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

static void put_num(struct out *o, unsigned long v, int base, int neg, int width, char pad)
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
        while (*fmt == 'l') { lng = 1; fmt++; }
        switch (*fmt) {
        case 'd': {
            long v = lng ? va_arg(ap, long) : va_arg(ap, int);
            put_num(&o, v < 0 ? -(unsigned long)v : (unsigned long)v, 10, v < 0, width, pad);
            break;
        }
        case 'u': put_num(&o, lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int), 10, 0, width, pad); break;
        case 'x': put_num(&o, lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int), 16, 0, width, pad); break;
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
    console_io(CONSOLEIO_write, (int)strlen(buf), buf);
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
    const char *s = (const char *)paddr;
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
