/* emulate: instructions software-KVM hosts (kvm-pvm) cannot emulate in guest ring 0, which minivisor's
 * instruction emulator completes instead; each result is checked against what a CPU gives. int3 through
 * the guest's own #BP handler; ldmxcsr/stmxcsr (stack, register and RIP-relative operands); ldmxcsr
 * with a reserved bit -> the guest's #GP handler; popcnt (and its ZF); movbe load and store; lock
 * cmpxchg16b equal and unequal; fwait. On hardware hosts the same instructions run natively. Prints
 * one line per check and "emulate ok", or "emulate FAIL: ..." and exits 1. */
#include "mv.h"

static volatile uint64_t bp_count, gp_count;
uint32_t emulate_mxcsr_slot;   /* stored RIP-relative */
static uint64_t pair[2] __attribute__((aligned(16))) = { 1, 2 };
static int failures;

static volatile uint64_t ud_count, ud_skip;

static void bp_handler(struct mv_regs *r) { (void)r; bp_count++; }
/* Software-KVM hosts may answer movbe with #UD (KVM's own emulator, when its CPUID table lacks MOVBE):
 * record it and skip the instruction (ud_skip bytes, set before each). */
static void ud_handler(struct mv_regs *r) { ud_count++; r->rip += ud_skip; }
/* Only the ldmxcsr (%rax) below faults: skip its 3 bytes. */
static void gp_handler(struct mv_regs *r) { gp_count++; r->rip += 3; }

static void check(const char *what, uint64_t got, uint64_t want) {
    if (got == want) {
        mv_printf("%s: 0x%lx\n", what, got);
    } else {
        mv_printf("emulate FAIL: %s = 0x%lx, expected 0x%lx\n", what, got, want);
        failures++;
    }
}

static uint32_t stmxcsr_rip_relative(void) {
    __asm__ volatile("stmxcsr emulate_mxcsr_slot(%%rip)" : : : "memory");
    return emulate_mxcsr_slot;
}

int main(const struct mv_boot_info *bi) {
    (void)bi;
    mv_set_handler(3, bp_handler);
    mv_set_handler(13, gp_handler);
    mv_set_handler(6, ud_handler);

    check("mxcsr at entry (docs/boot-protocol.md)", stmxcsr_rip_relative(), 0x1f80);

    __asm__ volatile("int3" : : : "memory");
    check("int3 handler calls", bp_count, 1);

    uint32_t in = 0x7f80;   /* all exceptions masked, round toward zero */
    __asm__ volatile("ldmxcsr %0" : : "m"(in) : "memory");
    check("mxcsr after ldmxcsr", stmxcsr_rip_relative(), 0x7f80);
    uint32_t out = 0;
    __asm__ volatile("stmxcsr %0" : "=m"(out) : : "memory");
    check("stmxcsr to the stack", out, 0x7f80);

    uint32_t bad = 0x11f80;   /* bit 16 is reserved: #GP, MXCSR unchanged */
    __asm__ volatile("ldmxcsr (%0)" : : "a"(&bad) : "memory");
    check("#GP from ldmxcsr with a reserved bit", gp_count, 1);
    check("mxcsr after the refused ldmxcsr", stmxcsr_rip_relative(), 0x7f80);
    in = 0x1f80;
    __asm__ volatile("ldmxcsr %0" : : "m"(in) : "memory");

    uint64_t v = 0xf0f0000012345678ull, count;
    __asm__ volatile("popcnt %1, %0" : "=r"(count) : "r"(v) : "cc");
    check("popcnt", count, 21);
    uint8_t zf;
    uint64_t zero = 0;
    __asm__ volatile("popcnt %2, %0\n\tsetz %1" : "=r"(count), "=q"(zf) : "r"(zero) : "cc");
    check("popcnt of 0 sets ZF", zf, 1);

    uint64_t mem = 0x0102030405060708ull, loaded = 0;
    ud_skip = 5;
    __asm__ volatile("movbe (%1), %0" : "+a"(loaded) : "S"(&mem) : "memory");   /* 48 0f 38 f0 06 */
    uint32_t stored = 0;
    ud_skip = 4;
    __asm__ volatile("movbe %%eax, (%0)" : : "S"(&stored), "a"(0x11223344u) : "memory");   /* 0f 38 f1 06 */
    if (ud_count == 2) {
        mv_puts("movbe: #UD (this host's KVM refuses it before minivisor sees it)");
    } else {
        check("movbe load", loaded, 0x0807060504030201ull);
        check("movbe store", stored, 0x44332211u);
    }

    uint64_t lo = 1, hi = 2;
    uint8_t ok;
    __asm__ volatile("lock cmpxchg16b %1\n\tsetz %0" : "=q"(ok), "+m"(pair), "+a"(lo), "+d"(hi) : "b"(0x33ull), "c"(0x44ull) : "memory", "cc");
    check("cmpxchg16b equal: ZF", ok, 1);
    check("cmpxchg16b equal: stored low", pair[0], 0x33);
    check("cmpxchg16b equal: stored high", pair[1], 0x44);
    lo = 1; hi = 2;
    __asm__ volatile("lock cmpxchg16b %1\n\tsetz %0" : "=q"(ok), "+m"(pair), "+a"(lo), "+d"(hi) : "b"(0x55ull), "c"(0x66ull) : "memory", "cc");
    check("cmpxchg16b unequal: ZF", ok, 0);
    check("cmpxchg16b unequal: loaded rax", lo, 0x33);
    check("cmpxchg16b unequal: loaded rdx", hi, 0x44);
    check("cmpxchg16b unequal: memory kept", pair[0], 0x33);

    __asm__ volatile("fwait" : : : "memory");
    mv_puts("fwait passed");

    if (failures) return 1;
    mv_puts("emulate ok");
    return 0;
}
