/*
 * The built-in demo guest that `minivisor run` boots when no image is given. It uses the ELF64 boot
 * protocol (docs/boot-protocol.md): loaded at 1 MiB, entered in long mode with RDI = boot information.
 * Prints a banner, the number of CPUs, the RAM size and the command line on COM1, then powers off.
 * Position-independent (RIP-relative only), kept in .rodata and copied into the guest by minivisor.
 */
#define COM1 0x3f8

    .section .rodata.mv_firmware, "a"
    .globl mv_fw_demo_guest_start
    .globl mv_fw_demo_guest_end
    .balign 16
mv_fw_demo_guest_start:
    .code64
    movq    %rdi, %r12                  /* boot info */
    leaq    banner(%rip), %rsi
    call    puts
    leaq    cpus_msg(%rip), %rsi
    call    puts
    movl    12(%r12), %eax              /* cpu_count */
    call    putdec
    leaq    ram_msg(%rip), %rsi
    call    puts
    movq    40(%r12), %rax              /* ram_bytes */
    shrq    $20, %rax
    call    putdec
    leaq    mib_msg(%rip), %rsi
    call    puts
    leaq    cmd_msg(%rip), %rsi
    call    puts
    movq    16(%r12), %rsi              /* cmdline_addr */
    call    puts
    leaq    bye_msg(%rip), %rsi
    call    puts
    movw    $0x604, %dx                 /* power off: SLP_EN */
    movw    $0x2000, %ax
    outw    %ax, %dx
1:  cli
    hlt
    jmp     1b

/* puts: print NUL-terminated string at %rsi ("\n" becomes "\r\n") */
puts:
    movb    (%rsi), %al
    testb   %al, %al
    jz      2f
    cmpb    $10, %al
    jne     3f
    movb    $13, %al
    call    putc
    movb    $10, %al
3:  call    putc
    incq    %rsi
    jmp     puts
2:  ret

/* putc: wait for THR empty, write %al */
putc:
    movb    %al, %cl
    movw    $COM1 + 5, %dx
4:  inb     %dx, %al
    testb   $0x20, %al
    jz      4b
    movw    $COM1, %dx
    movb    %cl, %al
    outb    %al, %dx
    ret

/* putdec: print %rax in decimal */
putdec:
    subq    $32, %rsp
    leaq    31(%rsp), %rdi
    movb    $0, (%rdi)
    movq    $10, %r8
5:  xorl    %edx, %edx
    divq    %r8
    addb    $'0', %dl
    decq    %rdi
    movb    %dl, (%rdi)
    testq   %rax, %rax
    jnz     5b
    movq    %rdi, %rsi
    call    puts
    addq    $32, %rsp
    ret

banner:  .asciz "minivisor: built-in demo guest running in 64-bit long mode\n"
cpus_msg: .asciz "cpus: "
ram_msg: .asciz ", memory: "
mib_msg: .asciz " MiB\n"
cmd_msg: .asciz "cmdline: "
bye_msg: .asciz "\npowering off\n"
mv_fw_demo_guest_end:
