/*
 * unclaimed: accesses nobody claims must not be fatal. Unclaimed ports and MMIO in the 32-bit hole read
 * as all ones and ignore writes; PCI config reads of an absent function return all ones; the host bridge
 * at 00:00.0 is present.
 */
#include "mv.h"

#define PORT 0x1234
#define HOLE 0xd0000000ul

static int failures;

static void expect(int ok, const char *what, uint64_t got, uint64_t want) {
    if (!ok) {
        mv_printf("unclaimed FAIL: %s: read 0x%lx, expected 0x%lx\n", what, got, want);
        failures++;
    }
}

static uint32_t pci_read32(unsigned bus, unsigned dev, unsigned fn, unsigned reg) {
    outl(0xcf8, 0x80000000u | bus << 16 | dev << 11 | fn << 8 | (reg & 0xfc));
    return inl(0xcfc);
}

static uint16_t pci_read16(unsigned bus, unsigned dev, unsigned fn, unsigned reg) {
    outl(0xcf8, 0x80000000u | bus << 16 | dev << 11 | fn << 8 | (reg & 0xfc));
    return inw((uint16_t)(0xcfc + (reg & 2)));
}

static void check_port(uint16_t port) {
    uint8_t b = inb(port);
    uint16_t w = inw(port);
    uint32_t l = inl(port);
    mv_printf("port 0x%04x: inb=0x%02x inw=0x%04x inl=0x%08x\n", port, b, w, l);
    expect(b == 0xff, "inb of an unclaimed port", b, 0xff);
    expect(w == 0xffff, "inw of an unclaimed port", w, 0xffff);
    expect(l == 0xffffffffu, "inl of an unclaimed port", l, 0xffffffffu);
}

static void check_mmio(uintptr_t a, const char *what) {
    uint8_t b = mmio_read8(a);
    uint16_t w = mmio_read16(a + 2);
    uint32_t l = mmio_read32(a + 4);
    uint64_t q = mmio_read64(a + 8);
    mv_printf("%s 0x%lx: read8=0x%02x read16=0x%04x read32=0x%08x read64=0x%016lx\n", what, (uint64_t)a, b, w,
              l, q);
    expect(b == 0xff, "8-bit MMIO read", b, 0xff);
    expect(w == 0xffff, "16-bit MMIO read", w, 0xffff);
    expect(l == 0xffffffffu, "32-bit MMIO read", l, 0xffffffffu);
    expect(q == ~0ull, "64-bit MMIO read", q, ~0ull);
}

int main(const struct mv_boot_info *bi) {
    check_port(PORT);
    outb(PORT, 0x12);
    outw(PORT, 0x3456);
    outl(PORT, 0x789abcde);
    outb(0x7ff0, 0x55);
    mv_puts("wrote 8/16/32 bits to unclaimed ports 0x1234 and 0x7ff0");
    check_port(PORT);

    check_mmio(HOLE, "MMIO hole");
    mmio_write8(HOLE, 0x12);
    mmio_write16(HOLE + 2, 0x3456);
    mmio_write32(HOLE + 4, 0x789abcde);
    mmio_write64(HOLE + 8, 0x0123456789abcdefull);
    mv_puts("wrote 8/16/32/64 bits into the MMIO hole");
    check_mmio(HOLE, "MMIO hole");

    /* Past the end of RAM (when RAM ends below the hole with room to spare). */
    uint64_t past = ((bi->ram_bytes + 0x1fffff) & ~0x1fffffull) + 0x1000;
    if (bi->ram_bytes <= MV_MMIO_HOLE_START && past + 16 <= MV_MMIO_HOLE_START) {
        check_mmio((uintptr_t)past, "past end of RAM");
        mmio_write32((uintptr_t)past, 0x12345678);
        check_mmio((uintptr_t)past, "past end of RAM");
    }

    uint32_t absent = pci_read32(0, 0x1f, 0, 0);
    uint16_t absent_vendor = pci_read16(0, 0x1f, 0, 0);
    mv_printf("pci 00:1f.0: id dword 0x%08x vendor 0x%04x\n", absent, absent_vendor);
    expect(absent_vendor == 0xffff, "vendor ID of absent PCI device 00:1f.0", absent_vendor, 0xffff);
    expect(absent == 0xffffffffu, "ID dword of absent PCI device 00:1f.0", absent, 0xffffffffu);

    uint32_t id = pci_read32(0, 0, 0, 0);
    uint16_t vendor = pci_read16(0, 0, 0, 0), device = pci_read16(0, 0, 0, 2);
    uint32_t class_rev = pci_read32(0, 0, 0, 8);
    mv_printf("pci 00:00.0: vendor 0x%04x device 0x%04x class %02x:%02x rev %02x\n", vendor, device,
              class_rev >> 24, (class_rev >> 16) & 0xff, class_rev & 0xff);
    if (vendor == 0xffff) {
        mv_puts("unclaimed FAIL: host bridge 00:00.0 is missing (vendor ID 0xffff)");
        failures++;
    }
    expect(id == ((uint32_t)device << 16 | vendor), "16-bit and 32-bit config reads disagree", id,
           (uint32_t)device << 16 | vendor);
    expect((class_rev >> 16) == 0x0600, "host bridge class code (06:00)", class_rev >> 16, 0x0600);

    /* The address register reads back what was written. */
    outl(0xcf8, 0x80000000u);
    uint32_t addr = inl(0xcf8);
    expect(addr == 0x80000000u, "PCI address register 0xcf8 read-back", addr, 0x80000000u);

    if (failures) {
        mv_printf("unclaimed FAIL: %d check(s) failed\n", failures);
        return 1;
    }
    mv_puts("unclaimed ok");
    return 0;
}
