/* The event-channel upcall interrupt: save the caller-saved registers, run the 2-level
 * scan in C, return with iretq (64-bit mode only; see docs/PLATFORM notes). */
    .text
    .globl evtchn_upcall_entry
evtchn_upcall_entry:
    pushq   %rax
    pushq   %rcx
    pushq   %rdx
    pushq   %rsi
    pushq   %rdi
    pushq   %r8
    pushq   %r9
    pushq   %r10
    pushq   %r11
    cld
    call    evtchn_do_upcall        /* 5-word frame + 9 pushes: %rsp is 16-aligned */
    popq    %r11
    popq    %r10
    popq    %r9
    popq    %r8
    popq    %rdi
    popq    %rsi
    popq    %rdx
    popq    %rcx
    popq    %rax
    iretq

    .section .note.GNU-stack, "", @progbits
