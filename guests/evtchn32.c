/*
 * evtchn32.elf: event channels from a 32-bit PVH guest (start32.S: 32-bit protected mode,
 * paging off, interrupts off). Built with -m32, so Xen's headers give it the x86_32
 * layouts: vcpu_info's evtchn_pending_sel is 32 bits at offset 4, and a port's selector
 * bit is port / 32. Its first hypercall-page MSR write, in 32-bit mode, makes pyxen latch
 * the domain's shared info layout to x86_32 (Xen's hvm_latch_shinfo_size).
 *
 * 2-level: the selector bits in its vcpu_info. FIFO: the same control block and event
 * words as a 64-bit guest (the ABI has one layout), with the event raised under 2-level
 * carried over. Events are seen in memory and with SCHEDOP_poll, never as upcalls.
 * One line per check, "evtchn32: <what>: <results>".
 */
#include "guest.h"
#include <xen/event_channel.h>

static inline long event_channel_op(int cmd, void *arg)
{ return HYPERCALL2(__HYPERVISOR_event_channel_op, cmd, arg); }

static char vcpu_info_page[4096] __attribute__((aligned(4096)));
static char control_page[4096] __attribute__((aligned(4096)));
static event_word_t event_array[1024] __attribute__((aligned(4096)));

_Static_assert(offsetof(struct vcpu_info, evtchn_pending_sel) == 4, "x86_32 vcpu_info");
_Static_assert(sizeof(xen_ulong_t) == 4, "built -m32");

static evtchn_port_t bind_ipis_up_to(evtchn_port_t want)
{
    struct evtchn_bind_ipi b = { .vcpu = 0 };
    while (b.port < want)
        if (event_channel_op(EVTCHNOP_bind_ipi, &b)) return 0;
    return b.port;
}

static long send(evtchn_port_t port)
{ struct evtchn_send s = { .port = port }; return event_channel_op(EVTCHNOP_send, &s); }

static long poll_now(evtchn_port_t port)
{
    struct sched_poll p = { .nr_ports = 1, .timeout = 1 };  /* long past: never sleeps */
    set_xen_guest_handle(p.ports, &port);
    return sched_op(SCHEDOP_poll, &p);
}

void kmain32(uint32_t start_info_paddr)
{
    (void)start_info_paddr;
    uint32_t base = find_xen_leaves();
    if (!base) for (;;) asm volatile("cli; hlt");
    uint32_t a, b, c, d;
    cpuid(base + 2, &a, &b, &c, &d);
    wrmsr(b, (uintptr_t)hypercall_page);

    struct vcpu_register_vcpu_info info = { .mfn = (uintptr_t)vcpu_info_page >> 12 };
    long rc = vcpu_op(VCPUOP_register_vcpu_info, 0, &info);
    volatile struct vcpu_info *vi = (void *)vcpu_info_page;
    /* Xen marks everything pending in a new vcpu_info: one 32-bit word here */
    printk("evtchn32: register_vcpu_info: rc %ld selector %lx cr2 %lx upcall %u\n", rc,
           (unsigned long)vi->evtchn_pending_sel, (unsigned long)vi->arch.cr2,
           vi->evtchn_upcall_pending);
    vi->evtchn_pending_sel = 0;
    vi->evtchn_upcall_pending = 0;

    /* port 33 is selector bit 1 (33 / 32); bit 0 belongs to ports 0-31, which pyxen's
     * console and xenstore backends may raise at any time */
    evtchn_port_t p = bind_ipis_up_to(33);
    unsigned before = (vi->evtchn_pending_sel >> 1) & 1;
    rc = send(p);
    printk("evtchn32: 2-level port %u: send %ld selector bit 1 %u -> %lu upcall %u poll %ld\n",
           p, rc, before, (unsigned long)(vi->evtchn_pending_sel >> 1) & 1,
           vi->evtchn_upcall_pending, poll_now(p));

    struct evtchn_init_control ic = { .control_gfn = (uintptr_t)control_page >> 12,
                                      .offset = 0, .vcpu = 0 };
    rc = event_channel_op(EVTCHNOP_init_control, &ic);
    struct evtchn_expand_array ea = { .array_gfn = (uintptr_t)event_array >> 12 };
    long rc2 = event_channel_op(EVTCHNOP_expand_array, &ea);
    volatile struct evtchn_fifo_control_block *cb = (void *)control_page;
    printk("evtchn32: fifo init %ld link_bits %u expand %ld\n", rc, ic.link_bits, rc2);
    /* port 33, pending under 2-level, is linked on queue 7 once its word exists, in port
     * order behind whatever else was pending then (e.g. the console port pyxen's backend
     * notified); a notification arriving after init is linked behind it: so 33's LINK
     * field is not printed, only whether 33 is on the queue with ascending ports before */
    evtchn_port_t prev = 0;
    int n = 0, found = 0, ordered = 1;
    for (evtchn_port_t at = cb->head[EVTCHN_FIFO_PRIORITY_DEFAULT]; at && n < 64; n++) {
        if (at == p) { found = 1; break; }
        ordered &= at > prev;
        prev = at;
        at = event_array[at] & EVTCHN_FIFO_LINK_MASK;
    }
    printk("evtchn32: fifo carried over: word %x, on queue 7 %d (in port order %d), "
           "ready %x\n", event_array[p] & ~EVTCHN_FIFO_LINK_MASK, found, ordered, cb->ready);

    evtchn_port_t q = bind_ipis_up_to(p + 1);
    struct evtchn_set_priority sp = { .port = q, .priority = 2 };
    rc = event_channel_op(EVTCHNOP_set_priority, &sp);
    vi->evtchn_upcall_pending = 0;
    rc2 = send(q);
    printk("evtchn32: fifo port %u priority 2: set %ld send %ld word %x head2 %u ready %x "
           "upcall %u poll %ld\n", q, rc, rc2, event_array[q], cb->head[2], cb->ready,
           vi->evtchn_upcall_pending, poll_now(q));
    printk("evtchn32: powering off\n");
    shutdown(SHUTDOWN_poweroff);
}
