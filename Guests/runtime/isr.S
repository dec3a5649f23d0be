/*
 * Interrupt entry stubs (one per vector, 16 bytes apart, so the IDT can point at
 * mv_isr_stubs + 16 * vector) and the ring-3 enter/leave code used by mv_run_user.
 * Selectors and MV_MAX_CPUS must match runtime/mv.h.
 */
#define SEL_UDATA 0x1b
#define SEL_UCODE 0x23
#define SEL_KDATA 0x10
#define MAX_CPUS  256
#define USER_RFLAGS 0x3002          /* IOPL = 3, IF = 0, reserved bit 1 */

    .text
    .balign 16
    .globl mv_isr_stubs
mv_isr_stubs:
    vec = 0
    .rept 256
    .balign 16
    .if vec == 8 || vec == 10 || vec == 11 || vec == 12 || vec == 13 || vec == 14 || vec == 17 || vec == 21 || vec == 29 || vec == 30
    pushq   $vec                    /* the CPU pushed an error code */
    .else
    pushq   $0                      /* no error code: push a dummy one */
    pushq   $vec
    .endif
    jmp     isr_common
    vec = vec + 1
    .endr

isr_common:
    pushq   %rax
    pushq   %rbx
    pushq   %rcx
    pushq   %rdx
    pushq   %rsi
    pushq   %rdi
    pushq   %rbp
    pushq   %r8
    pushq   %r9
    pushq   %r10
    pushq   %r11
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    cld
    movq    %rsp, %rdi              /* struct mv_regs * */
    movq    %rsp, %rbx
    andq    $-16, %rsp
    call    mv_isr_dispatch
    movq    %rbx, %rsp
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %r11
    popq    %r10
    popq    %r9
    popq    %r8
    popq    %rbp
    popq    %rdi
    popq    %rsi
    popq    %rdx
    popq    %rcx
    popq    %rbx
    popq    %rax
    addq    $16, %rsp               /* vector, error code */
    iretq

/*
 * uint64_t mv_enter_user(fn = rdi, arg = rsi, saved_rsp_slot = rdx, tss_rsp0 = rcx)
 * Saves the callee-saved registers and RFLAGS on the ring-0 stack and stores RSP in *slot and in
 * TSS.RSP0 (exceptions from ring 3 push their frames right below the saved context). The user stack
 * starts 8 KiB further down. irets to mv_user_trampoline at CPL 3; the value fn returns comes back
 * through mv_syscall_entry.
 */
    .globl mv_enter_user
    .type mv_enter_user, @function
mv_enter_user:
    pushfq
    pushq   %rbx
    pushq   %rbp
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    movq    %rsp, (%rdx)
    movq    %rsp, (%rcx)
    leaq    -8192(%rsp), %rax
    andq    $-16, %rax
    pushq   $SEL_UDATA              /* SS */
    pushq   %rax                    /* RSP */
    pushq   $USER_RFLAGS            /* RFLAGS */
    pushq   $SEL_UCODE              /* CS */
    leaq    mv_user_trampoline(%rip), %rax
    pushq   %rax                    /* RIP */
    iretq
    .size mv_enter_user, . - mv_enter_user

/* CPL 3: fn(arg), then SYSCALL with the result in RDI. */
mv_user_trampoline:
    movq    %rdi, %rax
    movq    %rsi, %rdi
    call    *%rax
    movq    %rax, %rdi
    syscall
    ud2

/*
 * LSTAR target: CPL 0, but RSP is still the user stack. Find this CPU's saved ring-0 RSP by its
 * xAPIC ID (no stack needed), restore the context saved by mv_enter_user and return RDI to its caller.
 *
 * Some hosts' KVM (kvm-pvm, which emulates guest ring 0) jump to LSTAR on a ring-3 SYSCALL without
 * leaving CPL 3 (and turn a ring-3 `int n` into #UD). The stub checks CS; at CPL 3 it leaves ring 3
 * through an exception instead: the ud2 at mv_user_exit_ud2, which mv_ud_entry recognises.
 */
    .globl mv_syscall_entry
    .type mv_syscall_entry, @function
mv_syscall_entry:
    movl    %cs, %eax
    testb   $3, %al
    jz      mv_leave_user
    .globl mv_user_exit_ud2
mv_user_exit_ud2:
    ud2
    .size mv_syscall_entry, . - mv_syscall_entry

/*
 * IDT target of vector 6 (#UD). A #UD from CPL 3 at mv_user_exit_ud2 is the SYSCALL fallback: drop the
 * frame (the saved ring-0 context is complete; RDI still holds the result) and leave ring 3. Any other
 * #UD goes to the ordinary stub.
 */
    .globl mv_ud_entry
    .type mv_ud_entry, @function
mv_ud_entry:
    testb   $3, 8(%rsp)             /* CS of the frame (no error code for #UD) */
    jz      1f
    pushq   %rax
    leaq    mv_user_exit_ud2(%rip), %rax
    cmpq    %rax, 8(%rsp)           /* RIP of the frame */
    popq    %rax
    jne     1f
    lock incq mv_user_exit_fallbacks(%rip)
    jmp     mv_leave_user
1:  jmp     mv_isr_stubs + 6 * 16
    .size mv_ud_entry, . - mv_ud_entry

mv_leave_user:
    movl    $0xfee00020, %eax
    movl    (%rax), %eax
    shrl    $24, %eax
    andl    $(MAX_CPUS - 1), %eax
    leaq    mv_user_saved_rsp(%rip), %rcx
    movq    (%rcx,%rax,8), %rsp
    movl    $SEL_KDATA, %eax        /* iret to CPL 3 nulled DS/ES; reload them */
    movl    %eax, %ds
    movl    %eax, %es
    movq    %rdi, %rax
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbp
    popq    %rbx
    popfq
    ret

    .section .note.GNU-stack, "", @progbits
