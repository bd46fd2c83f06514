/* The PV console ring (xen/io/console.h): out[] to the backend, in[] from it. */
#include "pv.h"

static struct xencons_interface *intf;
static evtchn_port_t port;

struct xencons_interface *cons_intf(void) { return intf; }
evtchn_port_t cons_port(void) { return port; }

int cons_init(void)
{
    uint64_t pfn, p;
    if (hvm_param(HVM_PARAM_CONSOLE_PFN, &pfn) || !pfn) return -XEN_ENODEV;
    if (hvm_param(HVM_PARAM_CONSOLE_EVTCHN, &p)) return -XEN_ENODEV;
    intf = (struct xencons_interface *)(pfn << 12);
    port = (evtchn_port_t)p;
    int rc = pv_evtchn_init();
    if (rc) return rc;
    pv_evtchn_watch(port);
    return 0;
}

void cons_write(const char *s, size_t n)
{
    while (n) {
        uint32_t cons = intf->out_cons, prod = intf->out_prod;
        mb();
        uint32_t used = prod - cons;
        if (used >= sizeof(intf->out)) {  /* full (or indices not sane yet): wait */
            pv_notify(port);
            pv_wait();
            pv_ack();
            continue;
        }
        size_t room = sizeof(intf->out) - used, k = n < room ? n : room;
        for (size_t i = 0; i < k; i++) intf->out[MASK_XENCONS_IDX(prod + i, intf->out)] = s[i];
        wmb();
        intf->out_prod = prod + k;
        s += k; n -= k;
    }
    pv_notify(port);
}

size_t cons_read(char *buf, size_t size)
{
    uint32_t cons = intf->in_cons, prod = intf->in_prod;
    rmb();
    size_t n = 0;
    while (cons != prod && n < size) buf[n++] = intf->in[MASK_XENCONS_IDX(cons++, intf->in)];
    if (n) { mb(); intf->in_cons = cons; pv_notify(port); }
    return n;
}

void cprintf(const char *fmt, ...)
{
    char buf[256];
    va_list ap; va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    cons_write(buf, strlen(buf));
}
