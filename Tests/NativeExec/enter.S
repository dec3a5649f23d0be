/* native_enter(native_state *s, void *code): loads the state, jumps to code; the code jumps to
 * native_exit, which stores the state back and returns to native_enter's caller. One call at a time
 * per process (native_run calls it in a fresh child). Offsets follow native_state. */
    .text
    .globl native_enter
    .type native_enter, @function
native_enter:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rdi, state_ptr(%rip)
    mov %rsi, code_ptr(%rip)
    mov %rsp, saved_rsp(%rip)
    fldenv 152(%rdi)
    ldmxcsr 144(%rdi)
    pushq 136(%rdi)
    popfq
    mov 0(%rdi), %rax
    mov 8(%rdi), %rcx
    mov 16(%rdi), %rdx
    mov 24(%rdi), %rbx
    mov 40(%rdi), %rbp
    mov 48(%rdi), %rsi
    mov 64(%rdi), %r8
    mov 72(%rdi), %r9
    mov 80(%rdi), %r10
    mov 88(%rdi), %r11
    mov 96(%rdi), %r12
    mov 104(%rdi), %r13
    mov 112(%rdi), %r14
    mov 120(%rdi), %r15
    mov 56(%rdi), %rdi
    jmp *code_ptr(%rip)

    .globl native_exit
    .type native_exit, @function
native_exit:
    mov %rdi, scratch(%rip)
    mov state_ptr(%rip), %rdi
    mov %rax, 0(%rdi)
    mov %rcx, 8(%rdi)
    mov %rdx, 16(%rdi)
    mov %rbx, 24(%rdi)
    mov %rsp, 32(%rdi)
    mov %rbp, 40(%rdi)
    mov %rsi, 48(%rdi)
    mov %r8, 64(%rdi)
    mov %r9, 72(%rdi)
    mov %r10, 80(%rdi)
    mov %r11, 88(%rdi)
    mov %r12, 96(%rdi)
    mov %r13, 104(%rdi)
    mov %r14, 112(%rdi)
    mov %r15, 120(%rdi)
    mov scratch(%rip), %rax
    mov %rax, 56(%rdi)
    pushfq
    popq 136(%rdi)
    stmxcsr 144(%rdi)
    fnstenv 152(%rdi)
    fninit
    mov saved_rsp(%rip), %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    cld
    ret

    .data
    .balign 8
state_ptr: .quad 0
code_ptr: .quad 0
saved_rsp: .quad 0
scratch: .quad 0
    .section .note.GNU-stack,"",@progbits
