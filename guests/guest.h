/* Shared declarations of the freestanding test guests: Xen ABI, hypercalls, helpers. */
#ifndef PYXEN_GUEST_H
#define PYXEN_GUEST_H

#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>
#include <xen/xen.h>
#include <xen/errno.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/version.h>
#include <xen/memory.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>
#include <xen/hvm/hvm_vcpu.h>
#include <xen/arch-x86/hvm/start_info.h>
#include <xen/arch-x86/cpuid.h>

extern char hypercall_page[4096];

#ifdef __x86_64__
/* Hypercall ABI (64-bit): number selects the 32-byte stub, args in rdi rsi rdx r10 r8. */
static inline long hypercall(unsigned int nr, unsigned long a1, unsigned long a2,
                             unsigned long a3, unsigned long a4, unsigned long a5)
{
    register unsigned long r10 asm("r10") = a4;
    register unsigned long r8 asm("r8") = a5;
    long ret = (long)(hypercall_page + nr * 32);
    asm volatile("call *%%rax"
                 : "+a"(ret), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                 :
                 : "memory", "cc");
    return ret;
}
#else
/* Hypercall ABI (32-bit, Xen's compat ABI): args in ebx ecx edx esi edi. */
static inline long hypercall(unsigned int nr, unsigned long a1, unsigned long a2,
                             unsigned long a3, unsigned long a4, unsigned long a5)
{
    long ret = (long)(hypercall_page + nr * 32);
    asm volatile("call *%%eax"
                 : "+a"(ret), "+b"(a1), "+c"(a2), "+d"(a3), "+S"(a4), "+D"(a5)
                 :
                 : "memory", "cc");
    return ret;
}
#endif
#define HYPERCALL2(nr, a, b) hypercall(nr, (unsigned long)(a), (unsigned long)(b), 0, 0, 0)
#define HYPERCALL3(nr, a, b, c) \
    hypercall(nr, (unsigned long)(a), (unsigned long)(b), (unsigned long)(c), 0, 0)

static inline long xen_version(int cmd, void *arg)
{ return HYPERCALL2(__HYPERVISOR_xen_version, cmd, arg); }
static inline long console_io(int cmd, int count, const void *buf)
{ return HYPERCALL3(__HYPERVISOR_console_io, cmd, count, buf); }
static inline long sched_op(int cmd, void *arg)
{ return HYPERCALL2(__HYPERVISOR_sched_op, cmd, arg); }
static inline long vcpu_op(int cmd, unsigned int vcpu, void *arg)
{ return HYPERCALL3(__HYPERVISOR_vcpu_op, cmd, vcpu, arg); }
static inline long memory_op(int cmd, void *arg)
{ return HYPERCALL2(__HYPERVISOR_memory_op, cmd, arg); }
static inline long hvm_op(int cmd, void *arg)
{ return HYPERCALL2(__HYPERVISOR_hvm_op, cmd, arg); }

static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{ asm volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0)); }
static inline void wrmsr(uint32_t msr, uint64_t v)
{ asm volatile("wrmsr" :: "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32))); }
static inline void outb(uint16_t port, uint8_t v)
{ asm volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void cpu_relax(void) { asm volatile("pause" ::: "memory"); }

/* lib.c */
#define GUEST_PTR(paddr) ((void *)(uintptr_t)(paddr))  /* identity-mapped physical address */
size_t strlen(const char *s);
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int strncmp(const char *a, const char *b, size_t n);
int streq(const char *a, const char *b);

extern char cmdline[1024];
void cmdline_load(uint64_t paddr);
const char *opt(const char *key, char *out, size_t size);
unsigned long opt_ul(const char *key, unsigned long dflt);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...);
void printk(const char *fmt, ...);          /* console_io write + the PV console ring */
int hvc_init(void);                         /* the PV console ring (HVM params); 0 or -errno */
size_t hvc_write(const char *s, size_t n);  /* what fits (waits a little for space) */
size_t hvc_read(char *buf, size_t size);    /* console input from the ring, never waits */
void hvc_reset(void);                       /* look the ring up again (a new domain) */
void debug_port_printk(const char *fmt, ...); /* port 0xe9 */
void shutdown(unsigned int reason) __attribute__((noreturn));

/* start.S */
#ifdef __x86_64__
uint64_t run_user(uint64_t (*fn)(uint64_t), uint64_t arg, void *stack_top);
void triple_fault(void) __attribute__((noreturn));
extern char exception_stubs[];
extern char ap_start64[];
extern uint64_t gdt[];
extern char idt[];
void cpu_tables_init(void);                 /* lib.c: TSS and exception gates */
extern char pml4[];
#endif
uint32_t find_xen_leaves(void);             /* lib.c */

#endif
