/*
 * memmap: validates the boot information block and the memory map against docs/boot-protocol.md and
 * pattern-tests one 64-bit word per 2 MiB (plus the last word) of every usable region, outside the
 * guest's own image. Prints "memmap ok" and exits 0, or names the failed check and exits 1.
 */
#include "mv.h"

#define MIB (1ull << 20)
#define STEP (2 * MIB)

static uint64_t bss_probe[32];            /* must be zero: the loader zeroes p_memsz - p_filesz */
static uint64_t data_probe = 0x0123456789abcdefull;

static int check(int ok, const char *what) {
    if (!ok)
        mv_printf("memmap FAIL: %s\n", what);
    return ok;
}

static uint64_t pattern(uint64_t addr) { return (addr * 0x9e3779b97f4a7c15ull) ^ 0xa5a5a5a55a5a5a5aull; }

static int in_image(uint64_t a) {
    return a + 8 > (uint64_t)(uintptr_t)__image_start && a < (uint64_t)(uintptr_t)__image_end;
}

/* Visits the probe addresses of one region: every 2 MiB boundary inside it, and its last word. */
static uint64_t probe_region(uint64_t base, uint64_t end, int write, uint64_t *bad_addr) {
    uint64_t n = 0;
    uint64_t a = (base + STEP - 1) & ~(STEP - 1);
    for (;; a += STEP) {
        uint64_t p = a;
        if (a + 8 > end) {
            if (end - base < 8) break;
            p = (end - 8) & ~7ull;            /* the region's last word, once */
        }
        if (!in_image(p)) {
            volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)p;
            if (write) {
                *w = pattern(p);
            } else if (*w != pattern(p)) {
                *bad_addr = p;
                return ~0ull;
            }
            n++;
        }
        if (p != a) break;
    }
    return n;
}

int main(const struct mv_boot_info *bi) {
    int ok = 1;
    ok &= check(bi == (const struct mv_boot_info *)MV_BOOT_INFO_ADDR, "RDI is not 0x1000");
    ok &= check(bi->magic == MV_BOOT_MAGIC, "magic is not MVBI (0x4942564d)");
    ok &= check(bi->version == MV_BOOT_VERSION, "version is not 1");
    ok &= check(bi->size >= sizeof(struct mv_boot_info), "size is below sizeof(struct mv_boot_info) (72)");
    ok &= check(bi->cpu_count >= 1, "cpu_count is 0");
    if (!ok) return 1;
    mv_printf("boot info: version %u size %u cpus %u ram 0x%lx (%lu MiB) mmap %u entries at 0x%lx\n",
              bi->version, bi->size, bi->cpu_count, bi->ram_bytes, bi->ram_bytes >> 20, bi->mmap_count,
              bi->mmap_addr);
    ok &= check(bi->cmdline_addr == MV_CMDLINE_ADDR, "cmdline_addr is not 0x2000");
    ok &= check(bi->cmdline_len < 4096, "cmdline_len is 4096 or more");
    if (ok)
        ok &= check(((const char *)(uintptr_t)bi->cmdline_addr)[bi->cmdline_len] == 0 &&
                    strlen((const char *)(uintptr_t)bi->cmdline_addr) == bi->cmdline_len,
                    "command line is not NUL-terminated at cmdline_len");
    ok &= check(bi->mmap_addr == MV_MMAP_ADDR, "mmap_addr is not 0x4000");
    ok &= check(bi->mmap_count >= 2 && bi->mmap_count <= 64, "mmap_count is not in 2..64");
    ok &= check(bi->ap_mailbox_addr == MV_AP_MAILBOX_ADDR, "ap_mailbox_addr is not 0x6000");
    ok &= check(bi->ap_sipi_vector == MV_AP_SIPI_VECTOR, "ap_sipi_vector is not 0x08");
    ok &= check(bi->mp_table_addr == MV_MP_TABLE_ADDR, "mp_table_addr is not 0x9fc00");
    ok &= check(bi->ram_bytes >= 2 * MIB && (bi->ram_bytes & 0xfff) == 0, "ram_bytes is below 2 MiB or not page aligned");
    if (!ok) return 1;

    const uint8_t *mp = (const uint8_t *)(uintptr_t)bi->mp_table_addr;
    uint8_t sum = 0;
    for (int i = 0; i < 16; i++) sum += mp[i];
    ok &= check(memcmp(mp, "_MP_", 4) == 0 && sum == 0, "no valid MP floating pointer at mp_table_addr");

    const struct mv_mmap_entry *e = (const struct mv_mmap_entry *)(uintptr_t)bi->mmap_addr;
    uint64_t usable = 0, reserved = 0, prev_end = 0, top = 0;
    for (uint32_t i = 0; i < bi->mmap_count; i++) {
        mv_printf("mmap[%u]: base=0x%010lx length=0x%010lx end=0x%010lx type=%u (%s)\n", i, e[i].base,
                  e[i].length, e[i].base + e[i].length, e[i].type,
                  e[i].type == MV_MMAP_USABLE ? "usable" : e[i].type == MV_MMAP_RESERVED ? "reserved" : "?");
        uint64_t b = e[i].base, end = e[i].base + e[i].length;
        ok &= check(e[i].type == MV_MMAP_USABLE || e[i].type == MV_MMAP_RESERVED, "entry type is not 1 or 2");
        ok &= check(e[i].length > 0 && end > b, "entry is empty or wraps");
        ok &= check(b >= prev_end, "entries are not sorted or overlap");
        ok &= check((b & 0xfff) == 0 && (e[i].length & 0xfff) == 0, "entry is not page aligned");
        if (e[i].type == MV_MMAP_USABLE) {
            usable += e[i].length;
            ok &= check(b >= MV_IMAGE_MIN, "usable RAM below 1 MiB (0-1 MiB must be reserved)");
            ok &= check(end <= MV_MMIO_HOLE_START || b >= MV_4GIB, "usable RAM inside the MMIO hole");
            if (end > top) top = end;
        } else {
            reserved += e[i].length;
        }
        prev_end = end;
    }
    ok &= check(e[0].base == 0 && e[0].length == MV_IMAGE_MIN && e[0].type == MV_MMAP_RESERVED,
                "first entry is not 0-1 MiB reserved");
    mv_printf("usable 0x%lx bytes (%lu MiB), reserved 0x%lx bytes, ram_bytes 0x%lx\n", usable, usable >> 20,
              reserved, bi->ram_bytes);
    ok &= check(usable == bi->ram_bytes - MIB, "usable bytes != ram_bytes - 1 MiB");
    ok &= check(usable + reserved == bi->ram_bytes, "usable + reserved bytes != ram_bytes");
    if (bi->ram_bytes <= MV_MMIO_HOLE_START)
        ok &= check(top == bi->ram_bytes, "RAM below the hole, but usable RAM does not end at ram_bytes");
    else
        ok &= check(top == MV_4GIB + (bi->ram_bytes - MV_MMIO_HOLE_START),
                    "RAM above the hole does not end at 4 GiB + (ram_bytes - 3 GiB)");
    uint64_t img_start = (uint64_t)(uintptr_t)__image_start, img_end = (uint64_t)(uintptr_t)__image_end;
    int image_in_ram = 0;
    for (uint32_t i = 0; i < bi->mmap_count; i++)
        if (e[i].type == MV_MMAP_USABLE && img_start >= e[i].base && img_end <= e[i].base + e[i].length)
            image_in_ram = 1;
    ok &= check(image_in_ram, "the guest image is not inside one usable entry");

    int bss_ok = 1;
    for (unsigned i = 0; i < MV_ARRAY_SIZE(bss_probe); i++) bss_ok &= bss_probe[i] == 0;
    ok &= check(bss_ok, ".bss was not zeroed by the loader");
    ok &= check(data_probe == 0x0123456789abcdefull, ".data was not loaded intact");
    if (!ok) return 1;

    /* Write every probe first, then read them all back, so aliasing (two GPAs, one page) shows up. */
    uint64_t written = 0, bad = 0;
    for (uint32_t i = 0; i < bi->mmap_count; i++)
        if (e[i].type == MV_MMAP_USABLE)
            written += probe_region(e[i].base, e[i].base + e[i].length, 1, &bad);
    for (uint32_t i = 0; i < bi->mmap_count; i++) {
        if (e[i].type != MV_MMAP_USABLE) continue;
        if (probe_region(e[i].base, e[i].base + e[i].length, 0, &bad) == ~0ull) {
            mv_printf("memmap FAIL: pattern mismatch at 0x%lx: read 0x%lx, wrote 0x%lx\n", bad,
                      *(volatile uint64_t *)(uintptr_t)bad, pattern(bad));
            return 1;
        }
    }
    mv_printf("pattern test: %lu words written and read back (image 0x%lx-0x%lx skipped)\n", written,
              img_start, img_end);
    mv_puts("memmap ok");
    return 0;
}
