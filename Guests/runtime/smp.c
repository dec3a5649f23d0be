/* Starting APs through the firmware trampoline and the mailbox of docs/boot-protocol.md. */
#include "mv.h"

#define AP_STACK_SIZE 32768                /* from mv_alloc; mv_run_user's ring-3 stack lives here too */
static mv_ap_entry_t volatile ap_entry;

#define LAPIC_ICR_LO (MV_LAPIC_BASE + 0x300)
#define LAPIC_ICR_HI (MV_LAPIC_BASE + 0x310)
#define ICR_INIT     0x00004500u   /* INIT, level assert */
#define ICR_SIPI     0x00004600u   /* Start-up, level assert | vector */
#define ICR_PENDING  (1u << 12)

static void ap_main(uint32_t apic_id, uint64_t arg) {
    mv_cpu_init(apic_id);
    ap_entry(apic_id, arg);
}

static void send_ipi(uint32_t apic_id, uint32_t icr) {
    mmio_write32(LAPIC_ICR_HI, apic_id << 24);
    mmio_write32(LAPIC_ICR_LO, icr);
    for (unsigned i = 0; i < 1000 && (mmio_read32(LAPIC_ICR_LO) & ICR_PENDING); i++)
        cpu_relax();
}

int mv_start_aps(const struct mv_boot_info *bi, mv_ap_entry_t entry, uint64_t arg) {
    volatile struct mv_ap_mailbox *mb = (volatile struct mv_ap_mailbox *)(uintptr_t)bi->ap_mailbox_addr;
    uint32_t n = bi->cpu_count;
    if (n > MV_MAX_CPUS) {
        mv_printf("mv_start_aps: %u CPUs, the runtime supports %u; starting %u\n", n, MV_MAX_CPUS, MV_MAX_CPUS);
        n = MV_MAX_CPUS;
    }
    ap_entry = entry;
    for (uint32_t cpu = 1; cpu < n; cpu++) {
        uint8_t *stack = mv_alloc(AP_STACK_SIZE, 4096);
        if (!stack) {
            mv_printf("mv_start_aps: no memory for the stack of AP %u\n", cpu);
            return -(int)cpu;
        }
        mb->entry = (uint64_t)(uintptr_t)ap_main;
        mb->stack_top = (uint64_t)(uintptr_t)(stack + AP_STACK_SIZE);
        mb->arg = arg;
        uint32_t before = mb->started;
        __asm__ volatile("mfence" ::: "memory");
        send_ipi(cpu, ICR_INIT);
        send_ipi(cpu, ICR_SIPI | (bi->ap_sipi_vector & 0xff));
        uint64_t deadline = mv_deadline(MV_TIMEOUT_TICKS);
        while (mb->started == before) {
            if (mv_expired(deadline))
                return -(int)cpu;
            cpu_relax();
        }
    }
    return (int)n - 1;
}
