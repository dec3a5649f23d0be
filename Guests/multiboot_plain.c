/*
 * multiboot-plain: a multiboot v1 kernel linked with plain `ld -m elf_i386 -Ttext=0x100000`, so its ELF
 * headers form a read-only PT_LOAD segment at 0xff000, below 1 MiB (QEMU -kernel and GRUB boot such
 * kernels). Checks that segment was loaded (ELF magic at 0xff000), that the multiboot information, its
 * strings and the modules lie outside the image, prints the command line and modules, and ends with
 * code=N from the command line (default 0: power-off).
 */
#include "common.h"
#include "multiboot/multiboot.h"

extern char _end[];
#define IMAGE_START 0xff000u

static int failures;

static void fail(const char *what) {
    mv_printf("multiboot-plain FAIL: %s\n", what);
    failures++;
}

/* Whether [a, a+n) overlaps the image [IMAGE_START, _end). */
static int in_image(uint32_t a, uint32_t n) {
    return a < (uint32_t)_end && a + n > IMAGE_START;
}

static void check_string(const char *what, uint32_t s) {
    if (!s) {
        fail(what);
        return;
    }
    if (in_image(s, strlen((const char *)s) + 1))
        fail(what);
}

int mb_main(uint32_t magic, const struct multiboot_info *mbi);
int mb_main(uint32_t magic, const struct multiboot_info *mbi) {
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        mv_printf("multiboot-plain FAIL: EAX = 0x%08x\n", magic);
        return 1;
    }
    const unsigned char *hdr = (const unsigned char *)IMAGE_START;
    mv_printf("multiboot-plain ok (image 0x%08x-0x%08x, info at %p)\n", IMAGE_START, (uint32_t)_end,
              (const void *)mbi);
    if (hdr[0] != 0x7f || hdr[1] != 'E' || hdr[2] != 'L' || hdr[3] != 'F')
        fail("the ELF header segment at 0xff000 was not loaded");
    if (in_image((uint32_t)mbi, sizeof *mbi))
        fail("the multiboot information overlaps the image");
    const char *cmdline = "";
    if (mbi->flags & MB_INFO_CMDLINE) {
        check_string("the command line is missing or overlaps the image", mbi->cmdline);
        cmdline = mbi->cmdline ? (const char *)mbi->cmdline : "";
    }
    mv_printf("cmdline: %s\n", cmdline);
    if (mbi->flags & MB_INFO_LOADER) {
        check_string("the boot loader name is missing or overlaps the image", mbi->boot_loader_name);
        mv_printf("boot loader: %s\n", (const char *)mbi->boot_loader_name);
    }
    if (mbi->flags & MB_INFO_MODS) {
        const struct multiboot_module *mods = (const struct multiboot_module *)mbi->mods_addr;
        if (mbi->mods_count && in_image(mbi->mods_addr, mbi->mods_count * sizeof *mods))
            fail("the module list overlaps the image");
        for (uint32_t i = 0; i < mbi->mods_count; i++) {
            mv_printf("module %u: 0x%08x-0x%08x %s\n", i, mods[i].mod_start, mods[i].mod_end,
                      mods[i].string ? (const char *)mods[i].string : "(null)");
            if (in_image(mods[i].mod_start, mods[i].mod_end - mods[i].mod_start))
                fail("a module overlaps the image");
            check_string("a module string is missing or overlaps the image", mods[i].string);
        }
    }
    if (failures) {
        mv_printf("multiboot-plain FAIL: %d check(s) failed\n", failures);
        return 1;
    }
    size_t len = 0;
    const char *v = mv_cmdline_value(cmdline, strlen(cmdline), "code", &len);
    int ok = 1;
    uint32_t code = v ? (uint32_t)mv_parse_u64(v, len, &ok) : 0;
    mv_printf("multiboot-plain checks passed, exiting with %u\n", code);
    return ok ? (int)code : 1;
}
