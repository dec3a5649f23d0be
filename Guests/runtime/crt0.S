/*
 * crt0 for 64-bit minivisor guests. Entry state (docs/boot-protocol.md): long mode, CPL 0,
 * RDI = boot information block, RSI = MV_BOOT_MAGIC, RSP = 0x80000, interrupts off.
 * .bss is zeroed by the loader (p_memsz > p_filesz), so crt0 does not clear it.
 */
    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    cld
    movq    %rdi, %rbx              /* keep the boot info pointer in a callee-saved register */
    andq    $-16, %rsp
    call    mv_runtime_init         /* (bi): GDT, TSS, IDT, SYSCALL MSRs */
    movq    %rbx, %rdi
    call    main
    movl    %eax, %edi
    call    mv_exit
1:  cli
    hlt
    jmp     1b
    .size _start, . - _start

    .section .note.GNU-stack, "", @progbits
