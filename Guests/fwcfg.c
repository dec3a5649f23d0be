/*
 * fwcfg: reads QEMU's firmware configuration interface (selector port 0x510, data port 0x511) as
 * firmware written for QEMU does, and prints what it found: the signature, the interface ID, the CPU
 * count, the maximum CPU count, the RAM size, every file of the directory, and the entries of etc/e820.
 * Checks the signature and that the CPU count matches the boot information; ends with "fw_cfg ok".
 */
#include "mv.h"

#define FW_CFG_SELECTOR 0x510
#define FW_CFG_DATA     0x511

static void fw_select(uint16_t key) { outw(FW_CFG_SELECTOR, key); }
static void fw_read(void *buf, uint32_t n) {
    uint8_t *p = buf;
    for (uint32_t i = 0; i < n; i++) p[i] = inb(FW_CFG_DATA);
}
static uint64_t fw_le(uint16_t key, uint32_t n) {
    uint8_t b[8] = {0};
    fw_select(key);
    fw_read(b, n);
    uint64_t v = 0;
    for (uint32_t i = 0; i < n; i++) v |= (uint64_t)b[i] << (8 * i);
    return v;
}
static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

int main(const struct mv_boot_info *bi) {
    char sig[5] = {0};
    fw_select(0x00);
    fw_read(sig, 4);
    if (memcmp(sig, "QEMU", 4) != 0) {
        mv_printf("fw_cfg FAIL: signature %02x %02x %02x %02x\n", (uint8_t)sig[0], (uint8_t)sig[1], (uint8_t)sig[2], (uint8_t)sig[3]);
        return 1;
    }
    uint64_t id = fw_le(0x01, 4), cpus = fw_le(0x05, 2), max_cpus = fw_le(0x0f, 2), ram = fw_le(0x03, 8);
    mv_printf("fw_cfg: signature %s id 0x%lx cpus %lu max_cpus %lu ram 0x%lx\n", sig, id, cpus, max_cpus, ram);

    uint8_t count_be[4];
    fw_select(0x19);
    fw_read(count_be, 4);
    uint32_t files = be32(count_be);
    uint16_t e820_key = 0;
    uint32_t e820_size = 0;
    for (uint32_t i = 0; i < files && i < 64; i++) {
        uint8_t entry[64];
        fw_read(entry, 64);   /* the directory is one item: entries follow the count */
        entry[63] = 0;
        uint16_t key = (uint16_t)(entry[4] << 8 | entry[5]);
        mv_printf("fw_cfg: file %s size %u select 0x%x\n", (const char *)entry + 8, be32(entry), key);
        if (strcmp((const char *)entry + 8, "etc/e820") == 0) { e820_key = key; e820_size = be32(entry); }
    }
    if (e820_key == 0 || e820_size % 20 != 0) { mv_puts("fw_cfg FAIL: no etc/e820 file of 20-byte entries"); return 1; }
    fw_select(e820_key);
    for (uint32_t i = 0; i < e820_size / 20; i++) {
        uint8_t e[20];
        fw_read(e, 20);
        uint64_t base = 0, len = 0;
        for (int b = 0; b < 8; b++) { base |= (uint64_t)e[b] << (8 * b); len |= (uint64_t)e[8 + b] << (8 * b); }
        mv_printf("fw_cfg: e820 0x%lx 0x%lx %u\n", base, len, (uint32_t)(e[16] | e[17] << 8));
    }
    if (cpus != bi->cpu_count || ram != bi->ram_bytes) {
        mv_printf("fw_cfg FAIL: cpus %lu ram 0x%lx, the boot information says %u and 0x%lx\n", cpus, ram, bi->cpu_count, bi->ram_bytes);
        return 1;
    }
    mv_puts("fw_cfg ok");
    return 0;
}
