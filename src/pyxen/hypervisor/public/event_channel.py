"""xen/event_channel.h: EVTCHNOP_* sub-ops, EVTCHNSTAT_* and their argument structs, the
2-level and FIFO ABIs' constants and the FIFO control block (VIRQ numbers come from
xen/xen.h). Every struct here has the same layout for 32-bit guests (checked with -m32)."""

from __future__ import annotations

from . import XenStruct, XenUnion, domid_t, u8, u32, u64

evtchn_port_t = u32

EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_bind_pirq = 2
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_bind_ipi = 7
EVTCHNOP_bind_vcpu = 8
EVTCHNOP_unmask = 9
EVTCHNOP_reset = 10
EVTCHNOP_init_control = 11
EVTCHNOP_expand_array = 12
EVTCHNOP_set_priority = 13

EVTCHNSTAT_closed = 0
EVTCHNSTAT_unbound = 1
EVTCHNSTAT_interdomain = 2
EVTCHNSTAT_pirq = 3
EVTCHNSTAT_virq = 4
EVTCHNSTAT_ipi = 5

# xen/xen.h
VIRQ_TIMER = 0
VIRQ_DEBUG = 1
VIRQ_CONSOLE = 2
VIRQ_DOM_EXC = 3
VIRQ_TBUF = 4
VIRQ_DEBUGGER = 6
VIRQ_XENOPROF = 7
VIRQ_CON_RING = 8
VIRQ_PCPU_STATE = 9
VIRQ_MEM_EVENT = 10
VIRQ_ARGO = 11
VIRQ_ENOMEM = 12
VIRQ_XENPMU = 13
VIRQ_ARCH_0 = 16
NR_VIRQS = 24
# Per-vCPU VIRQs ("V." in xen.h); every other VIRQ is global (bound on vCPU 0 only).
VCPU_VIRQS = frozenset({VIRQ_TIMER, VIRQ_DEBUG, VIRQ_XENOPROF, VIRQ_XENPMU})

EVTCHN_2L_NR_CHANNELS = 8 * 8 * 64  # sizeof(xen_ulong_t)^2 * 64
EVTCHN_2L_NR_CHANNELS_COMPAT = 4 * 4 * 64  # a 32-bit shared_info: 32-bit words

# FIFO ABI
EVTCHN_FIFO_PRIORITY_MAX = 0
EVTCHN_FIFO_PRIORITY_DEFAULT = 7
EVTCHN_FIFO_PRIORITY_MIN = 15
EVTCHN_FIFO_MAX_QUEUES = EVTCHN_FIFO_PRIORITY_MIN + 1
event_word_t = u32
EVTCHN_FIFO_PENDING = 31
EVTCHN_FIFO_MASKED = 30
EVTCHN_FIFO_LINKED = 29
EVTCHN_FIFO_BUSY = 28
EVTCHN_FIFO_LINK_BITS = 17
EVTCHN_FIFO_LINK_MASK = (1 << EVTCHN_FIFO_LINK_BITS) - 1
EVTCHN_FIFO_NR_CHANNELS = 1 << EVTCHN_FIFO_LINK_BITS


class evtchn_alloc_unbound(XenStruct):
    _xen_c_type_ = "struct evtchn_alloc_unbound"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("dom", domid_t), ("remote_dom", domid_t), ("port", evtchn_port_t)]


class evtchn_bind_interdomain(XenStruct):
    _xen_c_type_ = "struct evtchn_bind_interdomain"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("remote_dom", domid_t), ("remote_port", evtchn_port_t),
                ("local_port", evtchn_port_t)]


class evtchn_bind_virq(XenStruct):
    _xen_c_type_ = "struct evtchn_bind_virq"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("virq", u32), ("vcpu", u32), ("port", evtchn_port_t)]


class evtchn_bind_pirq(XenStruct):
    _xen_c_type_ = "struct evtchn_bind_pirq"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("pirq", u32), ("flags", u32), ("port", evtchn_port_t)]


class evtchn_bind_ipi(XenStruct):
    _xen_c_type_ = "struct evtchn_bind_ipi"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("vcpu", u32), ("port", evtchn_port_t)]


class evtchn_close(XenStruct):
    _xen_c_type_ = "struct evtchn_close"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("port", evtchn_port_t)]


class evtchn_send(XenStruct):
    _xen_c_type_ = "struct evtchn_send"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("port", evtchn_port_t)]


class evtchn_status_unbound(XenStruct):
    _fields_ = [("dom", domid_t)]


class evtchn_status_interdomain(XenStruct):
    _fields_ = [("dom", domid_t), ("port", evtchn_port_t)]


class evtchn_status_u(XenUnion):
    _fields_ = [("unbound", evtchn_status_unbound),
                ("interdomain", evtchn_status_interdomain),
                ("pirq", u32), ("virq", u32)]


class evtchn_status(XenStruct):
    _xen_c_type_ = "struct evtchn_status"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("dom", domid_t), ("port", evtchn_port_t), ("status", u32), ("vcpu", u32),
                ("u", evtchn_status_u)]


class evtchn_bind_vcpu(XenStruct):
    _xen_c_type_ = "struct evtchn_bind_vcpu"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("port", evtchn_port_t), ("vcpu", u32)]


class evtchn_unmask(XenStruct):
    _xen_c_type_ = "struct evtchn_unmask"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("port", evtchn_port_t)]


class evtchn_reset(XenStruct):
    _xen_c_type_ = "struct evtchn_reset"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("dom", domid_t)]


class evtchn_init_control(XenStruct):
    _xen_c_type_ = "struct evtchn_init_control"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("control_gfn", u64), ("offset", u32), ("vcpu", u32), ("link_bits", u8),
                ("_pad", u8 * 7)]


class evtchn_expand_array(XenStruct):
    _xen_c_type_ = "struct evtchn_expand_array"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("array_gfn", u64)]


class evtchn_set_priority(XenStruct):
    _xen_c_type_ = "struct evtchn_set_priority"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("port", evtchn_port_t), ("priority", u32)]


class evtchn_fifo_control_block(XenStruct):
    _xen_c_type_ = "struct evtchn_fifo_control_block"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("ready", u32), ("_rsvd", u32), ("head", u32 * EVTCHN_FIFO_MAX_QUEUES)]


class evtchn_op_u(XenUnion):
    _fields_ = [("alloc_unbound", evtchn_alloc_unbound),
                ("bind_interdomain", evtchn_bind_interdomain),
                ("bind_virq", evtchn_bind_virq), ("bind_pirq", evtchn_bind_pirq),
                ("bind_ipi", evtchn_bind_ipi), ("close", evtchn_close), ("send", evtchn_send),
                ("status", evtchn_status), ("bind_vcpu", evtchn_bind_vcpu),
                ("unmask", evtchn_unmask)]


class evtchn_op(XenStruct):
    """The argument of the compat hypercall __HYPERVISOR_event_channel_op_compat."""

    _xen_c_type_ = "struct evtchn_op"
    _xen_header_ = "xen/event_channel.h"
    _fields_ = [("cmd", u32), ("u", evtchn_op_u)]
