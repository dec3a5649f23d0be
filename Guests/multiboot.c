/*
 * multiboot: a 32-bit multiboot v1 kernel (built twice: ELF header path and a.out-kludge path).
 * Checks EAX == 0x2BADB002, prints "multiboot ok", mem_lower/mem_upper, the command line, the memory
 * map and every module (string and first line of content), checks them for consistency and powers off.
 */
#include "common.h"
#include "multiboot/multiboot.h"

extern char __load_start[], __load_end[], __bss_end[];
extern const char mb_variant[];

static uint32_t bss_probe[64];          /* must be zero: the loader clears bss */
static uint32_t data_probe = 0x600dda7a; /* must survive loading */
static int failures;

static void fail(const char *what) {
    mv_printf("multiboot FAIL: %s\n", what);
    failures++;
}

static void print_first_line(uint32_t index, const struct multiboot_module *m) {
    const char *p = (const char *)m->mod_start;
    uint32_t len = m->mod_end > m->mod_start ? m->mod_end - m->mod_start : 0;
    char line[81];
    uint32_t n = 0;
    while (n < len && n < sizeof line - 1 && p[n] != '\n') {
        char c = p[n];
        line[n++] = (c >= 0x20 && c < 0x7f) ? c : '.';
    }
    line[n] = 0;
    mv_printf("module %u first line: %s\n", index, line);
}

int mb_main(uint32_t magic, const struct multiboot_info *mbi);
int mb_main(uint32_t magic, const struct multiboot_info *mbi) {
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        mv_printf("multiboot FAIL: EAX = 0x%08x, expected 0x2badb002\n", magic);
        return 1;
    }
    mv_printf("multiboot ok (%s header, info at %p, flags 0x%x)\n", mb_variant, (const void *)mbi, mbi->flags);

    uint32_t need = MB_INFO_MEMORY | MB_INFO_CMDLINE | MB_INFO_MODS | MB_INFO_MMAP;
    if ((mbi->flags & need) != need)
        fail("info flags lack MEM | CMDLINE | MODS | MMAP");

    mv_printf("mem_lower=%u KiB mem_upper=%u KiB\n", mbi->mem_lower, mbi->mem_upper);
    if (mbi->mem_lower != 639)
        fail("mem_lower is not 639 KiB");
    if (mbi->mem_upper == 0)
        fail("mem_upper is 0");

    if (mbi->flags & MB_INFO_CMDLINE)
        mv_printf("cmdline: %s\n", mbi->cmdline ? (const char *)mbi->cmdline : "(null)");
    if (mbi->flags & MB_INFO_LOADER)
        mv_printf("boot loader: %s\n", (const char *)mbi->boot_loader_name);

    if (mbi->flags & MB_INFO_MMAP) {
        uint32_t a = mbi->mmap_addr, end = mbi->mmap_addr + mbi->mmap_length, count = 0;
        int upper_seen = 0;
        while (a + 4 <= end) {
            const struct multiboot_mmap_entry *e = (const struct multiboot_mmap_entry *)a;
            mv_printf("mmap: base=0x%09llx length=0x%09llx type=%u\n",
                      (unsigned long long)e->base_addr, (unsigned long long)e->length, e->type);
            if (e->size < 20) {
                fail("mmap entry size below 20");
                break;
            }
            if (e->base_addr == 0x100000 && e->type == 1) {
                upper_seen = 1;
                if ((uint32_t)(e->length >> 10) != mbi->mem_upper)
                    fail("mem_upper does not match the mmap entry at 1 MiB");
            }
            if (e->base_addr == 0 && (e->type != 1 || e->length != 0x9fc00))
                fail("first mmap entry is not 0-0x9fc00 usable");
            a += e->size + 4;
            count++;
        }
        if (count < 3)
            fail("mmap has fewer than 3 entries");
        if (!upper_seen)
            fail("no usable mmap entry at 1 MiB");
    }

    if (mbi->flags & MB_INFO_MODS) {
        const struct multiboot_module *mods = (const struct multiboot_module *)mbi->mods_addr;
        uint32_t prev_end = (uint32_t)__bss_end;
        mv_printf("modules: %u\n", mbi->mods_count);
        for (uint32_t i = 0; i < mbi->mods_count; i++) {
            const struct multiboot_module *m = &mods[i];
            mv_printf("module %u: 0x%08x-0x%08x string: %s\n", i, m->mod_start, m->mod_end,
                      m->string ? (const char *)m->string : "(null)");
            if (m->mod_start & 0xfff)
                fail("module is not page aligned (header flag bit 0)");
            if (m->mod_end < m->mod_start)
                fail("module ends before it starts");
            if (m->mod_start < prev_end)
                fail("module overlaps the kernel or the previous module");
            prev_end = m->mod_end;
            print_first_line(i, m);
        }
    }

    for (unsigned i = 0; i < MV_ARRAY_SIZE(bss_probe); i++)
        if (bss_probe[i]) {
            fail(".bss was not zeroed by the loader");
            break;
        }
    if (data_probe != 0x600dda7a)
        fail(".data was not loaded intact");

    if (failures) {
        mv_printf("multiboot FAIL: %d check(s) failed\n", failures);
        return 1;
    }
    mv_printf("multiboot checks passed (image 0x%08x-0x%08x, bss end 0x%08x)\n",
              (uint32_t)__load_start, (uint32_t)__load_end, (uint32_t)__bss_end);
    return 0;
}
