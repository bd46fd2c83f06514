/*
 * Event channels (2-level and FIFO ABIs), grant tables (v1), Xen system time and upcall
 * delivery for the freestanding test guests: the client side of pyxen's
 * hypervisor/event_channel.py, event_2l.py, event_fifo.py and grant_table.py, written as
 * a Xen guest (Linux's drivers/xen/events) writes it.
 */
#ifndef PYXEN_EVTCHN_H
#define PYXEN_EVTCHN_H

#include "guest.h"
#include <xen/event_channel.h>
#include <xen/grant_table.h>

static inline long event_channel_op(int cmd, void *arg)
{ return HYPERCALL2(__HYPERVISOR_event_channel_op, cmd, arg); }
static inline long grant_table_op(int cmd, void *uop, unsigned int count)
{ return HYPERCALL3(__HYPERVISOR_grant_table_op, cmd, uop, count); }

/* --- CPU plumbing: a 256-entry IDT, the local APIC --------------------------------- */
void idt_init256(void);                       /* copies the 32 exception gates, lidt */
void idt_load256(void);                       /* lidt (secondary vCPUs) */
unsigned int this_cpu(void);                  /* LAPIC ID = vCPU id */
void idt_set_gate(uint8_t vector, void (*handler)(void));
void lapic_enable(void);
void lapic_eoi(void);
static inline void irq_enable(void) { asm volatile("sti" ::: "memory"); }
static inline void irq_disable(void) { asm volatile("cli" ::: "memory"); }
static inline uint64_t rdtsc(void)
{ uint32_t lo, hi; asm volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }

/* --- shared info, time ------------------------------------------------------------- */
extern struct shared_info *shared;
long shared_info_map(void);                   /* XENMAPSPACE_shared_info at a static page */
uint64_t xen_system_time(void);               /* ns, from vcpu 0's vcpu_time_info */

/* --- event channels ------------------------------------------------------------------ */
typedef void (*evtchn_handler_t)(evtchn_port_t port);
#define UPCALL_VECTOR 0xf3
extern volatile unsigned long upcalls;        /* upcall interrupts taken (all vCPUs) */
long evtchn_upcall_percpu(unsigned int vcpu, uint8_t vector);  /* HVMOP_set_evtchn_upcall_vector */
long evtchn_upcall_callback(uint8_t vector);  /* HVM_PARAM_CALLBACK_IRQ, vector type */
void evtchn_set_handler(evtchn_port_t port, evtchn_handler_t fn);
void evtchn_do_upcall(void);                  /* the 2-level scan (called by the stub) */
extern void evtchn_upcall_entry(void);        /* upcall.S: the interrupt stub */

long evtchn_alloc_unbound(domid_t remote, evtchn_port_t *port);
long evtchn_bind_interdomain(domid_t remote, evtchn_port_t rport, evtchn_port_t *port);
long evtchn_bind_virq(uint32_t virq, uint32_t vcpu, evtchn_port_t *port);
long evtchn_bind_ipi(uint32_t vcpu, evtchn_port_t *port);
long evtchn_send(evtchn_port_t port);
long evtchn_close(evtchn_port_t port);
long evtchn_unmask(evtchn_port_t port);
void evtchn_mask(evtchn_port_t port);
int evtchn_test_and_clear(evtchn_port_t port); /* pending bit */
long evtchn_poll(evtchn_port_t port, uint64_t timeout_abs_ns); /* SCHEDOP_poll, 1 port */
int evtchn_is_pending(evtchn_port_t port);
long evtchn_reset(void);                      /* EVTCHNOP_reset of DOMID_SELF: back to 2-level */

/* --- FIFO ABI: per-vCPU control blocks, one event array page (ports 0..1023) --------- */
#define FIFO_MAX_VCPUS 2
extern int evtchn_fifo;                       /* 1: delivery is FIFO (upcall consumes queues) */
extern uint8_t evtchn_fifo_link_bits;
long evtchn_init_control(uint32_t vcpu, uint64_t gfn, uint32_t offset);  /* the raw op */
long evtchn_expand_array(uint64_t gfn);
long evtchn_set_priority(evtchn_port_t port, uint32_t priority);
long evtchn_fifo_init(void);                  /* vCPU 0's control block + the first page */
long evtchn_fifo_init_vcpu(unsigned int vcpu);/* another vCPU's control block */
uint64_t evtchn_fifo_spare_gfn(void);         /* a page to hand over in error tests */

/* --- grant tables (v1) ------------------------------------------------------------- */
extern grant_entry_v1_t *gnttab;
long gnttab_map_table(void);                  /* frame 0 via XENMAPSPACE_grant_table */
void gnttab_grant_access(grant_ref_t ref, domid_t domid, uint64_t gfn, int readonly);
int gnttab_end_access(grant_ref_t ref);       /* 0, or -1 while the grantee has it mapped */

/* --- the loopback device of pyxen.backends.loopback (request page layout) ----------- */
#define LOOPBACK_ECHO     1  /* reply = data with every byte + 1 */
#define LOOPBACK_MAP      2  /* map ref arg0 (arg1: 1 = read-only) and keep it mapped */
#define LOOPBACK_UNMAP    3  /* unmap what MAP mapped */
#define LOOPBACK_COPY     4  /* copy arg2 bytes at offset arg1 of ref arg0 into reply */
#define LOOPBACK_PING     5  /* nothing but the notification back */
#define LOOPBACK_DATA_LEN 256
struct loopback_page {
    uint32_t seq;        /* guest: incremented per request */
    uint32_t cmd;
    uint32_t arg0, arg1, arg2;
    int32_t  status;     /* backend: 0 or a GNTST_* code */
    uint32_t done;       /* backend: = seq when the request is complete */
    uint32_t pad;
    uint8_t  data[LOOPBACK_DATA_LEN];
    uint8_t  reply[LOOPBACK_DATA_LEN];
};

#endif
