/* hello: the smallest guest. Prints a fixed line and the command line, exits 0 (power off). */
#include "mv.h"

int main(const struct mv_boot_info *bi) {
    mv_puts("hello from minivisor guest");
    mv_printf("cmdline: %.*s\n", (int)bi->cmdline_len, (const char *)(uintptr_t)bi->cmdline_addr);
    return 0;
}
