/* exitcode: writes N from "code=N" on the command line (default 7) to the debug-exit port, so the VM
 * ends with status (N << 1) | 1. N = 0 also goes to the debug-exit port (status 1), not to power-off. */
#include "mv.h"

int main(const struct mv_boot_info *bi) {
    const char *cmdline = (const char *)(uintptr_t)bi->cmdline_addr;
    uint32_t code = 7;
    size_t len;
    const char *v = mv_cmdline_value(cmdline, bi->cmdline_len, "code", &len);
    if (v) {
        int ok;
        uint64_t n = mv_parse_u64(v, len, &ok);
        if (!ok || n > 0xffffffffu) {
            mv_printf("exitcode: bad code=%.*s\n", (int)len, v);
            return 1;
        }
        code = (uint32_t)n;
    }
    mv_printf("exitcode: writing %u to port 0xf4 (expect VM status %llu)\n", code,
              ((unsigned long long)code << 1) | 1);
    outl(MV_DEBUG_EXIT_PORT, code);
    mv_puts("exitcode FAIL: still running after the debug-exit write");
    mv_halt_forever();
}
