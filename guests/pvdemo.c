/*
 * Guest modes that use the PV console ring and xenbus (hello.c hands over to pv_main):
 *
 *   mode=xenbus      prints its name and data/test read through xenbus, watches data/test
 *                    and prints each new value, echoes console-ring input line by line
 *                    ("pyxen echo: <line>"); the line "quit" powers off.
 *   mode=badconsole  corrupts its console ring's indices, waits for the backend to reset
 *                    the ring, says so, then behaves as mode=xenbus.
 *                    It answers control/shutdown (poweroff/reboot) as Linux does.
 *   mode=idle        (hello.c) blocked in SCHEDOP_poll on the xenstore channel, answering
 *                    control/shutdown; without a xenstore ring, SCHEDOP_block forever.
 *   mode=xsflood     fills the xenstore request ring without reading a reply, then writes
 *                    impossible indices, reports xenstored's ring error, reconnects
 *                    (XENSTORE_RECONNECT), then behaves as mode=xenbus.
 */
#include "pv.h"

static char line[128];
static size_t line_len;

static void echo_input(void)
{
    char buf[64];
    size_t n;
    while ((n = cons_read(buf, sizeof(buf))) > 0) {
        for (size_t i = 0; i < n; i++) {
            char c = buf[i];
            if (c == '\r' || c == '\n') {
                if (!line_len) continue;
                line[line_len] = 0;
                cprintf("pyxen echo: %s\n", line);
                if (!strncmp(line, "quit", 5)) {
                    cprintf("pyxen xenbus: powering off\n");
                    shutdown(SHUTDOWN_poweroff);
                }
                line_len = 0;
            } else if (line_len + 1 < sizeof(line)) {
                line[line_len++] = c;
            }
        }
    }
}

static void show(const char *path)
{
    char value[128];
    long rc = xb_read(path, value, sizeof(value));
    if (rc < 0) cprintf("pyxen xenbus: %s: %s\n", path, xb_error_name(rc));
    else cprintf("pyxen xenbus: %s = %s\n", path, value);
}

static void serve(void)
{
    char path[128], token[32];
    long rc = xb_watch("data/test", "test");
    cprintf("pyxen xenbus: watching data/test: %s\n", rc ? xb_error_name(rc) : "ok");
    rc = pv_control_init();
    cprintf("pyxen xenbus: PV control: %s\n", rc ? xb_error_name(rc) : "ok");
    for (;;) {
        pv_ack();
        while (xb_next_event(path, sizeof(path), token, sizeof(token))) {
            int reason = pv_control_event(token);
            if (reason >= 0) {
                cprintf("pyxen xenbus: shutdown requested: %s\n", pv_control_name(reason));
                shutdown(reason);
            }
            if (strncmp(token, "test", 5)) continue;
            char value[128];
            long r = xb_read(path, value, sizeof(value));
            if (r < 0) cprintf("pyxen xenbus: watch %s fired (%s): %s\n", path, token, xb_error_name(r));
            else cprintf("pyxen xenbus: watch %s fired (%s): %s\n", path, token, value);
        }
        echo_input();
        pv_wait();
    }
}

static void bad_console(void)
{
    struct xencons_interface *c = cons_intf();
    cprintf("pyxen badconsole: corrupting the console ring\n");
    while (c->out_cons != c->out_prod) { pv_wait(); pv_ack(); }  /* line is out */
    mb();
    c->out_prod = c->out_cons + 100000;
    pv_notify(cons_port());
    while (c->out_prod - c->out_cons > sizeof(c->out)) { pv_wait(); pv_ack(); }
    cprintf("pyxen badconsole: ring reset by the backend, still alive\n");
}

static void xs_flood(void)
{
    struct xenstore_domain_interface *x = xb_intf();
    static const char req[] = "name";
    unsigned int sent = 0;
    for (;;) {  /* fill req[] with READs and never read a reply */
        struct xsd_sockmsg h = { .type = XS_READ, .req_id = 1000 + sent, .len = sizeof(req) };
        uint32_t prod = x->req_prod;
        if (XENSTORE_RING_SIZE - (prod - x->req_cons) < sizeof(h) + sizeof(req)) {
            /* full: give xenstored a moment to take more, stop once it does not */
            for (int i = 0; i < 50; i++) sched_op(SCHEDOP_yield, NULL);
            if (XENSTORE_RING_SIZE - (x->req_prod - x->req_cons) < sizeof(h) + sizeof(req)) break;
            continue;
        }
        for (size_t i = 0; i < sizeof(h); i++) x->req[MASK_XENSTORE_IDX(prod + i)] = ((char *)&h)[i];
        for (size_t i = 0; i < sizeof(req); i++) x->req[MASK_XENSTORE_IDX(prod + sizeof(h) + i)] = req[i];
        wmb();
        x->req_prod = prod + sizeof(h) + sizeof(req);
        pv_notify(xb_port());
        sent++;
    }
    cprintf("pyxen xsflood: %u requests sent, request ring full\n", sent);
    /* Throw the replies away unread (xenstored reads requests again), then lie about
     * the request indices. */
    x->rsp_cons = x->rsp_prod;
    x->req_prod = x->req_cons + 100000;  /* impossible */
    mb();
    pv_notify(xb_port());
    while (!x->error) { pv_wait(); pv_ack(); }
    cprintf("pyxen xsflood: xenstored reports ring error %u\n", x->error);
    x->connection = XENSTORE_RECONNECT;
    mb();
    pv_notify(xb_port());
    while (x->connection != XENSTORE_CONNECTED) { pv_wait(); pv_ack(); }
    xb_reset_state();
    cprintf("pyxen xsflood: reconnected (error %u)\n", x->error);
}

void pv_main(const char *mode, unsigned int domid)
{
    long rc = cons_init();
    if (rc) {
        printk("pyxen xenbus: no PV console (%ld), powering off\n", rc);
        shutdown(SHUTDOWN_crash);
    }
    cprintf("pyxen xenbus: console ring up, domain %u, event channels %s\n", domid,
            pv_evtchn_usable ? "on" : "off (polling)");
    rc = xb_init();
    if (rc) {
        cprintf("pyxen xenbus: no xenstore ring (%ld)\n", rc);
        shutdown(SHUTDOWN_crash);
    }
    if (!strncmp(mode, "badconsole", 11)) bad_console();
    if (!strncmp(mode, "xsflood", 8)) xs_flood();
    char name[64];
    rc = xb_read("name", name, sizeof(name));
    if (rc < 0) cprintf("pyxen xenbus: name: %s\n", xb_error_name(rc));
    else cprintf("pyxen xenbus: my name is %s\n", name);
    show("data/test");
    serve();
}

void pv_idle(void)
{
    char path[128], token[32];
    long rc = xb_init();
    if (!rc) rc = pv_control_init();
    if (!rc) rc = pv_sysrq_init();
    if (rc) {
        printk("pyxen hello: no PV control (%s)\n", xb_error_name(rc));
        for (;;) sched_op(SCHEDOP_block, NULL);
    }
    for (;;) {
        pv_ack();
        while (xb_next_event(path, sizeof(path), token, sizeof(token))) {
            int key = pv_sysrq_event(token);
            if (key >= 0) printk("pyxen hello: sysrq %c\n", key);
            int reason = pv_control_event(token);
            if (reason >= 0) {
                printk("pyxen hello: shutdown requested: %s\n", pv_control_name(reason));
                shutdown(reason);
            }
        }
        pv_wait();
    }
}
