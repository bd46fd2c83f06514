/* Event channels, upcalls, system time and the 256-entry IDT of the test guests. */
#include "evtchn.h"

#define LAPIC_BASE 0xfee00000UL
#define LAPIC_EOI  0xb0
#define LAPIC_SVR  0xf0

struct shared_info *shared;
volatile unsigned long upcalls;
static char shared_info_page[4096] __attribute__((aligned(4096)));
static uint64_t idt256[512] __attribute__((aligned(4096)));
static evtchn_handler_t handlers[EVTCHN_2L_NR_CHANNELS];

void idt_init256(void)
{
    memcpy(idt256, idt, 32 * 16);
    idt_load256();
}

void idt_load256(void)
{
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } ptr = {
        sizeof(idt256) - 1, (uint64_t)idt256 };
    asm volatile("lidt %0" :: "m"(ptr) : "memory");
}

void idt_set_gate(uint8_t vector, void (*handler)(void))
{
    uint64_t h = (uint64_t)handler;
    idt256[2 * vector] = (h & 0xffff) | (0x08ULL << 16) | (0x8eULL << 40) |
                         (((h >> 16) & 0xffff) << 48);
    idt256[2 * vector + 1] = h >> 32;
}

static inline volatile uint32_t *lapic(unsigned int reg)
{ return (volatile uint32_t *)(LAPIC_BASE + reg); }
void lapic_enable(void) { *lapic(LAPIC_SVR) = 0x1ff; }  /* software enable, spurious 0xff */
void lapic_eoi(void) { *lapic(LAPIC_EOI) = 0; }
unsigned int this_cpu(void) { return *lapic(0x20) >> 24; }

long shared_info_map(void)
{
    struct xen_add_to_physmap xatp = {
        .domid = DOMID_SELF, .space = XENMAPSPACE_shared_info, .idx = 0,
        .gpfn = (uint64_t)shared_info_page >> 12,
    };
    long rc = memory_op(XENMEM_add_to_physmap, &xatp);
    if (!rc) shared = (struct shared_info *)shared_info_page;
    return rc;
}

uint64_t xen_system_time(void)
{
    volatile struct vcpu_time_info *t = &shared->vcpu_info[0].time;
    uint32_t ver;
    uint64_t st, delta;
    do {
        ver = t->version;
        asm volatile("" ::: "memory");
        delta = rdtsc() - t->tsc_timestamp;
        if (t->tsc_shift >= 0) delta <<= t->tsc_shift; else delta >>= -t->tsc_shift;
        st = t->system_time + (uint64_t)(((unsigned __int128)delta * t->tsc_to_system_mul) >> 32);
        asm volatile("" ::: "memory");
    } while ((ver & 1) || ver != t->version);
    return st;
}

long evtchn_upcall_percpu(unsigned int vcpu, uint8_t vector)
{
    struct xen_hvm_evtchn_upcall_vector a = { .vcpu = vcpu, .vector = vector };
    return hvm_op(HVMOP_set_evtchn_upcall_vector, &a);
}

long evtchn_upcall_callback(uint8_t vector)
{
    struct xen_hvm_param p = { .domid = DOMID_SELF, .index = HVM_PARAM_CALLBACK_IRQ,
                               .value = (2ULL << 56) | vector };
    return hvm_op(HVMOP_set_param, &p);
}

void evtchn_set_handler(evtchn_port_t port, evtchn_handler_t fn)
{
    if (port < EVTCHN_2L_NR_CHANNELS) handlers[port] = fn;
}

/* --- FIFO ABI ------------------------------------------------------------------------ */

int evtchn_fifo;
uint8_t evtchn_fifo_link_bits;
static uint8_t fifo_cb_page[FIFO_MAX_VCPUS][4096] __attribute__((aligned(4096)));
static event_word_t fifo_array[1024] __attribute__((aligned(4096)));
static char fifo_spare[4096] __attribute__((aligned(4096)));
static uint32_t fifo_head[FIFO_MAX_VCPUS][EVTCHN_FIFO_MAX_QUEUES];  /* our copies of HEAD */

#define FIFO_BIT(b) ((event_word_t)1 << (b))

long evtchn_init_control(uint32_t vcpu, uint64_t gfn, uint32_t offset)
{
    struct evtchn_init_control a = { .control_gfn = gfn, .offset = offset, .vcpu = vcpu };
    long rc = event_channel_op(EVTCHNOP_init_control, &a);
    if (!rc) evtchn_fifo_link_bits = a.link_bits;
    return rc;
}

long evtchn_expand_array(uint64_t gfn)
{ struct evtchn_expand_array a = { .array_gfn = gfn }; return event_channel_op(EVTCHNOP_expand_array, &a); }

long evtchn_set_priority(evtchn_port_t port, uint32_t priority)
{
    struct evtchn_set_priority a = { .port = port, .priority = priority };
    return event_channel_op(EVTCHNOP_set_priority, &a);
}

uint64_t evtchn_fifo_spare_gfn(void) { return (uint64_t)fifo_spare >> 12; }

long evtchn_fifo_init_vcpu(unsigned int vcpu)
{
    if (vcpu >= FIFO_MAX_VCPUS) return -XEN_EINVAL;
    memset(fifo_cb_page[vcpu], 0, 4096);
    memset(fifo_head[vcpu], 0, sizeof(fifo_head[vcpu]));
    return evtchn_init_control(vcpu, (uint64_t)fifo_cb_page[vcpu] >> 12, 0);
}

long evtchn_fifo_init(void)
{
    long rc = evtchn_fifo_init_vcpu(0);
    if (rc) return rc;
    memset(fifo_array, 0, sizeof(fifo_array));
    evtchn_fifo = 1;  /* from here on the upcall consumes queues */
    return evtchn_expand_array((uint64_t)fifo_array >> 12);
}

static event_word_t *fifo_word(evtchn_port_t port) { return &fifo_array[port % 1024]; }

/* Unlink the head: clear LINKED and LINK together; the old LINK is the next head. */
static uint32_t fifo_clear_linked(event_word_t *word)
{
    event_word_t w = __atomic_load_n(word, __ATOMIC_SEQ_CST), new;
    do {
        new = w & ~(FIFO_BIT(EVTCHN_FIFO_LINKED) | EVTCHN_FIFO_LINK_MASK);
    } while (!__atomic_compare_exchange_n(word, &w, new, 0, __ATOMIC_SEQ_CST,
                                          __ATOMIC_SEQ_CST));
    return w & EVTCHN_FIFO_LINK_MASK;
}

/* Linux's consume_one_event: take the head of queue q; when it links nowhere the queue is
 * empty (clear our READY copy); handle it if still pending and unmasked. */
static void fifo_consume_one(unsigned int cpu, struct evtchn_fifo_control_block *cb,
                             unsigned int q, uint32_t *ready)
{
    uint32_t head = fifo_head[cpu][q];
    if (!head) head = __atomic_load_n(&cb->head[q], __ATOMIC_SEQ_CST);
    evtchn_port_t port = head;
    event_word_t *word = fifo_word(port);
    head = fifo_clear_linked(word);
    if (!head) *ready &= ~(1u << q);
    event_word_t w = __atomic_load_n(word, __ATOMIC_SEQ_CST);
    if ((w & FIFO_BIT(EVTCHN_FIFO_PENDING)) && !(w & FIFO_BIT(EVTCHN_FIFO_MASKED))) {
        __atomic_fetch_and(word, ~FIFO_BIT(EVTCHN_FIFO_PENDING), __ATOMIC_SEQ_CST);
        if (port < EVTCHN_2L_NR_CHANNELS && handlers[port]) handlers[port](port);
    }
    fifo_head[cpu][q] = head;
}

/* Highest priority (lowest number) first, READY re-read after each event. */
static void fifo_handle_events(unsigned int cpu)
{
    struct evtchn_fifo_control_block *cb = (void *)fifo_cb_page[cpu];
    uint32_t ready = __atomic_exchange_n(&cb->ready, 0, __ATOMIC_SEQ_CST);
    while (ready) {
        fifo_consume_one(cpu, cb, __builtin_ctz(ready), &ready);
        ready |= __atomic_exchange_n(&cb->ready, 0, __ATOMIC_SEQ_CST);
    }
}

long evtchn_reset(void)
{
    struct evtchn_reset r = { .dom = DOMID_SELF };
    long rc = event_channel_op(EVTCHNOP_reset, &r);
    if (!rc) evtchn_fifo = 0;
    return rc;
}

/* The upcall. 2-level: clear upcall_pending, take pending_sel, then every pending & ~mask
 * bit of each selected word, clearing each before its handler runs. FIFO: the queues. */
void evtchn_do_upcall(void)
{
    unsigned int cpu = this_cpu();
    struct vcpu_info *vi = &shared->vcpu_info[cpu];
    __atomic_fetch_add(&upcalls, 1, __ATOMIC_SEQ_CST);
    lapic_eoi();
    do {
        vi->evtchn_upcall_pending = 0;
        if (evtchn_fifo) {
            if (cpu < FIFO_MAX_VCPUS) fifo_handle_events(cpu);
            continue;
        }
        unsigned long sel = __atomic_exchange_n(&vi->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
        while (sel) {
            unsigned int w = __builtin_ctzl(sel);
            sel &= sel - 1;
            unsigned long bits;
            while ((bits = shared->evtchn_pending[w] & ~shared->evtchn_mask[w])) {
                unsigned int b = __builtin_ctzl(bits);
                evtchn_port_t port = w * 64 + b;
                __atomic_fetch_and(&shared->evtchn_pending[w], ~(1UL << b), __ATOMIC_SEQ_CST);
                if (handlers[port]) handlers[port](port);
            }
        }
    } while (__atomic_load_n(&vi->evtchn_upcall_pending, __ATOMIC_SEQ_CST));
}

long evtchn_alloc_unbound(domid_t remote, evtchn_port_t *port)
{
    struct evtchn_alloc_unbound a = { .dom = DOMID_SELF, .remote_dom = remote };
    long rc = event_channel_op(EVTCHNOP_alloc_unbound, &a);
    if (!rc) *port = a.port;
    return rc;
}

long evtchn_bind_interdomain(domid_t remote, evtchn_port_t rport, evtchn_port_t *port)
{
    struct evtchn_bind_interdomain a = { .remote_dom = remote, .remote_port = rport };
    long rc = event_channel_op(EVTCHNOP_bind_interdomain, &a);
    if (!rc) *port = a.local_port;
    return rc;
}

long evtchn_bind_virq(uint32_t virq, uint32_t vcpu, evtchn_port_t *port)
{
    struct evtchn_bind_virq a = { .virq = virq, .vcpu = vcpu };
    long rc = event_channel_op(EVTCHNOP_bind_virq, &a);
    if (!rc) *port = a.port;
    return rc;
}

long evtchn_bind_ipi(uint32_t vcpu, evtchn_port_t *port)
{
    struct evtchn_bind_ipi a = { .vcpu = vcpu };
    long rc = event_channel_op(EVTCHNOP_bind_ipi, &a);
    if (!rc) *port = a.port;
    return rc;
}

long evtchn_send(evtchn_port_t port)
{ struct evtchn_send a = { .port = port }; return event_channel_op(EVTCHNOP_send, &a); }
long evtchn_close(evtchn_port_t port)
{ struct evtchn_close a = { .port = port }; return event_channel_op(EVTCHNOP_close, &a); }
long evtchn_unmask(evtchn_port_t port)
{ struct evtchn_unmask a = { .port = port }; return event_channel_op(EVTCHNOP_unmask, &a); }

void evtchn_mask(evtchn_port_t port)
{
    if (evtchn_fifo)
        __atomic_fetch_or(fifo_word(port), FIFO_BIT(EVTCHN_FIFO_MASKED), __ATOMIC_SEQ_CST);
    else
        __atomic_fetch_or(&shared->evtchn_mask[port / 64], 1UL << (port % 64), __ATOMIC_SEQ_CST);
}

int evtchn_test_and_clear(evtchn_port_t port)
{
    if (evtchn_fifo) {
        event_word_t bit = FIFO_BIT(EVTCHN_FIFO_PENDING);
        return !!(__atomic_fetch_and(fifo_word(port), ~bit, __ATOMIC_SEQ_CST) & bit);
    }
    unsigned long bit = 1UL << (port % 64);
    return !!(__atomic_fetch_and(&shared->evtchn_pending[port / 64], ~bit, __ATOMIC_SEQ_CST) & bit);
}

int evtchn_is_pending(evtchn_port_t port)
{
    if (evtchn_fifo)
        return !!(__atomic_load_n(fifo_word(port), __ATOMIC_SEQ_CST) & FIFO_BIT(EVTCHN_FIFO_PENDING));
    return !!(__atomic_load_n(&shared->evtchn_pending[port / 64], __ATOMIC_SEQ_CST) &
              (1UL << (port % 64)));
}

long evtchn_poll(evtchn_port_t port, uint64_t timeout_abs_ns)
{
    evtchn_port_t ports[1] = { port };
    struct sched_poll p = { .nr_ports = 1, .timeout = timeout_abs_ns };
    set_xen_guest_handle(p.ports, ports);
    return sched_op(SCHEDOP_poll, &p);
}
