/*
 * bochs_display: drives a bochs-display (PCI 1234:1111) from the contract Linux's bochs DRM driver relies
 * on (drivers/gpu/drm/tiny/bochs.c; QEMU docs/specs/standard-vga.rst), without minivisor's own docs:
 * finds the function through PCI configuration mechanism #1, takes the BARs the bus assigned (BAR0 the
 * framebuffer, BAR2 the MMIO registers), checks the identity the driver checks (DISPI ID 0xB0Cx, video
 * memory = BAR0 size, EDID header, QEMU extended registers), sets a 640x480x32 mode the way
 * bochs_hw_setmode does, then pans: a virtual width of 800 pixels and an offset of (16, 8). It draws a
 * pattern in ring 3 straight into BAR0, fills what lies outside the visible window magenta, and asks for a
 * screenshot (port 0xf5). Prints "bochs pixel X Y 0xRRGGBB" for sample visible pixels and "bochs display
 * ok". With "wait=key" on the command line it then waits for a byte from the i8042 (port 0x60) and prints
 * "bochs key 0xNN" for each until a key release (bit 7) arrives.
 */
#include "mv.h"

#define W 640
#define H 480
#define VW 800                      /* virtual width (pixels per row) */
#define XOFF 16
#define YOFF 8

#define DISPI_ID 0x0
#define DISPI_XRES 0x1
#define DISPI_YRES 0x2
#define DISPI_BPP 0x3
#define DISPI_ENABLE 0x4
#define DISPI_BANK 0x5
#define DISPI_VIRT_WIDTH 0x6
#define DISPI_VIRT_HEIGHT 0x7
#define DISPI_X_OFFSET 0x8
#define DISPI_Y_OFFSET 0x9
#define DISPI_VIDEO_MEMORY_64K 0xa
#define DISPI_ENABLED 0x01
#define DISPI_LFB_ENABLED 0x40

static uint64_t regs;               /* BAR2 */
static int failures;
#define FAIL(...) do { mv_printf("bochs display FAIL: " __VA_ARGS__); failures++; } while (0)

static uint32_t cfg_read(unsigned dev, unsigned off) {
    outl(0xcf8, 0x80000000u | dev << 11 | (off & 0xfc));
    return inl(0xcfc);
}
static void cfg_write(unsigned dev, unsigned off, uint32_t v) {
    outl(0xcf8, 0x80000000u | dev << 11 | (off & 0xfc));
    outl(0xcfc, v);
}
static uint16_t dispi_read(unsigned i) { return mmio_read16(regs + 0x500 + (i << 1)); }
static void dispi_write(unsigned i, uint16_t v) { mmio_write16(regs + 0x500 + (i << 1), v); }

/* The colour of visible pixel (x, y). */
static uint32_t pattern(unsigned x, unsigned y) {
    uint32_t quadrant = (y < H / 2) ? (x < W / 2 ? 0xff0000 : 0x00ff00) : (x < W / 2 ? 0x0000ff : 0xffffff);
    if (x < 8 || y < 8 || x >= W - 8 || y >= H - 8) return 0xffff00;          /* a yellow frame */
    if ((x / 40 + y / 40) % 2) quadrant &= 0x7f7f7f;                            /* a checkerboard tint */
    return quadrant;
}

struct draw_job { volatile uint32_t *fb; uint64_t pixels; };

static uint64_t draw_user(uint64_t arg) {
    struct draw_job *j = (struct draw_job *)(uintptr_t)arg;
    for (uint64_t i = 0; i < j->pixels; i++) j->fb[i] = 0xff00ff;              /* magenta everywhere */
    for (unsigned y = 0; y < H; y++)
        for (unsigned x = 0; x < W; x++) j->fb[(uint64_t)(y + YOFF) * VW + x + XOFF] = pattern(x, y);
    uint64_t bad = 0;
    for (unsigned y = 0; y < H; y++)
        for (unsigned x = 0; x < W; x++)
            if (j->fb[(uint64_t)(y + YOFF) * VW + x + XOFF] != pattern(x, y)) bad++;
    return bad;
}

int main(const struct mv_boot_info *bi) {
    unsigned dev = 32;
    for (unsigned d = 0; d < 32; d++)
        if (cfg_read(d, 0) == (0x1111u << 16 | 0x1234u)) { dev = d; break; }
    if (dev == 32) { mv_puts("bochs display FAIL: no PCI function 1234:1111 on bus 0"); return 1; }
    uint32_t class_rev = cfg_read(dev, 0x08);
    if ((class_rev >> 16) != 0x0300) FAIL("class 0x%06x, expected a VGA display 0x0300xx\n", class_rev >> 8);

    /* BARs as the bus assigned them; sizes by the usual all-ones probe with decoding off. */
    uint32_t cmd = cfg_read(dev, 0x04) & 0xffff;
    cfg_write(dev, 0x04, cmd & ~3u);
    uint32_t b0 = cfg_read(dev, 0x10), b2 = cfg_read(dev, 0x18);
    cfg_write(dev, 0x10, 0xffffffffu);
    uint64_t fb_size = (uint64_t)(~(cfg_read(dev, 0x10) & ~0xfu)) + 1;
    cfg_write(dev, 0x10, b0);
    cfg_write(dev, 0x18, 0xffffffffu);
    uint64_t regs_size = (uint64_t)(~(cfg_read(dev, 0x18) & ~0xfu)) + 1;
    cfg_write(dev, 0x18, b2);
    cfg_write(dev, 0x04, cmd | 2);                                              /* memory decoding on */
    if ((b0 & 1) || (b2 & 1)) { mv_puts("bochs display FAIL: BAR0 or BAR2 is not a memory BAR"); return 1; }
    uint64_t fb = b0 & ~0xfu;
    regs = b2 & ~0xfu;
    if (fb == 0 || regs == 0) { mv_printf("bochs display FAIL: BARs not assigned (0x%x, 0x%x)\n", b0, b2); return 1; }
    mv_printf("bochs display at 00:%u.0: BAR0 0x%lx (%lu MiB%s), BAR2 0x%lx (%lu bytes)\n", dev, fb, fb_size >> 20,
              (b0 & 8) ? ", prefetchable" : "", regs, regs_size);
    if (fb_size < (4u << 20)) FAIL("framebuffer of %lu bytes: the driver needs 4 MiB\n", fb_size);

    uint16_t id = dispi_read(DISPI_ID);
    if ((id & 0xfff0) != 0xb0c0) { mv_printf("bochs display FAIL: DISPI ID 0x%04x\n", id); return 1; }
    uint64_t vram = (uint64_t)dispi_read(DISPI_VIDEO_MEMORY_64K) * 64 * 1024;
    if (vram != fb_size) FAIL("VIDEO_MEMORY_64K says %lu bytes, BAR0 is %lu\n", vram, fb_size);
    static const uint8_t edid_header[8] = { 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0 };
    uint8_t sum = 0;
    for (unsigned i = 0; i < 128; i++) {
        uint8_t b = mmio_read8(regs + i);
        sum = (uint8_t)(sum + b);
        if (i < 8 && b != edid_header[i]) { FAIL("EDID byte %u is 0x%02x\n", i, b); break; }
    }
    if (sum != 0) FAIL("EDID checksum leaves %u\n", sum);
    uint32_t qext = mmio_read32(regs + 0x600);
    if ((class_rev & 0xff) >= 2 && (qext < 4 || qext > regs_size)) FAIL("QEMU extended register size %u\n", qext);
    mmio_write32(regs + 0x604, 0x1e1e1e1e);                                     /* little-endian framebuffer */
    if (mmio_read32(regs + 0x604) != 0x1e1e1e1e) FAIL("endianness register reads 0x%x\n", mmio_read32(regs + 0x604));
    mv_printf("DISPI ID 0x%04x, %lu MiB video memory, EDID ok, qext size %u\n", id, vram >> 20, qext);

    /* bochs_hw_setmode: unblank through the VGA attribute port, then the DISPI sequence. */
    mmio_write8(regs + 0x400 + (0x3c0 - 0x3c0), 0x20);
    dispi_write(DISPI_ENABLE, 0);
    dispi_write(DISPI_BPP, 32);
    dispi_write(DISPI_XRES, W);
    dispi_write(DISPI_YRES, H);
    dispi_write(DISPI_BANK, 0);
    dispi_write(DISPI_VIRT_WIDTH, W);
    dispi_write(DISPI_VIRT_HEIGHT, (uint16_t)(fb_size / (W * 4) > 0xffff ? 0xffff : fb_size / (W * 4)));
    dispi_write(DISPI_X_OFFSET, 0);
    dispi_write(DISPI_Y_OFFSET, 0);
    dispi_write(DISPI_ENABLE, DISPI_ENABLED | DISPI_LFB_ENABLED);
    /* bochs_hw_setbase: pan within a wider virtual screen. */
    dispi_write(DISPI_VIRT_WIDTH, VW);
    dispi_write(DISPI_X_OFFSET, XOFF);
    dispi_write(DISPI_Y_OFFSET, YOFF);
    if (dispi_read(DISPI_XRES) != W || dispi_read(DISPI_YRES) != H || dispi_read(DISPI_BPP) != 32 ||
        dispi_read(DISPI_VIRT_WIDTH) != VW || dispi_read(DISPI_X_OFFSET) != XOFF || dispi_read(DISPI_Y_OFFSET) != YOFF ||
        (dispi_read(DISPI_ENABLE) & (DISPI_ENABLED | DISPI_LFB_ENABLED)) != (DISPI_ENABLED | DISPI_LFB_ENABLED))
        FAIL("mode registers read back %ux%ux%u virt %u offset %u,%u enable 0x%x\n", dispi_read(DISPI_XRES),
             dispi_read(DISPI_YRES), dispi_read(DISPI_BPP), dispi_read(DISPI_VIRT_WIDTH), dispi_read(DISPI_X_OFFSET),
             dispi_read(DISPI_Y_OFFSET), dispi_read(DISPI_ENABLE));

    struct draw_job job = { (volatile uint32_t *)(uintptr_t)fb, (uint64_t)VW * (H + YOFF + 8) };
    uint64_t bad = mv_run_user(draw_user, (uint64_t)(uintptr_t)&job);
    if (bad) FAIL("%lu pixels read back wrong through BAR0\n", bad);
    outb(0xf5, 1);                                                              /* screenshot */
    mv_puts("mode 640x480x32 set, virtual width 800, offset 16,8; pattern drawn; screenshot requested");
    static const struct { unsigned x, y; } samples[] = { { 100, 100 }, { 500, 100 }, { 100, 400 }, { 500, 400 },
                                                         { 0, 0 }, { 639, 479 }, { 140, 60 } };
    for (unsigned i = 0; i < MV_ARRAY_SIZE(samples); i++)
        mv_printf("bochs pixel %u %u 0x%06x\n", samples[i].x, samples[i].y, pattern(samples[i].x, samples[i].y));
    if (failures) { mv_printf("bochs display FAIL: %d check(s) failed\n", failures); return 1; }
    mv_puts("bochs display ok");

    size_t len;
    const char *cmdline = (const char *)(uintptr_t)bi->cmdline_addr;
    if (mv_cmdline_value(cmdline, bi->cmdline_len, "wait", &len)) {
        mv_puts("bochs waiting for a key");
        for (;;) {
            while (!(inb(0x64) & 1)) __asm__ volatile("pause");
            uint8_t b = inb(0x60);
            mv_printf("bochs key 0x%02x\n", b);
            if (b & 0x80) break;
        }
    }
    return 0;
}
