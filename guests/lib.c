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
