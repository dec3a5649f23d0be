/* mv_exit: power-off port for 0, debug-exit port otherwise. Builds for -m64 and -m32. */
#include "common.h"

void mv_halt_forever(void) {
    for (;;) {
        if (cpl() == 0)
            __asm__ volatile("cli; hlt" ::: "memory");
        else
            cpu_relax();   /* ring 3 may not halt; spin politely */
    }
}

void mv_exit(int code) {
    if (code == 0)
        outw(MV_POWER_OFF_PORT, MV_POWER_OFF_VALUE);
    else
        outl(MV_DEBUG_EXIT_PORT, (uint32_t)code);
    mv_halt_forever();
}
