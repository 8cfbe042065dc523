/*
 * Exception entry for abiprobe. Xen bounces a fault to the handler registered with
 * set_trap_table with the frame [rcx, r11, (error code), rip, cs, rflags, rsp, ss] on the
 * stack. Each stub restores rcx and r11, makes the frame uniform - [vector, error code
 * (or -1), rip, cs, rflags, rsp, ss] - and calls on_trap(frame) with every other register C
 * may clobber saved. on_trap may move frame->rip; the stub then returns with HYPERVISOR_iret
 * (flags 0 pushed; the hypercall page's iret entry pushes rcx, r11 and rax).
 */
#define __ASSEMBLY__
#include <xen/xen.h>

        .macro TRAP_NO_ERROR name, vector
        .globl \name
\name:
        popq    %rcx
        popq    %r11
        pushq   $-1
        pushq   $\vector
        jmp     trap_common
        .endm

        .macro TRAP_ERROR name, vector
        .globl \name
\name:
        popq    %rcx
        popq    %r11
        pushq   $\vector
        jmp     trap_common
        .endm

        .text
        TRAP_NO_ERROR trap_divide_error, 0
        TRAP_NO_ERROR trap_breakpoint, 3
        TRAP_NO_ERROR trap_invalid_opcode, 6
        TRAP_ERROR    trap_general_protection, 13
        TRAP_ERROR    trap_page_fault, 14
        TRAP_NO_ERROR trap_software_0x80, 0x80

trap_common:
        pushq   %rax
        pushq   %rcx
        pushq   %rdx
        pushq   %rsi
        pushq   %rdi
        pushq   %r8
        pushq   %r9
        pushq   %r10
        pushq   %r11
        pushq   %rbp
        leaq    80(%rsp), %rdi
        movq    %rsp, %rbp
        andq    $-16, %rsp
        call    on_trap
        movq    %rbp, %rsp
        popq    %rbp
        popq    %r11
        popq    %r10
        popq    %r9
        popq    %r8
        popq    %rdi
        popq    %rsi
        popq    %rdx
        popq    %rcx
        popq    %rax
        addq    $16, %rsp
        pushq   $0
        jmp     hypercall_page + __HYPERVISOR_iret * 32

        .section .note.GNU-stack, "", @progbits
