/*
 * acpi: reads the machine's shape from the ACPI tables, as an OS does. Finds the RSDP in 0xe0000-0xfffff,
 * walks the XSDT and checks every table's signature, length and checksum; from the MADT counts the CPUs
 * and the IOAPIC and compares them with the MP table; starts the APs and checks each one that reports in
 * is a CPU the MADT lists ("all N cpus online"); finds the DSDT's \_S5 sleep type. Then, by "mode=":
 *   off    (default) writes SLP_TYP(S5) | SLP_EN to the FADT's PM1a control block: the VM powers off (status 0)
 *   reset  writes the FADT's reset value to its reset register (port 0xcf9): the VM reports a reset (status 4)
 *   kbd    pulses the reset line through the i8042 (0xfe to port 0x64): a reset too
 * If the VM is still running after the write, it says so and exits with code 1 (status 3).
 */
#include "mv.h"

static int checksum_ok(const uint8_t *p, uint32_t n) {
    uint8_t s = 0;
    for (uint32_t i = 0; i < n; i++) s += p[i];
    return s == 0;
}
static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32(const uint8_t *p) { return (uint32_t)le16(p) | (uint32_t)le16(p + 2) << 16; }
static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

static volatile uint32_t online;
static volatile uint8_t madt_cpu[MV_MAX_CPUS];   /* APIC IDs the MADT lists */
static volatile uint32_t strangers;

static void ap_entry(uint32_t apic_id, uint64_t arg) {
    (void)arg;
    if (!madt_cpu[mv_apic_id() & (MV_MAX_CPUS - 1)] || mv_apic_id() != apic_id)
        __asm__ volatile("lock incl %0" : "+m"(strangers) : : "memory");
    __asm__ volatile("lock incl %0" : "+m"(online) : : "memory");
}

/* A System Description Table at `a`, checked: signature `sig` (NULL: any), length and checksum. */
static const uint8_t *table(uint64_t a, const char *sig) {
    const uint8_t *t = (const uint8_t *)(uintptr_t)a;
    if (a == 0 || (sig && memcmp(t, sig, 4) != 0)) {
        mv_printf("acpi FAIL: no %s table at 0x%lx\n", sig ? sig : "", a);
        return NULL;
    }
    uint32_t len = le32(t + 4);
    if (len < 36 || len > 0x10000 || !checksum_ok(t, len)) {
        mv_printf("acpi FAIL: table %.4s at 0x%lx: length %u or checksum wrong\n", (const char *)t, a, len);
        return NULL;
    }
    return t;
}

int main(const struct mv_boot_info *bi) {
    const char *cmdline = (const char *)(uintptr_t)bi->cmdline_addr;
    size_t mlen = 0;
    const char *mode = mv_cmdline_value(cmdline, bi->cmdline_len, "mode", &mlen);

    const uint8_t *rsdp = NULL;
    for (uint64_t a = 0xe0000; a < 0x100000 && !rsdp; a += 16) {
        const uint8_t *p = (const uint8_t *)(uintptr_t)a;
        if (memcmp(p, "RSD PTR ", 8) == 0 && checksum_ok(p, 20)) rsdp = p;
    }
    if (!rsdp) { mv_puts("acpi FAIL: no RSDP in 0xe0000-0xfffff"); return 1; }
    if (rsdp[15] < 2 || le32(rsdp + 20) < 36 || !checksum_ok(rsdp, le32(rsdp + 20))) {
        mv_printf("acpi FAIL: RSDP revision %u or extended checksum wrong\n", rsdp[15]);
        return 1;
    }
    mv_printf("acpi: RSDP at 0x%lx revision %u\n", (uint64_t)(uintptr_t)rsdp, rsdp[15]);

    const uint8_t *xsdt = table(le64(rsdp + 24), "XSDT"), *fadt = NULL, *madt = NULL;
    if (!xsdt) return 1;
    for (uint32_t i = 0; i < (le32(xsdt + 4) - 36) / 8; i++) {
        const uint8_t *t = table(le64(xsdt + 36 + 8 * i), NULL);
        if (!t) return 1;
        mv_printf("acpi: table %.4s length %u\n", (const char *)t, le32(t + 4));
        if (memcmp(t, "FACP", 4) == 0) fadt = t;
        if (memcmp(t, "APIC", 4) == 0) madt = t;
    }
    if (!fadt || !madt) { mv_puts("acpi FAIL: the XSDT lacks the FADT or the MADT"); return 1; }
    uint32_t fadt_len = le32(fadt + 4);
    uint64_t dsdt_addr = fadt_len >= 148 && le64(fadt + 140) ? le64(fadt + 140) : le32(fadt + 40);
    uint64_t pm1a_cnt = fadt_len >= 184 && le64(fadt + 176) ? le64(fadt + 176) : le32(fadt + 64);
    const uint8_t *dsdt = table(dsdt_addr, "DSDT");
    if (!dsdt) return 1;

    /* \_S5: NameOp "_S5_" PackageOp PkgLength NumElements SLP_TYPa ... */
    int slp_typ = -1;
    for (uint32_t i = 36; i + 8 < le32(dsdt + 4) && slp_typ < 0; i++) {
        if (dsdt[i] != '_' || memcmp(dsdt + i, "_S5_", 4) != 0 || dsdt[i + 4] != 0x12) continue;
        const uint8_t *e = dsdt + i + 5 + 1 + (dsdt[i + 5] >> 6) + 1;
        slp_typ = e[0] == 0x0a ? e[1] : e[0] <= 1 ? e[0] : -1;
    }
    if (slp_typ < 0) { mv_puts("acpi FAIL: no \\_S5 package in the DSDT"); return 1; }
    mv_printf("acpi: S5 SLP_TYP %d, PM1a control block 0x%lx, SCI %u\n", slp_typ, pm1a_cnt, le16(fadt + 46));

    /* MADT: local APICs and the IOAPIC. */
    uint32_t cpus = 0, ioapic_id = 0xffff;
    uint64_t ioapic_addr = 0;
    for (uint32_t i = 44; i + 2 <= le32(madt + 4); i += madt[i + 1]) {
        const uint8_t *e = madt + i;
        if (e[1] < 2) { mv_puts("acpi FAIL: MADT entry of length < 2"); return 1; }
        if (e[0] == 0 && (le32(e + 4) & 1)) { madt_cpu[e[3]] = 1; cpus++; }
        if (e[0] == 1) { ioapic_id = e[2]; ioapic_addr = le32(e + 4); }
    }
    mv_printf("acpi: MADT lists %u cpus, IOAPIC %u at 0x%lx\n", cpus, ioapic_id, ioapic_addr);

    /* The MP table must describe the same CPUs and IOAPIC. */
    const uint8_t *fp = (const uint8_t *)(uintptr_t)bi->mp_table_addr;
    const uint8_t *mp = (const uint8_t *)(uintptr_t)le32(fp + 4);
    if (memcmp(fp, "_MP_", 4) != 0 || memcmp(mp, "PCMP", 4) != 0) { mv_puts("acpi FAIL: no MP table"); return 1; }
    uint32_t mp_cpus = 0, mismatches = 0;
    const uint8_t *e = mp + 44;
    for (uint32_t n = 0; n < le16(mp + 34); n++) {
        if (e[0] == 0) {
            if (e[3] & 1) { mp_cpus++; if (!madt_cpu[e[1]]) mismatches++; }
            e += 20;
        } else {
            if (e[0] == 2 && (e[1] != ioapic_id || le32(e + 4) != ioapic_addr)) mismatches++;
            e += 8;
        }
    }
    if (mp_cpus != cpus || mismatches || cpus != bi->cpu_count) {
        mv_printf("acpi FAIL: MADT %u cpus, MP table %u, boot info %u, %u differences\n", cpus, mp_cpus, bi->cpu_count, mismatches);
        return 1;
    }
    mv_puts("acpi: the MADT matches the MP table");

    /* Bring the CPUs the MADT lists online. */
    if (!madt_cpu[mv_apic_id()]) { mv_puts("acpi FAIL: the BSP is not in the MADT"); return 1; }
    online = 1;
    if (cpus > 1 && mv_start_aps(bi, ap_entry, 0) < 0) { mv_puts("acpi FAIL: an AP did not start"); return 1; }
    uint64_t deadline = mv_deadline(MV_TIMEOUT_TICKS);
    while (online < cpus && !mv_expired(deadline)) cpu_relax();
    if (online != cpus || strangers) {
        mv_printf("acpi FAIL: %u of %u cpus online, %u not in the MADT\n", online, cpus, strangers);
        return 1;
    }
    mv_printf("acpi: all %u cpus online\n", cpus);

    if (mode && mlen == 5 && memcmp(mode, "reset", 5) == 0) {
        uint32_t flags = le32(fadt + 112);
        const uint8_t *reg = fadt + 116;
        if (!(flags & (1u << 10)) || reg[0] != 1) { mv_puts("acpi FAIL: no I/O reset register in the FADT"); return 1; }
        mv_printf("acpi: writing 0x%x to reset register port 0x%lx\n", fadt[128], le64(reg + 4));
        outb((uint16_t)le64(reg + 4), fadt[128]);
    } else if (mode && mlen == 3 && memcmp(mode, "kbd", 3) == 0) {
        mv_puts("acpi: pulsing reset through the i8042");
        outb(0x64, 0xfe);
    } else {
        mv_puts("acpi ok: powering off through PM1a_CNT");
        outw((uint16_t)pm1a_cnt, (uint16_t)(slp_typ << 10 | 1 << 13));
    }
    for (int i = 0; i < 1000; i++) cpu_relax();
    mv_puts("acpi FAIL: still running after the write");
    return 1;
}
