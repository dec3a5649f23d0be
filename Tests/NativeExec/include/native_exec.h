/*
 * Test only: runs x86-64 instruction bytes natively on the host CPU (in ring 3, in a forked child) from
 * a given register, flag, MXCSR and x87 state, and reports the state after it, or the exception it
 * raised (vector, error code, CR2 and the registers at that point). The instruction emulator's tests
 * compare the emulator with this.
 */
#ifndef NATIVE_EXEC_H
#define NATIVE_EXEC_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t gpr[16];       /* rax rcx rdx rbx rsp rbp rsi rdi r8..r15 (rsp: output only) */
    uint64_t rip;           /* output only */
    uint64_t rflags;
    uint32_t mxcsr;
    uint32_t pad;
    uint8_t fenv[28];       /* x87 environment (fldenv's 28-byte layout), loaded before the code runs */
    uint8_t pad2[4];
} native_state;

typedef struct {
    int32_t vector;         /* -1: the code ran to its end; else the exception vector (the kernel's trapno) */
    int32_t signal;
    uint64_t error_code;
    uint64_t cr2;
    native_state state;     /* after the code, or at the exception */
} native_result;

/* An RWX MAP_SHARED anonymous region of `pages` 4 KiB pages (a forked child's writes reach the parent);
 * NULL on failure. */
void *native_region_create(size_t pages);
void native_region_destroy(void *region, size_t pages);

/* Copies `code` to the start of `region` (followed by a jump back) and runs it in a forked child from
 * `in`. Returns 0 with `out` filled, or -1 when the child could not run or died unexpectedly. */
int native_run(void *region, const uint8_t *code, size_t length, const native_state *in, native_result *out);

#endif
