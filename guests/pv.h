/* PV devices of the test guests: event channels, the xenstore ring (xenbus) and the PV
 * console ring, as a Xen guest's drivers use them (guests/xenbus.c, console_ring.c). */
#ifndef PYXEN_PV_H
#define PYXEN_PV_H

#include "guest.h"
#include <xen/event_channel.h>
#include <xen/io/xs_wire.h>
#include <xen/io/console.h>

#define mb() asm volatile("mfence" ::: "memory")
#define rmb() asm volatile("" ::: "memory")   /* x86: loads are not reordered */
#define wmb() asm volatile("" ::: "memory")   /* x86: stores are not reordered */

static inline long pv_event_channel_op(int cmd, void *arg)
{ return HYPERCALL2(__HYPERVISOR_event_channel_op, cmd, arg); }

/* xenbus.c: event channels */
int pv_evtchn_init(void);                 /* maps shared_info; 0 or a negative Xen errno */
void pv_evtchn_watch(evtchn_port_t port); /* masked: we SCHEDOP_poll it, no upcall */
void pv_evtchn_reset(void);               /* after a resume in a new domain */
volatile struct shared_info *pv_shared_info(void); /* mapped by pv_evtchn_init */
void pv_notify(evtchn_port_t port);
void pv_wait(void);                /* until a watched port is pending (or a yield) */
void pv_wait_until(uint64_t deadline_ns); /* the same, or until that system time */
uint64_t pv_time_ns(void);         /* Xen system time (after pv_evtchn_init) */
void pv_ack(void);                 /* clear the watched ports' pending bits */
extern int pv_evtchn_usable;              /* 0: no event channels, the guest polls its rings */
long hvm_param(unsigned int index, uint64_t *value);

/* xenbus.c: the xenstore ring */
int xb_init(void);                     /* HVM_PARAM_STORE_PFN/EVTCHN; 0 or -errno */
struct xenstore_domain_interface *xb_intf(void);
evtchn_port_t xb_port(void);
long xb_read(const char *path, char *value, size_t size);   /* length or -errno */
long xb_write(const char *path, const char *value);
long xb_watch(const char *path, const char *token);
long xb_unwatch(const char *path, const char *token);
long xb_directory(const char *path, char *out, size_t size); /* NUL-separated names; length */
int xb_next_event(char *path, size_t psize, char *token, size_t tsize); /* 1 if one */
void xb_poll(void);                    /* move arrived watch events off the ring */
int xb_events_queued(void);            /* watch events taken off the ring, not yet read */
void xb_wait(void);                    /* pv_wait unless a watch event is already in */
const char *xb_error_name(long err);
void xb_reset_state(void);

/* xenbus.c: the PV control interface (control/shutdown), as Linux's xenbus does it */
int pv_control_init(void);             /* features, watch, callback param; 0 or -errno */
int pv_control_event(const char *token); /* SHUTDOWN_poweroff/reboot to act on, or -1 */
/* Every queued watch event: a control/shutdown "suspend" calls suspend() (which makes the
 * suspend hypercall and returns), poweroff/reboot shut down, other tokens go to other(). */
void pv_serve_events(void (*suspend)(void), void (*other)(const char *token));
const char *pv_control_name(int reason);
int pv_sysrq_init(void);                /* watch control/sysrq; 0 or -errno */
int pv_sysrq_event(const char *token);  /* the sysrq key written (node cleared), or -1 */

/* console_ring.c */
int cons_init(void);                   /* HVM_PARAM_CONSOLE_PFN/EVTCHN; 0 or -errno */
struct xencons_interface *cons_intf(void);
evtchn_port_t cons_port(void);
void cons_write(const char *s, size_t n);
size_t cons_read(char *buf, size_t size);  /* what is there, never waits */
void cprintf(const char *fmt, ...);

/* pvdemo.c: the guest modes using them (from hello.c) */
void pv_main(const char *mode, unsigned int domid);
void pv_idle(void);                    /* mode=idle: blocked, answering control/shutdown */

#endif
