/* The PV console ring (xen/io/console.h): out[] to the backend, in[] from it; lib.c
 * moves the bytes (hvc_write/hvc_read, also printk's), this adds the event channel wait. */
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
    intf = (struct xencons_interface *)(uintptr_t)(pfn << 12);
    port = (evtchn_port_t)p;
    int rc = hvc_init();
    if (rc) return rc;
    rc = pv_evtchn_init();
    if (rc) return rc;
    pv_evtchn_watch(port);
    return 0;
}

/* All of it: what does not fit waits for the backend to make room (lib.c writes). */
void cons_write(const char *s, size_t n)
{
    while (n) {
        size_t k = hvc_write(s, n);
        s += k; n -= k;
        if (n) { pv_wait(); pv_ack(); }
    }
}

size_t cons_read(char *buf, size_t size) { return hvc_read(buf, size); }

void cprintf(const char *fmt, ...)
{
    char buf[256];
    va_list ap; va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    cons_write(buf, strlen(buf));
}
