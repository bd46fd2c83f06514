/*
 * PVH entry of the 32-bit test guests: they stay where Xen's PVH ABI (docs/misc/pvh.pandoc)
 * starts them, in 32-bit protected mode with paging off and flat segments, %ebx = physical
 * address of struct hvm_start_info. Interrupts stay off (PLATFORM.md: 32-bit `iret` hangs
 * under kvm_pvm), so these guests poll instead of taking upcalls; an exception has no
 * handler and triple-faults, which pyxen reports as a crash.
 */
    .section .text.entry, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cld
    movl    $boot_stack_top, %esp       /* the PVH ABI gives us no stack */
    pushl   %ebx                        /* kmain32(start_info_paddr) */
    call    kmain32
1:  hlt
    jmp     1b

    .bss
    .p2align 12
    .globl hypercall_page
hypercall_page:
    .fill   4096, 1, 0
    .p2align 4
    .fill   16384, 1, 0
boot_stack_top:

    .section .note.GNU-stack, "", @progbits
