/*
 * Kernel entry, event upcall entry and the hypercall page.
 *
 * _start: the hypervisor enters here with %rsi -> start_info. We switch to
 * our own boot stack and call start_kernel(start_info) (kernel.c).
 *
 * hypervisor_callback: the event upcall. The hypervisor has pushed a bounce
 * frame [rcx, r11, rip, cs, rflags, rsp, ss] on the interrupted stack and set
 * evtchn_upcall_mask. We save every register C may clobber, run
 * do_event_upcall() with events still masked, restore, and return with
 * HYPERVISOR_iret: after popping rcx and r11 into their registers and pushing
 * flags = 0, the stack holds [flags, rip, cs, rflags, rsp, ss]; the iret
 * entry of the hypercall page pushes rcx, r11 and rax itself, completing
 * struct iret_context. iret restores the event mask from rflags.IF.
 * The CFI lets a debugger unwind from the handler into the interrupted code.
 */
#define __ASSEMBLY__
#include <xen/xen.h>

#define BOOT_STACK_SIZE (16 * 1024)

        .section .text.entry, "ax", @progbits
        .globl _start
        .type _start, @function
_start:
        .cfi_startproc
        .cfi_undefined rip
        cld
        leaq    boot_stack_top(%rip), %rsp
        xorl    %ebp, %ebp
        movq    %rsi, %rdi
        call    start_kernel
        ud2
        .cfi_endproc
        .size _start, . - _start

        .text
        .globl hypervisor_callback
        .type hypervisor_callback, @function
hypervisor_callback:
        .cfi_startproc simple
        .cfi_signal_frame
        /* CFA = top of the bounce frame; the interrupted registers are in it. */
        .cfi_def_cfa rsp, 56
        .cfi_offset rcx, -56
        .cfi_offset r11, -48
        .cfi_offset rip, -40
        .cfi_offset rsp, -16
        pushq   %rax
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset rax, 0
        pushq   %rdx
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset rdx, 0
        pushq   %rsi
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset rsi, 0
        pushq   %rdi
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset rdi, 0
        pushq   %r8
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset r8, 0
        pushq   %r9
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset r9, 0
        pushq   %r10
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset r10, 0
        pushq   %rbp
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset rbp, 0
        movq    %rsp, %rbp
        .cfi_def_cfa_register rbp
        andq    $-16, %rsp
        call    do_event_upcall
        movq    %rbp, %rsp
        .cfi_def_cfa_register rsp
        popq    %rbp
        .cfi_adjust_cfa_offset -8
        .cfi_restore rbp
        popq    %r10
        .cfi_adjust_cfa_offset -8
        .cfi_restore r10
        popq    %r9
        .cfi_adjust_cfa_offset -8
        .cfi_restore r9
        popq    %r8
        .cfi_adjust_cfa_offset -8
        .cfi_restore r8
        popq    %rdi
        .cfi_adjust_cfa_offset -8
        .cfi_restore rdi
        popq    %rsi
        .cfi_adjust_cfa_offset -8
        .cfi_restore rsi
        popq    %rdx
        .cfi_adjust_cfa_offset -8
        .cfi_restore rdx
        popq    %rax
        .cfi_adjust_cfa_offset -8
        .cfi_restore rax
        popq    %rcx
        .cfi_adjust_cfa_offset -8
        .cfi_restore rcx
        popq    %r11
        .cfi_adjust_cfa_offset -8
        .cfi_restore r11
        pushq   $0
        .cfi_adjust_cfa_offset 8
        jmp     hypercall_page + __HYPERVISOR_iret * 32
        .cfi_endproc
        .size hypervisor_callback, . - hypervisor_callback

/* The failsafe callback runs when the hypervisor cannot return to us: crash. */
        .globl failsafe_callback
        .type failsafe_callback, @function
failsafe_callback:
        .cfi_startproc
        .cfi_undefined rip
        andq    $-16, %rsp
        call    on_failsafe_callback
        ud2
        .cfi_endproc
        .size failsafe_callback, . - failsafe_callback

/* Filled by the hypervisor before we start (XEN_ELFNOTE_HYPERCALL_PAGE). */
        .section .hypercall_page, "ax", @progbits
        .balign 4096
        .globl hypercall_page
        .type hypercall_page, @object
hypercall_page:
        .fill 4096, 1, 0xcc
        .size hypercall_page, 4096

        .section .bss.boot_stack, "aw", @nobits
        .balign 16
boot_stack:
        .skip BOOT_STACK_SIZE
boot_stack_top:

        .section .note.GNU-stack, "", @progbits
