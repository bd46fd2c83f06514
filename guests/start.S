/*
 * PVH entry and the little machinery a 64-bit test guest needs: page tables, GDT, IDT,
 * TSS, a round trip through ring 3, and the 64-bit entry point of secondary vCPUs.
 *
 * Xen's PVH ABI (docs/misc/pvh.pandoc) starts us in 32-bit protected mode, paging off,
 * flat segments, %ebx = physical address of struct hvm_start_info.
 */
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_DS   0x1b
#define USER_CS   0x23

    .section .text.entry, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cld
    movl    %ebx, %esi                  /* keep start_info */
    movl    $boot_stack_top, %esp       /* the PVH ABI gives us no stack */

    /* Greet from 32-bit protected mode (paging off): exercises the 32-bit hypercall ABI
     * (ebx, ecx, edx, ...). Only if Xen's leaves are at their usual base. */
    movl    $0x40000000, %eax
    cpuid
    cmpl    $0x566e6558, %ebx           /* "XenV" */
    jne     1f
    movl    $0x40000002, %eax
    cpuid
    movl    %ebx, %ecx                  /* the hypercall page MSR */
    movl    $hypercall_page, %eax
    xorl    %edx, %edx
    wrmsr
    xorl    %ebx, %ebx                  /* CONSOLEIO_write */
    movl    $(msg32_end - msg32), %ecx
    movl    $msg32, %edx
    call    hypercall_page + 18 * 32    /* __HYPERVISOR_console_io */
1:
    lgdt    gdt_ptr
    movl    $pml4, %eax
    movl    %eax, %cr3
    movl    %cr4, %eax
    orl     $0x20, %eax                 /* PAE */
    movl    %eax, %cr4
    movl    $0xc0000080, %ecx           /* EFER.LME */
    rdmsr
    orl     $0x100, %eax
    wrmsr
    movl    %cr0, %eax
    orl     $0x80000001, %eax           /* PG | PE */
    movl    %eax, %cr0
    ljmp    $KERNEL_CS, $start64

    .code64
start64:
    movl    $KERNEL_DS, %eax
    movl    %eax, %ds
    movl    %eax, %es
    movl    %eax, %ss
    xorl    %eax, %eax
    movl    %eax, %fs
    movl    %eax, %gs
    leaq    boot_stack_top(%rip), %rsp
    movl    %esi, %edi
    call    kmain
1:  hlt
    jmp     1b

/* Secondary vCPUs start here in 64-bit mode (VCPUOP_initialise, VCPU_HVM_MODE_64B),
 * with %rdi = vcpu id and %rsp = their stack. */
    .globl ap_start64
ap_start64:
    lgdt    gdt_ptr(%rip)
    movl    $KERNEL_DS, %eax
    movl    %eax, %ds
    movl    %eax, %es
    movl    %eax, %ss
    pushq   $KERNEL_CS
    leaq    1f(%rip), %rax
    pushq   %rax
    lretq
1:  lidt    idt_ptr(%rip)
    call    ap_main
2:  hlt
    jmp     2b

/* uint64_t run_user(uint64_t (*fn)(uint64_t), uint64_t arg, void *stack_top)
 * Runs fn(arg) in ring 3; fn's result comes back through #UD (see ud_handler). */
    .globl run_user
run_user:
    pushq   %rbx
    pushq   %rbp
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    movq    %rsp, kernel_saved_rsp(%rip)
    movq    %rdi, %r12
    movq    %rsi, %rdi
    pushq   $USER_DS
    pushq   %rdx
    pushq   $0x2                        /* rflags: IF=0 */
    pushq   $USER_CS
    leaq    user_trampoline(%rip), %rax
    pushq   %rax
    iretq

user_trampoline:                        /* ring 3 */
    call    *%r12
    ud2                                 /* back to ring 0 with the result in %rax */

/* Exception stubs: push a vector (and a dummy error code where the CPU pushes none). */
    .p2align 4
    .globl exception_stubs
exception_stubs:
    .set vec, 0
    .rept 32
    .p2align 4
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq   $0
    .endif
    pushq   $vec
    jmp     exception_common
    .set vec, vec + 1
    .endr

exception_common:
    cmpq    $6, (%rsp)                  /* #UD ... */
    jne     1f
    testb   $3, 24(%rsp)                /* ... from ring 3: the end of run_user */
    jz      1f
    movq    kernel_saved_rsp(%rip), %rsp
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbp
    popq    %rbx
    ret
1:  movq    %rsp, %rdi                  /* anything else is fatal: report and crash */
    andq    $-16, %rsp
    call    exception_report
2:  hlt
    jmp     2b

/* Empty the IDT and fault: no handler, no double-fault handler -> triple fault. */
    .globl triple_fault
triple_fault:
    lidt    null_idt_ptr(%rip)
    ud2
    jmp     triple_fault

    .section .rodata
msg32:
    .ascii  "pyxen hello: hypercall from 32-bit protected mode\n"
msg32_end:

    .data
    .p2align 4
    .globl gdt
gdt:
    .quad   0
    .quad   0x00af9a000000ffff          /* 0x08 kernel code, 64-bit */
    .quad   0x00cf92000000ffff          /* 0x10 kernel data */
    .quad   0x00cff2000000ffff          /* 0x18 user data (DPL 3) */
    .quad   0x00affa000000ffff          /* 0x20 user code, 64-bit (DPL 3) */
    .quad   0, 0                        /* 0x28 TSS, filled in by C */
gdt_end:
    .p2align 3
gdt_ptr:
    .word   gdt_end - gdt - 1
    .quad   gdt
    .p2align 3
    .globl idt_ptr
idt_ptr:
    .word   32 * 16 - 1
    .quad   idt
null_idt_ptr:
    .word   0
    .quad   0
kernel_saved_rsp:
    .quad   0

/* Identity map of the first 4 GiB with 2 MiB pages, user-accessible. */
    .p2align 12
pml4:
    .quad   pdpt + 0x7
    .fill   511, 8, 0
pdpt:
    .quad   pd + 0x0007
    .quad   pd + 0x1007
    .quad   pd + 0x2007
    .quad   pd + 0x3007
    .fill   508, 8, 0
pd:
    .set i, 0
    .rept 2048
    .quad   (i << 21) | 0x87
    .set i, i + 1
    .endr

    .bss
    .p2align 12
    .globl idt
idt:
    .fill   32 * 16, 1, 0
    .p2align 12
    .globl hypercall_page
hypercall_page:
    .fill   4096, 1, 0
    .p2align 4
    .fill   16384, 1, 0
boot_stack_top:
    .globl pml4

    .section .note.GNU-stack, "", @progbits
