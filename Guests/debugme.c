/* debugme: the gdb stub's test guest (built with -g). main calls compute(6), which multiplies the
 * global `secret` (7) by its argument; the guest prints what it computed and writes the result to the
 * debug-exit port. Untouched it exits with 42 (status 85); a debugger that stops in compute and sets
 * secret = 5 makes it exit with 30 (status 61). `progress` marks the steps inside compute; `rounds` is
 * written three times (1, 2, 3) before compute runs, and one 4-byte store straddles the page boundary in
 * the middle of `straddle`, for write watchpoints. */
#include "mv.h"

volatile int secret = 7;
volatile int progress;
volatile int rounds;
volatile unsigned char straddle[8192] __attribute__((aligned(4096)));

__attribute__((noinline)) int compute(int x) {
    progress = 1;
    int y = secret * x;
    progress = 2;
    return y;
}

int main(const struct mv_boot_info *bi) {
    (void)bi;
    mv_puts("debugme: start");
    for (int i = 1; i <= 3; i++) rounds = i;
    *(volatile unsigned int *)(straddle + 4094) = 0x11223344;
    int r = compute(6);
    mv_printf("debugme: secret=%d result=%d progress=%d\n", secret, r, progress);
    return r;
}
