/* echo: reads COM1 input (polling LSR.DR) and answers each byte B with "rx 0xBB" on a line of its own,
 * so a test can tell the guest's echo from a terminal's. 'q' ends the VM with power-off (status 0). */
#include "mv.h"

int main(const struct mv_boot_info *bi) {
    (void)bi;
    mv_puts("echo ready");
    for (;;) {
        if (!(inb(MV_COM1 + 5) & 1)) { cpu_relax(); continue; }
        uint8_t b = inb(MV_COM1);
        mv_printf("rx 0x%02x\n", b);
        if (b == 'q') { mv_puts("echo bye"); return 0; }
    }
}
