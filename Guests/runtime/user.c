/* mv_run_user: run a function at CPL 3 (see isr.S for the ring switch). */
#include "mv.h"

extern uint64_t mv_user_saved_rsp[MV_MAX_CPUS];
void *mv_tss_rsp0(unsigned apic_id);
uint64_t mv_enter_user(uint64_t (*fn)(uint64_t), uint64_t arg, uint64_t *saved_rsp_slot, void *tss_rsp0);

uint64_t mv_run_user(uint64_t (*fn)(uint64_t), uint64_t arg) {
    unsigned i = mv_apic_id() & (MV_MAX_CPUS - 1);
    return mv_enter_user(fn, arg, &mv_user_saved_rsp[i], mv_tss_rsp0(i));
}
