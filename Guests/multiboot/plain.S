/*
 * Entry of the multiboot-plain kernel: linked with nothing but `ld -m elf_i386 -Ttext=0x100000` (no
 * linker script). The multiboot header is the first thing in .text, so it sits at file offset 0x1000,
 * inside the first 8 KiB; ld puts the ELF and program headers in a read-only PT_LOAD segment of their own
 * just below 1 MiB (0xff000), which QEMU's and GRUB's multiboot loaders load like any other segment.
 */
#define MB_HEADER_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003

    .text
    .balign 4
    .globl mb_plain_header
mb_plain_header:
    .long   MB_HEADER_MAGIC
    .long   MB_FLAGS
    .long   -(MB_HEADER_MAGIC + MB_FLAGS)

    .globl _start
    .type _start, @function
_start:
    cli
    cld
    movl    $mbp_stack_top, %esp
    subl    $8, %esp
    pushl   %ebx                    /* multiboot_info * */
    pushl   %eax                    /* magic */
    call    mbp_main
    movl    %eax, (%esp)
    call    mv_exit
1:  cli
    hlt
    jmp     1b
    .size _start, . - _start

    .bss
    .balign 16
mbp_stack:
    .skip   8192
mbp_stack_top:

    .section .note.GNU-stack, "", @progbits
