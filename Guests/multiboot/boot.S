/*
 * Multiboot v1 header and 32-bit entry for the multiboot test kernel.
 * Default: flags 0x3 (page-aligned modules, memory info), loaded as an ELF32 executable.
 * -DMB_AOUT: flags 0x10003 with the a.out-kludge address fields, so the loader must take
 * load_addr/load_end_addr/bss_end_addr/entry_addr from this header.
 */
#define MB_HEADER_MAGIC 0x1BADB002
#ifdef MB_AOUT
#define MB_FLAGS 0x00010003
#else
#define MB_FLAGS 0x00000003
#endif

#ifdef MB_PLAIN
    /* Linked with plain `ld -Ttext=0x100000` (no linker script): the header is the first thing in .text,
       at file offset 0x1000, inside the first 8 KiB. */
    .text
#else
    .section .multiboot, "a"
#endif
    .balign 4
    .globl mb_header
mb_header:
    .long   MB_HEADER_MAGIC
    .long   MB_FLAGS
    .long   -(MB_HEADER_MAGIC + MB_FLAGS)
#ifdef MB_AOUT
    .long   mb_header               /* header_addr */
    .long   __load_start            /* load_addr */
    .long   __load_end              /* load_end_addr: end of .data */
    .long   __bss_end               /* bss_end_addr */
    .long   _start                  /* entry_addr */
#endif

    .section .rodata
    .globl mb_variant
mb_variant:
#if defined(MB_AOUT)
    .asciz  "a.out-kludge"
#elif defined(MB_PLAIN)
    .asciz  "plain ld"
#else
    .asciz  "ELF"
#endif

    .text
    .globl _start
    .type _start, @function
_start:
    cli
    cld
    movl    $mb_stack_top, %esp
    subl    $8, %esp                /* keep the stack 16-byte aligned at the call */
    pushl   %ebx                    /* multiboot_info * */
    pushl   %eax                    /* magic */
    call    mb_main
    movl    %eax, (%esp)
    call    mv_exit
1:  cli
    hlt
    jmp     1b
    .size _start, . - _start

    .bss
    .balign 16
mb_stack:
    .skip   16384
mb_stack_top:

    .section .note.GNU-stack, "", @progbits
