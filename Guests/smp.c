/*
 * smp: starts every AP through the mailbox protocol. Each CPU prints "cpu N online" (N = APIC ID) and
 * increments a shared counter with a locked instruction; the BSP waits (bounded) until all cpu_count CPUs
 * have reported and prints "all N cpus online".
 */
#include "mv.h"

static volatile uint32_t online;            /* CPUs that reported, BSP included */
static volatile uint8_t seen[MV_MAX_CPUS];  /* reports per APIC ID */
static volatile uint32_t bad_reports;

static void report(uint32_t apic_id) {
    mv_printf("cpu %u online\n", apic_id);
    __asm__ volatile("lock incb %0" : "+m"(seen[apic_id & (MV_MAX_CPUS - 1)]) : : "memory");
    __asm__ volatile("lock incl %0" : "+m"(online) : : "memory");
}

static void ap_entry(uint32_t apic_id, uint64_t arg) {
    uint32_t lapic = mv_apic_id();
    if (arg != 0x5eed || lapic != apic_id) {
        mv_printf("smp FAIL: AP got apic_id=%u arg=0x%lx, its LAPIC says %u\n", apic_id, arg, lapic);
        __asm__ volatile("lock incl %0" : "+m"(bad_reports) : : "memory");
    }
    report(apic_id);
}

int main(const struct mv_boot_info *bi) {
    uint32_t n = bi->cpu_count;
    if (n == 0 || n > MV_MAX_CPUS) {
        mv_printf("smp FAIL: cpu_count %u outside 1..%u\n", n, MV_MAX_CPUS);
        return 1;
    }
    mv_printf("smp: %u cpus, mailbox at 0x%lx, SIPI vector 0x%x\n", n, bi->ap_mailbox_addr, bi->ap_sipi_vector);
    report(mv_apic_id());
    int started = mv_start_aps(bi, ap_entry, 0x5eed);
    if (started < 0) {
        mv_printf("smp FAIL: AP %d did not take the mailbox (started did not change)\n", -started);
        return 1;
    }
    uint64_t deadline = mv_deadline(MV_TIMEOUT_TICKS);
    while (online < n) {
        if (mv_expired(deadline)) {
            mv_printf("smp FAIL: only %u of %u cpus reported; missing:", online, n);
            for (uint32_t c = 0; c < n; c++)
                if (!seen[c]) mv_printf(" %u", c);
            mv_puts("");
            return 1;
        }
        cpu_relax();
    }
    int bad = bad_reports != 0;
    for (uint32_t c = 0; c < MV_MAX_CPUS; c++) {
        if (seen[c] != (c < n)) {
            mv_printf("smp FAIL: APIC ID %u reported %u times\n", c, seen[c]);
            bad = 1;
        }
    }
    if (bad)
        return 1;
    mv_printf("all %u cpus online\n", n);
    return 0;
}
