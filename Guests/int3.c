/* int3: three int3 breakpoints in ring 0, counted by the guest's own #BP handler. Each must resume at
 * the instruction after the int3 (RIP in the trap frame = address after the 1-byte int3). */
#include "mv.h"

static volatile uint64_t bp_count, bp_rip, bp_cs;

static void bp_handler(struct mv_regs *r) {
    bp_count++;
    bp_rip = r->rip;
    bp_cs = r->cs;
}

int main(const struct mv_boot_info *bi) {
    (void)bi;
    mv_set_handler(3, bp_handler);
    for (uint64_t i = 1; i <= 3; i++) {
        uint64_t after;
        __asm__ volatile("int3\n1:\n\tleaq 1b(%%rip), %0" : "=r"(after) : : "memory");
        if (bp_count != i) {
            mv_printf("int3 FAIL: after breakpoint %lu the handler count is %lu\n", i, bp_count);
            return 1;
        }
        if (bp_rip != after) {
            mv_printf("int3 FAIL: breakpoint %lu trapped with rip=0x%lx, expected 0x%lx\n", i, bp_rip, after);
            return 1;
        }
        if ((bp_cs & 3) != 0) {
            mv_printf("int3 FAIL: breakpoint %lu trapped with cs=0x%lx (not ring 0)\n", i, bp_cs);
            return 1;
        }
        mv_printf("breakpoint %lu handled, resumed at 0x%lx\n", i, after);
    }
    mv_puts("int3 ok");
    return 0;
}
