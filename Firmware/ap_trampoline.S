/*
 * AP trampoline: copied by minivisor to guest-physical 0x8000 (SIPI vector 0x08).
 * A secondary CPU started by INIT/SIPI arrives here in real mode with CS = 0x0800, IP = 0.
 * It switches straight to 64-bit long mode on the BSP's identity map (CR3 = 0x9000), loads its own
 * GDT (0x08 = 64-bit code, 0x10 = data), takes entry/stack/arg from the mailbox at 0x6000, increments
 * mailbox.started and calls entry(apic_id, arg). If entry returns the CPU halts with interrupts off.
 * Lives in .rodata: minivisor copies the bytes; nothing in the host executes them.
 * Keep in step with docs/boot-protocol.md and Sources/Machine/Boot/Layout.swift.
 */
#define AP_BASE      0x8000
#define MAILBOX      0x6000
#define PML4         0x9000
#define ABS(x)       (AP_BASE + (x) - mv_fw_ap_trampoline_start)

    .section .rodata.mv_firmware, "a"
    .globl mv_fw_ap_trampoline_start
    .globl mv_fw_ap_trampoline_end
    .balign 16
mv_fw_ap_trampoline_start:
    .code16
    cli
    cld
    xorw    %ax, %ax
    movw    %ax, %ds
    lgdtl   ABS(ap_gdt_ptr)
    movl    $0x620, %eax            /* CR4: PAE | OSFXSR | OSXMMEXCPT */
    movl    %eax, %cr4
    movl    $PML4, %eax
    movl    %eax, %cr3
    movl    $0xC0000080, %ecx       /* EFER.LME */
    rdmsr
    orl     $0x100, %eax
    wrmsr
    movl    $0x80050033, %eax       /* CR0: PG | AM | WP | NE | ET | MP | PE */
    movl    %eax, %cr0
    ljmpl   $0x08, $ABS(ap_long)

    .code64
ap_long:
    movl    $0x10, %eax
    movl    %eax, %ds
    movl    %eax, %es
    movl    %eax, %ss
    movl    %eax, %fs
    movl    %eax, %gs
    movl    $1, %eax
    cpuid
    shrl    $24, %ebx
    movl    %ebx, %edi              /* first argument: APIC ID */
    movl    $MAILBOX, %ebx
    movq    8(%rbx), %rsp           /* stack_top */
    movq    16(%rbx), %rsi          /* arg */
    movq    0(%rbx), %rax           /* entry */
    lock incl 24(%rbx)              /* started++: the mailbox may be reused from here on */
    andq    $-16, %rsp
    callq   *%rax
1:  cli
    hlt
    jmp     1b

    .balign 8
ap_gdt:
    .quad   0
    .quad   0x00af9a000000ffff      /* 0x08: 64-bit code */
    .quad   0x00cf92000000ffff      /* 0x10: flat data */
ap_gdt_end:
ap_gdt_ptr:
    .word   ap_gdt_end - ap_gdt - 1
    .long   ABS(ap_gdt)
mv_fw_ap_trampoline_end:
