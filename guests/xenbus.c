/*
 * Event channels (2-level ABI) and a xenbus client over the xenstore ring
 * (xen/io/xs_wire.h), as a Xen guest's xenbus driver does it: requests go into req[],
 * replies and watch events come back in rsp[], each side kicks the store event channel.
 * The guest waits with SCHEDOP_poll on masked ports (no interrupt handler needed).
 */
#include "pv.h"

/* ---------------------------------------------------------------- event channels */

static char si_page[4096] __attribute__((aligned(4096)));
/* Bits per evtchn_pending/evtchn_mask word: 64, or 32 in a -m32 guest (x86_32 layout). */
#define EVW (sizeof(xen_ulong_t) * 8)
#define EVBIT(port) ((xen_ulong_t)1 << ((port) % EVW))
static struct shared_info *si;
static evtchn_port_t watched[32];
static unsigned int nwatched;
int pv_evtchn_usable;

long hvm_param(unsigned int index, uint64_t *value)
{
    struct xen_hvm_param p = { .domid = DOMID_SELF, .index = index };
    long rc = hvm_op(HVMOP_get_param, &p);
    *value = p.value;
    return rc;
}

int pv_evtchn_init(void)
{
    if (si) return 0;
    struct xen_add_to_physmap xatp = {
        .domid = DOMID_SELF, .space = XENMAPSPACE_shared_info, .idx = 0,
        .gpfn = (uintptr_t)si_page >> 12,
    };
    long rc = memory_op(XENMEM_add_to_physmap, &xatp);
    if (rc) return (int)rc;
    si = (struct shared_info *)si_page;
    /* Probe: a status query on port 0 answers unless event channels are missing. */
    struct evtchn_status st = { .dom = DOMID_SELF, .port = 0 };
    pv_evtchn_usable = pv_event_channel_op(EVTCHNOP_status, &st) != -XEN_ENOSYS;
    return 0;
}

volatile struct shared_info *pv_shared_info(void) { return si; }

/* After a resume in a new domain (SCHEDOP_shutdown(SHUTDOWN_suspend) returned 0): the
 * shared_info page is no longer mapped and the ports are new. */
void pv_evtchn_reset(void)
{
    si = NULL;
    nwatched = 0;
}

void pv_evtchn_watch(evtchn_port_t port)
{
    if (!port || nwatched == sizeof(watched) / sizeof(watched[0])) return;
    watched[nwatched++] = port;
    __atomic_fetch_or(&si->evtchn_mask[port / EVW], EVBIT(port), __ATOMIC_SEQ_CST);
}

void pv_notify(evtchn_port_t port)
{
    struct evtchn_send s = { .port = port };
    if (pv_evtchn_usable && port) pv_event_channel_op(EVTCHNOP_send, &s);
}

void pv_ack(void)
{
    for (unsigned int i = 0; i < nwatched; i++)
        __atomic_fetch_and(&si->evtchn_pending[watched[i] / EVW], ~EVBIT(watched[i]),
                           __ATOMIC_SEQ_CST);
    si->vcpu_info[0].evtchn_upcall_pending = 0;
}

void pv_wait(void)
{
    if (!pv_evtchn_usable || !nwatched) { sched_op(SCHEDOP_yield, NULL); return; }
    struct sched_poll p = { .nr_ports = nwatched, .timeout = 0 };
    set_xen_guest_handle(p.ports, watched);
    if (sched_op(SCHEDOP_poll, &p) < 0) sched_op(SCHEDOP_yield, NULL);
}

/* Xen system time (ns) from vCPU 0's vcpu_time_info, as a guest's clocksource reads it. */
uint64_t pv_time_ns(void)
{
    if (!si) return 0;
    volatile struct vcpu_time_info *t = &si->vcpu_info[0].time;
    uint32_t ver;
    uint64_t ns;
    do {
        ver = t->version;
        rmb();
        uint32_t lo, hi;
        asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
        uint64_t delta = (((uint64_t)hi << 32) | lo) - t->tsc_timestamp;
        if (t->tsc_shift < 0) delta >>= -t->tsc_shift; else delta <<= t->tsc_shift;
#ifdef __x86_64__
        ns = t->system_time + (uint64_t)(((unsigned __int128)delta * t->tsc_to_system_mul) >> 32);
#else   /* no 128-bit arithmetic in -m32: (delta * mul) >> 32 in two halves */
        ns = t->system_time + (((uint64_t)(uint32_t)delta * t->tsc_to_system_mul) >> 32)
             + (uint64_t)(uint32_t)(delta >> 32) * t->tsc_to_system_mul;
#endif
        rmb();
    } while ((ver & 1) || ver != t->version);
    return ns;
}

/* pv_wait, but back by `deadline` (absolute system time, ns) at the latest. */
void pv_wait_until(uint64_t deadline)
{
    if (!pv_evtchn_usable || !nwatched) { sched_op(SCHEDOP_yield, NULL); return; }
    struct sched_poll p = { .nr_ports = nwatched, .timeout = deadline };
    set_xen_guest_handle(p.ports, watched);
    if (sched_op(SCHEDOP_poll, &p) < 0) sched_op(SCHEDOP_yield, NULL);
}

/* ---------------------------------------------------------------- the xenstore ring */

#define MAX_EVENTS 8
static struct xenstore_domain_interface *intf;
static evtchn_port_t store_port;
static uint32_t req_id;
static struct { char path[128], token[32]; } events[MAX_EVENTS];
static unsigned int ev_head, ev_tail;
static char rbuf[sizeof(struct xsd_sockmsg) + XENSTORE_PAYLOAD_MAX + 1];
static size_t rlen;  /* bytes of the message being assembled in rbuf */

struct xenstore_domain_interface *xb_intf(void) { return intf; }
evtchn_port_t xb_port(void) { return store_port; }
void xb_reset_state(void) { rlen = 0; ev_head = ev_tail = 0; }
int xb_events_queued(void) { return ev_head != ev_tail; }

int xb_init(void)
{
    uint64_t pfn, port;
    if (hvm_param(HVM_PARAM_STORE_PFN, &pfn) || !pfn) return -XEN_ENODEV;
    if (hvm_param(HVM_PARAM_STORE_EVTCHN, &port)) return -XEN_ENODEV;
    intf = (struct xenstore_domain_interface *)(uintptr_t)(pfn << 12);
    store_port = (evtchn_port_t)port;
    int rc = pv_evtchn_init();
    if (rc) return rc;
    pv_evtchn_watch(store_port);
    return 0;
}

static void write_req(const char *data, size_t len)
{
    while (len) {
        uint32_t cons = intf->req_cons, prod = intf->req_prod;
        mb();
        uint32_t used = prod - cons;
        if (used >= XENSTORE_RING_SIZE) { pv_notify(store_port); pv_wait(); pv_ack(); continue; }
        size_t n = XENSTORE_RING_SIZE - used;
        if (n > len) n = len;
        for (size_t i = 0; i < n; i++) intf->req[MASK_XENSTORE_IDX(prod + i)] = data[i];
        wmb();
        intf->req_prod = prod + n;
        data += n; len -= n;
    }
    pv_notify(store_port);
}

/* Pull bytes off rsp[] into rbuf; 1 once a whole message is there. Never waits. */
static int pull_msg(void)
{
    uint32_t cons = intf->rsp_cons, prod = intf->rsp_prod;
    rmb();
    int moved = 0;
    while (cons != prod) {
        struct xsd_sockmsg *h = (struct xsd_sockmsg *)rbuf;
        size_t want = rlen < sizeof(*h) ? sizeof(*h)
                                        : sizeof(*h) + (h->len > XENSTORE_PAYLOAD_MAX ? XENSTORE_PAYLOAD_MAX : h->len);
        if (rlen >= want) break;
        rbuf[rlen++] = intf->rsp[MASK_XENSTORE_IDX(cons)];
        cons++; moved = 1;
    }
    if (moved) { mb(); intf->rsp_cons = cons; pv_notify(store_port); }
    struct xsd_sockmsg *h = (struct xsd_sockmsg *)rbuf;
    return rlen >= sizeof(*h) && rlen >= sizeof(*h) + h->len;
}

static void queue_event(const char *payload, uint32_t len)
{
    unsigned int next = (ev_tail + 1) % MAX_EVENTS;
    if (next == ev_head) return;  /* full: drop, as a bounded driver must */
    size_t n = 0, i = 0;
    while (i < len && payload[i] && n + 1 < sizeof(events[0].path)) events[ev_tail].path[n++] = payload[i++];
    events[ev_tail].path[n] = 0;
    while (i < len && payload[i]) i++;
    i++;
    n = 0;
    while (i < len && payload[i] && n + 1 < sizeof(events[0].token)) events[ev_tail].token[n++] = payload[i++];
    events[ev_tail].token[n] = 0;
    ev_tail = next;
}

void xb_poll(void)
{
    while (pull_msg()) {
        struct xsd_sockmsg *h = (struct xsd_sockmsg *)rbuf;
        if (h->type == XS_WATCH_EVENT) queue_event(rbuf + sizeof(*h), h->len);
        rlen = 0;  /* a stray reply nobody waits for is dropped */
    }
}

/* pv_wait for an event loop that talks to xenstore: every xenbus request clears the
 * store port's pending bit (pv_ack), so a watch event that came in during one (queued,
 * or still on the ring behind the reply) would leave a plain pv_wait blocked on a kick
 * already taken. Pull what is on the ring first; wait only when no event is queued. */
void xb_wait(void)
{
    xb_poll();
    if (ev_head == ev_tail) pv_wait();
}

int xb_next_event(char *path, size_t psize, char *token, size_t tsize)
{
    xb_poll();
    if (ev_head == ev_tail) return 0;
    snprintf(path, psize, "%s", events[ev_head].path);
    snprintf(token, tsize, "%s", events[ev_head].token);
    ev_head = (ev_head + 1) % MAX_EVENTS;
    return 1;
}

static const char *const err_names[] = {
    "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
    "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
};
static const int err_values[] = {
    XEN_EINVAL, XEN_EACCES, XEN_EEXIST, XEN_EISDIR, XEN_ENOENT, XEN_ENOMEM, XEN_ENOSPC,
    XEN_EIO, XEN_ENOTEMPTY, XEN_ENOSYS, XEN_EROFS, XEN_EBUSY, XEN_EAGAIN, XEN_EISCONN,
    XEN_E2BIG, XEN_EPERM,
};

const char *xb_error_name(long err)
{
    for (unsigned int i = 0; i < sizeof(err_values) / sizeof(err_values[0]); i++)
        if (err == -err_values[i]) return err_names[i];
    return "error";
}

/* One request: header + the NUL-separated args; the reply payload into out. */
static long xb_request(uint32_t type, const char *a, size_t alen, const char *b, size_t blen,
                       char *out, size_t size)
{
    struct xsd_sockmsg h = { .type = type, .req_id = ++req_id, .tx_id = 0,
                             .len = (uint32_t)(alen + blen) };
    write_req((const char *)&h, sizeof(h));
    write_req(a, alen);
    if (blen) write_req(b, blen);
    for (;;) {
        pv_ack();
        while (pull_msg()) {
            struct xsd_sockmsg *r = (struct xsd_sockmsg *)rbuf;
            char *payload = rbuf + sizeof(*r);
            if (r->type == XS_WATCH_EVENT) { queue_event(payload, r->len); rlen = 0; continue; }
            if (r->req_id != h.req_id) { rlen = 0; continue; }
            long ret = r->len;
            if (r->type == XS_ERROR) {
                payload[r->len] = 0;
                ret = -XEN_EIO;
                for (unsigned int i = 0; i < sizeof(err_values) / sizeof(err_values[0]); i++)
                    if (!strncmp(payload, err_names[i], 16)) ret = -err_values[i];
            } else if (out && size) {
                size_t n = r->len < size - 1 ? r->len : size - 1;
                memcpy(out, payload, n);
                out[n] = 0;
            }
            rlen = 0;
            return ret;
        }
        pv_wait();
    }
}

long xb_read(const char *path, char *value, size_t size)
{ return xb_request(XS_READ, path, strlen(path) + 1, NULL, 0, value, size); }

long xb_write(const char *path, const char *value)
{
    long rc = xb_request(XS_WRITE, path, strlen(path) + 1, value, strlen(value), NULL, 0);
    return rc < 0 ? rc : 0;
}

long xb_watch(const char *path, const char *token)
{
    long rc = xb_request(XS_WATCH, path, strlen(path) + 1, token, strlen(token) + 1, NULL, 0);
    return rc < 0 ? rc : 0;
}

long xb_unwatch(const char *path, const char *token)
{
    long rc = xb_request(XS_UNWATCH, path, strlen(path) + 1, token, strlen(token) + 1, NULL, 0);
    return rc < 0 ? rc : 0;
}

/* The reply is the names, each NUL-terminated (out keeps them; its last byte is 0). */
long xb_directory(const char *path, char *out, size_t size)
{
    long rc = xb_request(XS_DIRECTORY, path, strlen(path) + 1, NULL, 0, out, size);
    if (rc >= 0 && (size_t)rc >= size) rc = (long)size - 1;
    return rc;
}

/* ---------------------------------------------------------------- PV control */

#define CONTROL_TOKEN "control"

/*
 * What Linux does (arch/x86/xen/enlighten_hvm.c, drivers/xen/manage.c): set
 * HVM_PARAM_CALLBACK_IRQ, which the toolstack reads to tell a PV-aware guest (Linux sets
 * it to 1 beside its per-vCPU upcall vector for that reason; this guest takes no upcalls,
 * its ports are masked and polled, and the GSI type delivers nothing to it), watch
 * control/shutdown, then advertise control/feature-poweroff and -reboot. A request
 * written before the watch is set is still seen: a watch fires once when set. On a
 * request the node is cleared ("", the toolstack's acknowledgement) before acting.
 */
int pv_control_init(void)
{
    struct xen_hvm_param p = { .domid = DOMID_SELF, .index = HVM_PARAM_CALLBACK_IRQ,
                               .value = 1 };
    long rc = hvm_op(HVMOP_set_param, &p);
    if (!rc) rc = xb_watch("control/shutdown", CONTROL_TOKEN);
    if (!rc) rc = xb_write("control/feature-poweroff", "1");
    if (!rc) rc = xb_write("control/feature-reboot", "1");
    return (int)rc;
}

/* Linux's manage.c sysrq_handler: read control/sysrq, write "" back, run the key. */
#define SYSRQ_TOKEN "sysrq"

int pv_sysrq_init(void) { return (int)xb_watch("control/sysrq", SYSRQ_TOKEN); }

int pv_sysrq_event(const char *token)
{
    char value[8];
    if (strncmp(token, SYSRQ_TOKEN, sizeof(SYSRQ_TOKEN))) return -1;
    if (xb_read("control/sysrq", value, sizeof(value)) < 0 || !value[0]) return -1;
    xb_write("control/sysrq", "");
    return (unsigned char)value[0];
}

const char *pv_control_name(int reason)
{ return reason == SHUTDOWN_reboot ? "reboot" : "poweroff"; }

/* A guest that cannot suspend leaves "suspend" unacknowledged (as a Linux built without
 * it): the toolstack then gives up on the guest's cooperation, as libxl does. */
static int control_event(const char *token, int can_suspend)
{
    char value[32];
    if (strncmp(token, CONTROL_TOKEN, sizeof(CONTROL_TOKEN))) return -1;
    if (xb_read("control/shutdown", value, sizeof(value)) < 0) return -1;
    int reason = !strncmp(value, "poweroff", 9) ? SHUTDOWN_poweroff
               : !strncmp(value, "reboot", 7) ? SHUTDOWN_reboot
               : can_suspend && !strncmp(value, "suspend", 8) ? SHUTDOWN_suspend : -1;
    if (reason >= 0) xb_write("control/shutdown", "");  /* "" (our own write): ignored */
    return reason;
}

int pv_control_event(const char *token) { return control_event(token, 0); }

void pv_serve_events(void (*suspend)(void), void (*other)(const char *token))
{
    char path[128], token[32];
    while (xb_next_event(path, sizeof(path), token, sizeof(token))) {
        int reason = control_event(token, 1);
        if (reason == SHUTDOWN_suspend) suspend();
        else if (reason >= 0) shutdown((unsigned int)reason);
        else other(token);
    }
}
