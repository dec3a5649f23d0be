/*
 * vgpu.c: guest driver library for the minivisor vGPU. See vgpu.h for the API and docs/vgpu.md for the
 * device. Integer-only (-mgeneral-regs-only); ring-0-only parts are marked in vgpu.h.
 *
 * Ring 0 runs in KVM's instruction emulator on some hosts (~1 M instructions/s), so the paths here are
 * kept short: bulk work (zeroing memory) is done in ring 3 through mv_run_user.
 */
#include "vgpu/vgpu.h"

#define LAPIC_ID       0x020u
#define LAPIC_TPR      0x080u
#define LAPIC_EOI      0x0B0u
#define LAPIC_SVR      0x0F0u
#define LAPIC_LVT_TIMER 0x320u
#define LAPIC_TIMER_INIT 0x380u
#define LAPIC_TIMER_DIV  0x3E0u
#define LAPIC_SPURIOUS_VECTOR 0xffu
#define LAPIC_TIMER_COUNT 625000u        /* ~10 ms with KVM's 1 GHz APIC bus and divide-by-16 */

static inline void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(MV_LAPIC_BASE + reg, v); }
static inline uint32_t lapic_read(uint32_t reg) { return mmio_read32(MV_LAPIC_BASE + reg); }

static void warn(struct vgpu *v, const char *what, uint64_t got, uint64_t want) {
    v->warnings++;
    mv_printf("vgpu: warning: %s: 0x%lx, expected 0x%lx\n", what, got, want);
}

const char *vgpu_reason_name(uint32_t r) {
    static const char *const names[] = {
        "none", "unknown command", "command not allowed on this engine", "invalid length",
        "command runs past the tail or batch end", "address outside the vGPU's graphics memory",
        "register not allowed for command loads", "batch nesting deeper than two levels",
        "too many batches in one submission", "step budget exceeded", "invalid operand",
        "ring not programmed or outside the vGPU's graphics memory",
        "guest memory behind a ring or batch is not readable", "hang (the watchdog reset the vGPU)",
    };
    return r < MV_ARRAY_SIZE(names) ? names[r] : "(unknown reason)";
}

/* ---------------------------------------------------------------- commands */

void vgpu_cmds_init(struct vgpu_cmds *c, void *buf, uint32_t cap_dwords) {
    c->dw = buf;
    c->len = 0;
    c->cap = cap_dwords;
    c->gm = 0;
    c->overflow = 0;
}

uint32_t vgpu_cmds_bytes(const struct vgpu_cmds *c) { return c->len * 4; }
uint64_t vgpu_cmds_gm_here(const struct vgpu_cmds *c) { return c->gm + (uint64_t)c->len * 4; }

static uint32_t *reserve(struct vgpu_cmds *c, uint32_t n) {
    if (c->overflow || c->len + n > c->cap) {
        c->overflow = 1;
        return 0;
    }
    uint32_t *p = c->dw + c->len;
    c->len += n;
    return p;
}

static inline uint32_t lo32(uint64_t v) { return (uint32_t)v; }
static inline uint32_t hi32(uint64_t v) { return (uint32_t)(v >> 32); }
static inline uint32_t pack_xy(int x, int y) { return (uint32_t)(uint16_t)x | (uint32_t)(uint16_t)y << 16; }
static inline uint32_t pack_size(const struct vgpu_surface *s) { return (uint32_t)s->width | (uint32_t)s->height << 16; }

void vgpu_raw(struct vgpu_cmds *c, const uint32_t *dw, uint32_t n) {
    uint32_t *p = reserve(c, n);
    if (p)
        for (uint32_t i = 0; i < n; i++) p[i] = dw[i];
}

void vgpu_dword(struct vgpu_cmds *c, uint32_t dw) {
    uint32_t *p = reserve(c, 1);
    if (p) p[0] = dw;
}

void vgpu_noop(struct vgpu_cmds *c) { vgpu_dword(c, VGPU_CMD_NOOP); }
void vgpu_align_qword(struct vgpu_cmds *c) { if (c->len & 1) vgpu_noop(c); }
void vgpu_user_interrupt(struct vgpu_cmds *c) { vgpu_dword(c, VGPU_CMD_USER_INTERRUPT); }
void vgpu_bb_end(struct vgpu_cmds *c) { vgpu_dword(c, VGPU_CMD_BB_END); }

void vgpu_bb_start(struct vgpu_cmds *c, uint64_t gm, uint32_t length_bytes, int second_level) {
    uint32_t *p = reserve(c, 4);
    if (!p) return;
    p[0] = VGPU_CMD_BB_START | (second_level ? VGPU_BB_SECOND_LEVEL : 0);
    p[1] = lo32(gm);
    p[2] = hi32(gm);
    p[3] = length_bytes;
}

void vgpu_store_dw(struct vgpu_cmds *c, uint64_t gm, uint32_t value) {
    uint32_t *p = reserve(c, 4);
    if (!p) return;
    p[0] = VGPU_CMD_STORE_DW;
    p[1] = lo32(gm);
    p[2] = hi32(gm);
    p[3] = value;
}

void vgpu_store_qw(struct vgpu_cmds *c, uint64_t gm, uint64_t value) {
    uint32_t *p = reserve(c, 5);
    if (!p) return;
    p[0] = VGPU_CMD_STORE_QW;
    p[1] = lo32(gm);
    p[2] = hi32(gm);
    p[3] = lo32(value);
    p[4] = hi32(value);
}

void vgpu_lri(struct vgpu_cmds *c, const uint32_t *pairs, uint32_t n) {
    if (n == 0 || n > VGPU_LRI_MAX_PAIRS) {
        c->overflow = 1;
        return;
    }
    uint32_t *p = reserve(c, 1 + 2 * n);
    if (!p) return;
    p[0] = VGPU_CMD_LRI(n);
    for (uint32_t i = 0; i < 2 * n; i++) p[1 + i] = pairs[i];
}

void vgpu_lri1(struct vgpu_cmds *c, uint32_t offset, uint32_t value) {
    uint32_t pair[2] = { offset, value };
    vgpu_lri(c, pair, 1);
}

void vgpu_flush(struct vgpu_cmds *c, int post_sync, uint64_t gm, uint32_t value, int notify) {
    uint32_t *p = reserve(c, 4);
    if (!p) return;
    p[0] = VGPU_CMD_FLUSH | (post_sync ? VGPU_FLUSH_POST_SYNC : 0) | (notify ? VGPU_FLUSH_NOTIFY : 0);
    p[1] = post_sync ? lo32(gm) : 0;
    p[2] = post_sync ? hi32(gm) : 0;
    p[3] = post_sync ? value : 0;
}

void vgpu_display_flip(struct vgpu_cmds *c, unsigned plane, uint64_t gm, uint32_t stride) {
    uint32_t *p = reserve(c, 4);
    if (!p) return;
    p[0] = VGPU_CMD_DISPLAY_FLIP | VGPU_FLIP_PLANE(plane & 3);
    p[1] = stride;
    p[2] = lo32(gm);
    p[3] = hi32(gm);
}

void vgpu_color_blt(struct vgpu_cmds *c, const struct vgpu_surface *dst, int x1, int y1, int x2, int y2,
                    uint32_t color) {
    uint32_t *p = reserve(c, 8);
    if (!p) return;
    p[0] = VGPU_CMD_COLOR_BLT;
    p[1] = dst->pitch;
    p[2] = pack_xy(x1, y1);
    p[3] = pack_xy(x2, y2);
    p[4] = lo32(dst->gm);
    p[5] = hi32(dst->gm);
    p[6] = color;
    p[7] = pack_size(dst);
}

void vgpu_src_copy_blt(struct vgpu_cmds *c, const struct vgpu_surface *dst, int x1, int y1, int x2, int y2,
                       const struct vgpu_surface *src, int src_x, int src_y) {
    uint32_t *p = reserve(c, 12);
    if (!p) return;
    p[0] = VGPU_CMD_SRC_COPY_BLT;
    p[1] = dst->pitch;
    p[2] = pack_xy(x1, y1);
    p[3] = pack_xy(x2, y2);
    p[4] = lo32(dst->gm);
    p[5] = hi32(dst->gm);
    p[6] = pack_xy(src_x, src_y);
    p[7] = src->pitch;
    p[8] = lo32(src->gm);
    p[9] = hi32(src->gm);
    p[10] = pack_size(dst);
    p[11] = pack_size(src);
}

void vgpu_saxpy(struct vgpu_cmds *c, uint32_t n, uint32_t a_f32, uint64_t x, uint64_t y) {
    uint32_t *p = reserve(c, 7);
    if (!p) return;
    p[0] = VGPU_CMD_SAXPY;
    p[1] = n;
    p[2] = a_f32;
    p[3] = lo32(x);
    p[4] = hi32(x);
    p[5] = lo32(y);
    p[6] = hi32(y);
}

void vgpu_sgemm(struct vgpu_cmds *c, uint32_t m, uint32_t n, uint32_t k, uint32_t alpha_f32, uint32_t beta_f32,
                uint64_t a, uint32_t lda, uint64_t b, uint32_t ldb, uint64_t cm, uint32_t ldc) {
    uint32_t *p = reserve(c, 15);
    if (!p) return;
    p[0] = VGPU_CMD_SGEMM;
    p[1] = m;
    p[2] = n;
    p[3] = k;
    p[4] = alpha_f32;
    p[5] = beta_f32;
    p[6] = lo32(a);
    p[7] = hi32(a);
    p[8] = lda;
    p[9] = lo32(b);
    p[10] = hi32(b);
    p[11] = ldb;
    p[12] = lo32(cm);
    p[13] = hi32(cm);
    p[14] = ldc;
}

/* ---------------------------------------------------------------- PCI */

#define PCI_ADDR_PORT 0xcf8
#define PCI_DATA_PORT 0xcfc

static uint32_t cfg_address(unsigned bus, unsigned dev, unsigned fn, unsigned off) {
    return 0x80000000u | bus << 16 | dev << 11 | fn << 8 | (off & 0xfc);
}

static uint32_t pci_read32(unsigned bus, unsigned dev, unsigned fn, unsigned off) {
    outl(PCI_ADDR_PORT, cfg_address(bus, dev, fn, off));
    return inl(PCI_DATA_PORT);
}

uint32_t vgpu_cfg_read32(const struct vgpu *v, unsigned off) { return pci_read32(v->bus, v->dev, v->fn, off); }

uint16_t vgpu_cfg_read16(const struct vgpu *v, unsigned off) {
    outl(PCI_ADDR_PORT, cfg_address(v->bus, v->dev, v->fn, off));
    return inw((uint16_t)(PCI_DATA_PORT + (off & 2)));
}

uint8_t vgpu_cfg_read8(const struct vgpu *v, unsigned off) {
    outl(PCI_ADDR_PORT, cfg_address(v->bus, v->dev, v->fn, off));
    return inb((uint16_t)(PCI_DATA_PORT + (off & 3)));
}

void vgpu_cfg_write32(const struct vgpu *v, unsigned off, uint32_t val) {
    outl(PCI_ADDR_PORT, cfg_address(v->bus, v->dev, v->fn, off));
    outl(PCI_DATA_PORT, val);
}

void vgpu_cfg_write16(const struct vgpu *v, unsigned off, uint16_t val) {
    outl(PCI_ADDR_PORT, cfg_address(v->bus, v->dev, v->fn, off));
    outw((uint16_t)(PCI_DATA_PORT + (off & 2)), val);
}

unsigned vgpu_cfg_find_cap(const struct vgpu *v, uint8_t id) {
    if (!(vgpu_cfg_read16(v, 0x06) & 0x10))       /* status: capabilities list */
        return 0;
    unsigned p = vgpu_cfg_read8(v, 0x34) & 0xfc;
    for (unsigned guard = 0; p >= 0x40 && guard < 48; guard++) {
        uint32_t hdr = vgpu_cfg_read32(v, p);
        if ((hdr & 0xff) == id) return p;
        p = (hdr >> 8) & 0xfc;
    }
    return 0;
}

static int pci_find(struct vgpu *v) {
    for (unsigned dev = 0; dev < 32; dev++) {
        uint32_t id0 = pci_read32(0, dev, 0, 0);
        if ((id0 & 0xffff) == 0xffff) continue;
        unsigned nfn = (pci_read32(0, dev, 0, 0x0c) >> 16) & 0x80 ? 8 : 1;
        for (unsigned fn = 0; fn < nfn; fn++) {
            uint32_t id = fn ? pci_read32(0, dev, fn, 0) : id0;
            if ((id & 0xffff) == VGPU_PCI_VENDOR && (id >> 16) == VGPU_PCI_DEVICE) {
                v->bus = 0;
                v->dev = dev;
                v->fn = fn;
                return 0;
            }
        }
    }
    return -1;
}

/* Size a memory BAR (memory decoding must be off). Returns the size, 0 if the BAR is not implemented. */
static uint64_t bar_size(struct vgpu *v, unsigned off, int is64) {
    uint32_t lo = vgpu_cfg_read32(v, off), hi = is64 ? vgpu_cfg_read32(v, off + 4) : 0;
    vgpu_cfg_write32(v, off, 0xffffffffu);
    if (is64) vgpu_cfg_write32(v, off + 4, 0xffffffffu);
    uint64_t m = vgpu_cfg_read32(v, off) & ~0xfull;
    m |= is64 ? (uint64_t)vgpu_cfg_read32(v, off + 4) << 32 : 0xffffffff00000000ull;
    vgpu_cfg_write32(v, off, lo);
    if (is64) vgpu_cfg_write32(v, off + 4, hi);
    if ((m & 0xfffffffffffffff0ull) == 0) return 0;
    return ~m + 1;
}

/* ---------------------------------------------------------------- memory */

void vgpu_map_identity(uint64_t phys, uint64_t size) {
    if (size == 0) return;
    uint64_t *pml4 = (uint64_t *)(uintptr_t)(read_cr3() & VGPU_GTT_ADDR_MASK);
    int changed = 0;
    for (uint64_t a = phys & ~0x1fffffull; a < phys + size; a += 0x200000) {
        uint64_t *e = &pml4[(a >> 39) & 511];
        uint64_t *tables[2];
        int large = 0;
        for (int level = 0; level < 2; level++) {
            if (!(*e & 1)) {
                uint64_t *t = mv_alloc(4096, 4096);
                if (!t) return;
                for (int i = 0; i < 512; i++) t[i] = 0;
                *e = (uint64_t)(uintptr_t)t | 7;       /* present, writable, user */
                changed = 1;
            } else if (*e & 0x80) {
                large = 1;                               /* a 1 GiB page covers it already */
                break;
            }
            tables[level] = (uint64_t *)(uintptr_t)(*e & VGPU_GTT_ADDR_MASK);
            e = &tables[level][(a >> (level == 0 ? 30 : 21)) & 511];
        }
        if (large) continue;
        if (!(*e & 1)) {
            *e = a | 0x87;                               /* present, writable, user, 2 MiB */
            changed = 1;
        }
    }
    if (changed)
        __asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
}

struct zero_job { uint64_t *p; uint64_t qwords; };

static uint64_t zero_user(uint64_t arg) {
    struct zero_job *j = (struct zero_job *)(uintptr_t)arg;
    uint64_t *p = j->p;
    for (uint64_t i = 0; i < j->qwords; i++) p[i] = 0;
    return 0;
}

/* Zero RAM natively: in ring 3 (ring 0 may be emulated instruction by instruction). */
static void zero_ram(void *p, uint64_t bytes) {
    struct zero_job j = { p, bytes / 8 };
    if (cpl() == 0)
        mv_run_user(zero_user, (uint64_t)(uintptr_t)&j);
    else
        zero_user((uint64_t)(uintptr_t)&j);
}

uint64_t vgpu_gm_alloc(struct vgpu *v, int hidden, uint64_t bytes) {
    bytes = (bytes + 4095) & ~4095ull;
    uint64_t *next = hidden ? &v->hid_next : &v->ap_next;
    uint64_t end = hidden ? v->hid_base + v->hid_size : v->ap_base + v->ap_size;
    if (bytes == 0 || *next + bytes < *next || *next + bytes > end) return VGPU_GM_NONE;
    uint64_t gm = *next;
    *next += bytes;
    return gm;
}

int vgpu_gm_in_slices(const struct vgpu *v, uint64_t gm, uint64_t bytes) {
    uint64_t end = gm + bytes;
    if (end < gm) return 0;
    return (gm >= v->ap_base && end <= v->ap_base + v->ap_size) ||
           (gm >= v->hid_base && end <= v->hid_base + v->hid_size);
}

void vgpu_gtt_map(struct vgpu *v, uint64_t gm, uint64_t gpa, uint64_t pages) {
    uintptr_t a = vgpu_gtt_addr(v, gm);
    uint64_t e = (gpa & VGPU_GTT_ADDR_MASK) | VGPU_GTT_VALID;
    for (uint64_t i = 0; i < pages; i++, a += 8, e += 4096)
        mmio_write64(a, e);
}

void *vgpu_gm_back(struct vgpu *v, uint64_t gm, uint64_t bytes) {
    bytes = (bytes + 4095) & ~4095ull;
    void *ram = mv_alloc(bytes, 4096);
    if (!ram) {
        mv_printf("vgpu: out of guest RAM for %lu bytes\n", bytes);
        return 0;
    }
    zero_ram(ram, bytes);
    vgpu_gtt_map(v, gm, (uint64_t)(uintptr_t)ram, bytes / 4096);
    return ram;
}

void *vgpu_gm_alloc_backed(struct vgpu *v, int hidden, uint64_t bytes, uint64_t *gm_out) {
    uint64_t gm = vgpu_gm_alloc(v, hidden, bytes);
    if (gm == VGPU_GM_NONE) {
        mv_printf("vgpu: out of %s graphics memory for %lu bytes\n", hidden ? "hidden" : "aperture", bytes);
        return 0;
    }
    *gm_out = gm;
    return vgpu_gm_back(v, gm, bytes);
}

/* ---------------------------------------------------------------- init */

static uint64_t usable_ram_end(const struct mv_boot_info *bi) {
    uint64_t end = 0;
    const struct mv_mmap_entry *e = (const struct mv_mmap_entry *)(uintptr_t)bi->mmap_addr;
    for (uint32_t i = 0; i < bi->mmap_count && i < 128; i++)
        if (e[i].type == MV_MMAP_USABLE && e[i].base + e[i].length > end) end = e[i].base + e[i].length;
    return end;
}

int vgpu_init(struct vgpu *v, const struct mv_boot_info *bi) {
    memset(v, 0, sizeof *v);
    v->ram_end = usable_ram_end(bi);
    if (pci_find(v) != 0) {
        mv_printf("vgpu: no PCI function %04x:%04x on bus 0 (is minivisor running with --vgpu?)\n",
                  VGPU_PCI_VENDOR, VGPU_PCI_DEVICE);
        return -1;
    }

    /* Identity checks against docs/vgpu.md section 1 (deviations are warnings). */
    uint32_t class_rev = vgpu_cfg_read32(v, 0x08);
    if ((class_rev >> 8) != VGPU_PCI_CLASS) warn(v, "class code", class_rev >> 8, VGPU_PCI_CLASS);
    uint32_t subsys = vgpu_cfg_read32(v, 0x2c);
    if (subsys != (VGPU_PCI_DEVICE << 16 | VGPU_PCI_VENDOR))
        warn(v, "subsystem IDs", subsys, VGPU_PCI_DEVICE << 16 | VGPU_PCI_VENDOR);
    uint8_t pin = vgpu_cfg_read8(v, 0x3d);
    if (pin != 1) warn(v, "interrupt pin", pin, 1);
    uint8_t htype = vgpu_cfg_read8(v, 0x0e);
    if ((htype & 0x7f) != 0) warn(v, "header type", htype, 0);

    uint16_t cmd = vgpu_cfg_read16(v, PCI_CFG_COMMAND);
    vgpu_cfg_write16(v, PCI_CFG_COMMAND, (uint16_t)(cmd & ~(PCI_CMD_MEMORY | PCI_CMD_IO)));

    uint32_t b0 = vgpu_cfg_read32(v, 0x10), b2 = vgpu_cfg_read32(v, 0x18);
    if ((b0 & 0xf) != 0) warn(v, "BAR0 type bits (memory, 32-bit, non-prefetchable)", b0 & 0xf, 0);
    if ((b2 & 0xf) != 0xc) warn(v, "BAR2 type bits (memory, 64-bit, prefetchable)", b2 & 0xf, 0xc);
    int b2_64 = (b2 & 6) == 4;
    v->bar0_size = bar_size(v, 0x10, 0);
    v->bar2_size = bar_size(v, 0x18, b2_64);
    v->bar0 = vgpu_cfg_read32(v, 0x10) & ~0xfull;
    v->bar2 = vgpu_cfg_read32(v, 0x18) & ~0xfull;
    if (b2_64) v->bar2 |= (uint64_t)vgpu_cfg_read32(v, 0x1c) << 32;
    if (v->bar0_size != VGPU_BAR0_SIZE) warn(v, "BAR0 size", v->bar0_size, VGPU_BAR0_SIZE);
    if (v->bar0_size < VGPU_BAR0_SIZE || v->bar2_size == 0) {
        mv_printf("vgpu: BAR0 (%lu bytes) or BAR2 (%lu bytes) is unusable\n", v->bar0_size, v->bar2_size);
        return -1;
    }
    if (v->bar0 == 0 || v->bar2 == 0) {
        /* Nobody placed the BARs: do what firmware would, inside the 32-bit MMIO hole. */
        uint64_t a = MV_MMIO_HOLE_START;
        uint64_t b2a = (a + v->bar2_size - 1) & ~(v->bar2_size - 1);
        uint64_t b0a = (b2a + v->bar2_size + v->bar0_size - 1) & ~(v->bar0_size - 1);
        mv_printf("vgpu: BARs not assigned (BAR0 0x%lx, BAR2 0x%lx); placing BAR2 at 0x%lx, BAR0 at 0x%lx\n",
                  v->bar0, v->bar2, b2a, b0a);
        vgpu_cfg_write32(v, 0x10, (uint32_t)b0a);
        vgpu_cfg_write32(v, 0x18, (uint32_t)b2a | (b2 & 0xf));
        if (b2_64) vgpu_cfg_write32(v, 0x1c, (uint32_t)(b2a >> 32));
        v->bar0 = b0a;
        v->bar2 = b2a;
    }
    vgpu_cfg_write16(v, PCI_CFG_COMMAND, (uint16_t)((cmd | PCI_CMD_MEMORY | PCI_CMD_BUS_MASTER) & ~PCI_CMD_IO));
    uint16_t cmd2 = vgpu_cfg_read16(v, PCI_CFG_COMMAND);
    if ((cmd2 & (PCI_CMD_MEMORY | PCI_CMD_BUS_MASTER)) != (PCI_CMD_MEMORY | PCI_CMD_BUS_MASTER))
        warn(v, "command register after enabling memory + bus master", cmd2, cmd2 | 6);
    vgpu_map_identity(v->bar0, v->bar0_size);
    vgpu_map_identity(v->bar2, v->bar2_size);

    /* PV information page. */
    uint32_t magic = vgpu_read(v, VGPU_PV_MAGIC);
    if (magic != VGPU_PV_MAGIC_VALUE) {
        mv_printf("vgpu: PV_MAGIC reads 0x%08x, expected 0x%08x\n", magic, VGPU_PV_MAGIC_VALUE);
        return -1;
    }
    v->pv_version = vgpu_read(v, VGPU_PV_VERSION);
    if ((v->pv_version >> 16) != 1) {
        mv_printf("vgpu: PV_VERSION 0x%08x: this driver speaks 1.x\n", v->pv_version);
        return -1;
    }
    if (v->pv_version != VGPU_PV_VERSION_1_0) warn(v, "PV_VERSION", v->pv_version, VGPU_PV_VERSION_1_0);
    v->id = vgpu_read(v, VGPU_PV_VGPU_ID);
    v->ap_base = vgpu_read64(v, VGPU_PV_APERTURE_BASE);
    v->ap_size = vgpu_read64(v, VGPU_PV_APERTURE_SIZE);
    v->hid_base = vgpu_read64(v, VGPU_PV_HIDDEN_BASE);
    v->hid_size = vgpu_read64(v, VGPU_PV_HIDDEN_SIZE);
    v->gm_size = vgpu_read64(v, VGPU_PV_GM_SIZE);
    v->aperture_total = (uint64_t)vgpu_read(v, VGPU_REG_APERTURE_SIZE_MB) << 20;
    uint32_t gpu_id = vgpu_read(v, VGPU_REG_GPU_ID);
    if (gpu_id != VGPU_GPU_ID_VALUE) warn(v, "GPU_ID", gpu_id, VGPU_GPU_ID_VALUE);
    uint64_t gm_mb = (uint64_t)vgpu_read(v, VGPU_REG_GM_SIZE_MB) << 20;
    if (gm_mb != v->gm_size) warn(v, "GM_SIZE_MB << 20 vs PV_GM_SIZE", gm_mb, v->gm_size);
    if (v->aperture_total != v->bar2_size) warn(v, "APERTURE_SIZE_MB << 20 vs BAR2 size", v->aperture_total, v->bar2_size);

    int bad = 0;
    if (v->id < 1 || v->id > 32) { mv_printf("vgpu: PV_VGPU_ID %u is not 1..32\n", v->id); bad = 1; }
    if ((v->ap_base | v->ap_size | v->hid_base | v->hid_size) & 4095) {
        mv_puts("vgpu: slices are not page aligned");
        bad = 1;
    }
    if (v->ap_size == 0 || v->ap_base + v->ap_size > v->bar2_size || v->ap_base + v->ap_size < v->ap_base) {
        mv_printf("vgpu: aperture slice [0x%lx, +0x%lx) is empty or outside BAR2 (0x%lx bytes)\n", v->ap_base,
                  v->ap_size, v->bar2_size);
        bad = 1;
    }
    if (v->hid_size == 0 || v->hid_base < v->bar2_size || v->hid_base + v->hid_size > v->gm_size ||
        v->hid_base + v->hid_size < v->hid_base) {
        mv_printf("vgpu: hidden slice [0x%lx, +0x%lx) is empty or outside the hidden range [0x%lx, 0x%lx)\n",
                  v->hid_base, v->hid_size, v->bar2_size, v->gm_size);
        bad = 1;
    }
    if (v->gm_size > 4ull << 30) { mv_printf("vgpu: PV_GM_SIZE 0x%lx is over 4 GiB\n", v->gm_size); bad = 1; }
    if (bad) return -1;
    v->ap_next = v->ap_base;
    v->hid_next = v->hid_base;

    mv_printf("vgpu: 00:%02x.%x bar0 0x%lx (%lu MiB) bar2 0x%lx (%lu MiB) id %u pv %x.%x aperture [0x%lx, 0x%lx) "
              "hidden [0x%lx, 0x%lx) gm 0x%lx\n",
              v->dev, v->fn, v->bar0, v->bar0_size >> 20, v->bar2, v->bar2_size >> 20, v->id, v->pv_version >> 16,
              v->pv_version & 0xffff, v->ap_base, v->ap_base + v->ap_size, v->hid_base, v->hid_base + v->hid_size,
              v->gm_size);

    /* PV shared page for fast doorbells. */
    uint32_t *shared = mv_alloc(4096, 4096);
    if (!shared) return -1;
    for (int i = 0; i < 1024; i++) shared[i] = 0;
    v->shared = shared;
    v->shared_gpa = (uint64_t)(uintptr_t)shared;
    vgpu_write(v, VGPU_PV_SHARED_PAGE, (uint32_t)v->shared_gpa);
    vgpu_write(v, VGPU_PV_SHARED_PAGE + 4, (uint32_t)(v->shared_gpa >> 32));
    uint64_t sp = vgpu_read64(v, VGPU_PV_SHARED_PAGE);
    if (sp != v->shared_gpa) warn(v, "PV_SHARED_PAGE read back", sp, v->shared_gpa);
    v->doorbell = VGPU_DOORBELL_PV;

    /* Fence page: engine fences, and a check that BAR2 really is the guest RAM page behind the GTT entry. */
    void *fp = vgpu_gm_alloc_backed(v, VGPU_APERTURE, 4096, &v->fence_page_gm);
    if (!fp) return -1;
    v->fence_page = fp;
    volatile uint32_t *ap = vgpu_aperture(v, v->fence_page_gm);
    uint64_t want = (uint64_t)(uintptr_t)fp | VGPU_GTT_VALID, got = vgpu_gtt_read(v, v->fence_page_gm);
    if (got != want) warn(v, "GTT entry read back", got, want);
    ap[1000] = 0x600dcafe;
    barrier();
    uint32_t via_ram = v->fence_page[1000];
    v->fence_page[1001] = 0x5eed1234;
    barrier();
    uint32_t via_bar2 = ap[1001];
    if (via_ram != 0x600dcafe || via_bar2 != 0x5eed1234) {
        mv_printf("vgpu: aperture GM 0x%lx through BAR2 (0x%lx) is not the guest RAM page 0x%lx behind its GTT "
                  "entry: BAR2 write -> RAM read 0x%08x (want 0x600dcafe), RAM write -> BAR2 read 0x%08x (want "
                  "0x5eed1234)\n",
                  v->fence_page_gm, (uint64_t)(uintptr_t)ap, (uint64_t)(uintptr_t)fp, via_ram, via_bar2);
        return -1;
    }
    v->fence_page[1000] = v->fence_page[1001] = 0;
    return 0;
}

/* ---------------------------------------------------------------- rings */

int vgpu_ring_program(struct vgpu *v, int e) {
    struct vgpu_ring *r = &v->ring[e];
    uint32_t ctl = VGPU_RING_CTL_VALUE(r->pages);
    vgpu_write(v, VGPU_RING_CTL(e), 0);
    vgpu_write(v, VGPU_RING_START(e), (uint32_t)r->gm);
    vgpu_write(v, VGPU_RING_HEAD(e), 0);
    vgpu_write(v, VGPU_RING_TAIL(e), 0);
    vgpu_write(v, VGPU_RING_CTL(e), ctl);
    r->tail = 0;
    r->free_head = 0;
    if (v->shared) v->shared[2 * e] = 0;
    uint32_t start = vgpu_read(v, VGPU_RING_START(e)), ctl2 = vgpu_read(v, VGPU_RING_CTL(e));
    if (start != (uint32_t)r->gm || ctl2 != ctl) {
        mv_printf("vgpu: %s ring registers read back START 0x%08x CTL 0x%08x, programmed 0x%08x 0x%08x\n",
                  e ? "BCS" : "RCS", start, ctl2, (uint32_t)r->gm, ctl);
        v->warnings++;
        return -1;
    }
    r->ready = 1;
    return 0;
}

int vgpu_ring_init(struct vgpu *v, int e, unsigned pages) {
    struct vgpu_ring *r = &v->ring[e];
    if (pages < 1 || pages > 512) return -1;
    uint64_t gm;
    if (!vgpu_gm_alloc_backed(v, VGPU_APERTURE, (uint64_t)pages * 4096, &gm)) return -1;
    if (gm >> 32) {
        mv_puts("vgpu: ring GM above 4 GiB");
        return -1;
    }
    r->gm = gm;
    r->pages = pages;
    r->bytes = pages * 4096;
    r->cpu = vgpu_aperture(v, gm);
    r->fence_gm = v->fence_page_gm + 64 * (unsigned)e;
    r->fence = v->fence_page + 16 * e;
    *r->fence = 0;
    r->seq = 0;
    return vgpu_ring_program(v, e);
}

int vgpu_wait_poll(struct vgpu *v, int e, uint32_t seq, uint64_t ticks) {
    uint64_t deadline = mv_deadline(ticks);
    while (!vgpu_seq_done(v, e, seq)) {
        if (mv_expired(deadline)) return -1;
        cpu_relax();
    }
    return 0;
}

int vgpu_ring_idle(struct vgpu *v, int e, uint64_t ticks) {
    struct vgpu_ring *r = &v->ring[e];
    if (r->seq && vgpu_wait_poll(v, e, r->seq, ticks) != 0) return -1;
    r->free_head = r->tail;
    return 0;
}

/* Room for n dwords at the tail; waits for the engine when the ring is full. */
static int ring_reserve(struct vgpu *v, int e, uint32_t n) {
    struct vgpu_ring *r = &v->ring[e];
    if (!r->ready) return -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        uint32_t used = (r->tail - r->free_head + r->bytes) % r->bytes;
        uint32_t space = r->bytes - 8 - used;
        if (n * 4 <= space) return 0;
        if (attempt == 0 && vgpu_ring_idle(v, e, VGPU_WAIT_TICKS) != 0) {
            mv_printf("vgpu: %s ring full and the engine does not finish (fence %u, last seq %u)\n",
                      e ? "BCS" : "RCS", vgpu_fence(v, e), r->seq);
            return -1;
        }
    }
    mv_printf("vgpu: %u dwords do not fit in the %u-byte ring\n", n, r->bytes);
    return -1;
}

static void ring_write(struct vgpu_ring *r, const uint32_t *dw, uint32_t n) {
    uint32_t size = r->bytes / 4, t = r->tail / 4;
    for (uint32_t i = 0; i < n; i++) {
        r->cpu[t] = dw[i];
        if (++t == size) t = 0;
    }
    r->tail = t * 4;
}

int vgpu_ring_emit(struct vgpu *v, int e, const uint32_t *dw, uint32_t n) {
    if (ring_reserve(v, e, n) != 0) return -1;
    ring_write(&v->ring[e], dw, n);
    return 0;
}

void vgpu_ring_kick_tail(struct vgpu *v, int e) {
    barrier();
    vgpu_write(v, VGPU_RING_TAIL(e), v->ring[e].tail);
}

void vgpu_ring_kick_pv(struct vgpu *v, int e) {
    barrier();
    v->shared[2 * e] = v->ring[e].tail;
    barrier();
    vgpu_write(v, VGPU_PV_DOORBELL(e), 1);
}

void vgpu_ring_kick(struct vgpu *v, int e) {
    if (v->doorbell == VGPU_DOORBELL_PV && v->shared)
        vgpu_ring_kick_pv(v, e);
    else
        vgpu_ring_kick_tail(v, e);
}

uint32_t vgpu_submit(struct vgpu *v, int e, const uint32_t *dw, uint32_t n, unsigned flags) {
    struct vgpu_ring *r = &v->ring[e];
    uint32_t seq = r->seq + 1;
    if (seq == 0) seq = 1;
    uint32_t tailcmd[6];
    struct vgpu_cmds c;
    vgpu_cmds_init(&c, tailcmd, 6);
    vgpu_flush(&c, 1, r->fence_gm, seq, (flags & VGPU_NOTIFY) != 0);
    if ((n + c.len) & 1) vgpu_noop(&c);
    if (ring_reserve(v, e, n + c.len) != 0) return 0;
    ring_write(r, dw, n);
    ring_write(r, c.dw, c.len);
    r->seq = seq;
    vgpu_ring_kick(v, e);
    return seq;
}

uint32_t vgpu_submit_batch(struct vgpu *v, int e, uint64_t batch_gm, uint32_t bytes, unsigned flags) {
    uint32_t buf[4];
    struct vgpu_cmds c;
    vgpu_cmds_init(&c, buf, 4);
    vgpu_bb_start(&c, batch_gm, bytes, 0);
    return vgpu_submit(v, e, c.dw, c.len, flags);
}

/* ---------------------------------------------------------------- interrupts */

static struct vgpu *irq_dev;

static void vgpu_isr(struct mv_regs *regs) {
    (void)regs;
    struct vgpu *v = irq_dev;
    uint32_t iir = vgpu_read(v, VGPU_REG_IIR);
    if (iir) {
        vgpu_write(v, VGPU_REG_IIR, iir);
        v->irq_pending |= iir;
        v->irq_seen |= iir;
        for (uint32_t b = iir; b; b &= b - 1)
            v->irq_bit_count[__builtin_ctz(b)]++;
    } else {
        v->irq_spurious++;
    }
    v->irq_count++;
    lapic_write(LAPIC_EOI, 0);
}

static void timer_isr(struct mv_regs *regs) {
    (void)regs;
    if (irq_dev) irq_dev->timer_ticks++;
    lapic_write(LAPIC_EOI, 0);
}

static void spurious_isr(struct mv_regs *regs) { (void)regs; }   /* no EOI for the spurious vector */

static void timer_start(void) {
    lapic_write(LAPIC_TIMER_DIV, 0x3);                          /* divide by 16 */
    lapic_write(LAPIC_LVT_TIMER, VGPU_TIMER_VECTOR | (1u << 17));  /* periodic */
    lapic_write(LAPIC_TIMER_INIT, LAPIC_TIMER_COUNT);
}

static void timer_stop(void) {
    lapic_write(LAPIC_LVT_TIMER, VGPU_TIMER_VECTOR | (1u << 16));  /* masked */
    lapic_write(LAPIC_TIMER_INIT, 0);
}

void vgpu_irq_set_mask(struct vgpu *v, uint32_t mask) {
    v->irq_mask = mask;
    vgpu_write(v, VGPU_REG_IMR, ~mask);
    vgpu_write(v, VGPU_REG_IER, mask);
}

int vgpu_irq_setup(struct vgpu *v, unsigned vector, uint32_t mask) {
    irq_dev = v;
    v->vector = vector & 0xff;
    v->apic_id = mv_apic_id();
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_SVR, 0x100 | LAPIC_SPURIOUS_VECTOR);        /* software-enable the LAPIC */
    mv_set_handler(LAPIC_SPURIOUS_VECTOR, spurious_isr);
    mv_set_handler(VGPU_TIMER_VECTOR, timer_isr);
    mv_set_handler(v->vector, vgpu_isr);
    timer_stop();

    unsigned cap = vgpu_cfg_find_cap(v, 0x05);
    if (!cap) {
        mv_puts("vgpu: no MSI capability in PCI config space");
        return -1;
    }
    v->msi_cap = cap;
    uint16_t ctl = vgpu_cfg_read16(v, cap + 2);
    int is64 = (ctl & 0x80) != 0;
    if (!is64) warn(v, "MSI message control (64-bit address capable)", ctl, ctl | 0x80);
    uint32_t addr = 0xFEE00000u | v->apic_id << 12;
    vgpu_cfg_write16(v, cap + 2, (uint16_t)(ctl & ~0x71));         /* disabled while programming */
    vgpu_cfg_write32(v, cap + 4, addr);
    if (is64) {
        vgpu_cfg_write32(v, cap + 8, 0);
        vgpu_cfg_write16(v, cap + 12, (uint16_t)v->vector);
    } else {
        vgpu_cfg_write16(v, cap + 8, (uint16_t)v->vector);
    }
    vgpu_cfg_write16(v, cap + 2, (uint16_t)((ctl & ~0x70) | 1));   /* enable, one vector */
    uint32_t a2 = vgpu_cfg_read32(v, cap + 4);
    uint16_t d2 = vgpu_cfg_read16(v, cap + (is64 ? 12 : 8)), c2 = vgpu_cfg_read16(v, cap + 2);
    if (a2 != addr) warn(v, "MSI address read back", a2, addr);
    if (d2 != v->vector) warn(v, "MSI data read back", d2, v->vector);
    if (!(c2 & 1)) warn(v, "MSI enable read back", c2, c2 | 1);
    uint16_t cmd = vgpu_cfg_read16(v, PCI_CFG_COMMAND);
    vgpu_cfg_write16(v, PCI_CFG_COMMAND, (uint16_t)(cmd | PCI_CMD_INTX_DISABLE));

    vgpu_write(v, VGPU_REG_IER, 0);
    vgpu_write(v, VGPU_REG_IIR, 0xffffffffu);                      /* drop anything stale */
    v->irq_pending = 0;
    vgpu_irq_set_mask(v, mask);
    return 0;
}

void vgpu_irq_forget(struct vgpu *v, uint32_t mask) {
    cli();
    v->irq_pending &= ~mask;
}

uint32_t vgpu_irq_wait(struct vgpu *v, uint32_t mask, uint64_t ticks) {
    uint64_t deadline = mv_deadline(ticks);
    uint32_t got = 0;
    timer_start();
    for (;;) {
        cli();
        got = v->irq_pending & mask;
        if (got) {
            v->irq_pending &= ~got;
            break;
        }
        if (mv_expired(deadline)) break;
        __asm__ volatile("sti; hlt" ::: "memory");
    }
    cli();
    timer_stop();
    return got;
}

int vgpu_wait_irq(struct vgpu *v, int e, uint32_t seq, uint64_t ticks) {
    struct vgpu_ring *r = &v->ring[e];
    uint32_t bad = VGPU_IRQ_REJECT(e) | VGPU_IRQ_ERROR(e);
    unsigned user_bit = e ? 8 : 0;
    uint64_t deadline = mv_deadline(ticks);
    int rc;
    timer_start();
    for (;;) {
        cli();
        int done = vgpu_seq_done(v, e, seq);
        uint32_t users = v->irq_bit_count[user_bit];
        if (done && users != r->user_irqs_seen) {
            r->user_irqs_seen = users;
            v->irq_pending &= ~VGPU_IRQ_USER(e);
            rc = 0;
            break;
        }
        if (v->irq_pending & bad) { rc = -2; break; }
        if (mv_expired(deadline)) { rc = done ? -3 : -1; break; }
        __asm__ volatile("sti; hlt" ::: "memory");
    }
    cli();
    timer_stop();
    return rc;
}

/* ---------------------------------------------------------------- display */

void vgpu_display_set(struct vgpu *v, uint64_t surface_gm, unsigned width, unsigned height, uint32_t stride) {
    /* The pipe first: with it on, the PRI_SURF write arms a flip that the next vblank completes (while the
     * pipe is off, a flip completes at once, docs/vgpu.md section 4). */
    vgpu_write(v, VGPU_REG_PIPE_CONF, VGPU_PIPE_ENABLE);
    vgpu_write(v, VGPU_REG_PRI_CTL, VGPU_PRI_CTL_VALUE(1));
    vgpu_write(v, VGPU_REG_PRI_STRIDE, stride);
    vgpu_write(v, VGPU_REG_PRI_SIZE, (height & 0xffff) << 16 | (width & 0xffff));
    vgpu_write(v, VGPU_REG_PRI_SURF, (uint32_t)surface_gm);
}

void vgpu_display_off(struct vgpu *v) {
    vgpu_write(v, VGPU_REG_PRI_CTL, VGPU_PRI_CTL_VALUE(0));
    vgpu_write(v, VGPU_REG_PIPE_CONF, 0);
}

/* ---------------------------------------------------------------- errors */

void vgpu_err_read(const struct vgpu *v, struct vgpu_err *e) {
    e->status = vgpu_read(v, VGPU_ERR_STATUS);
    e->engine = vgpu_read(v, VGPU_ERR_ENGINE);
    e->reason = vgpu_read(v, VGPU_ERR_REASON);
    e->opcode = vgpu_read(v, VGPU_ERR_OPCODE);
    e->cmd_gm = vgpu_read64(v, VGPU_ERR_CMD_GM);
    e->level = vgpu_read(v, VGPU_ERR_LEVEL);
    e->operand = vgpu_read64(v, VGPU_ERR_OPERAND);
    e->count = vgpu_read(v, VGPU_ERR_COUNT);
}

void vgpu_err_print(const struct vgpu *v, const struct vgpu_err *e) {
    (void)v;
    mv_printf("vgpu: ERR_STATUS 0x%x ERR_ENGINE %u (%s) ERR_REASON %u (%s) ERR_OPCODE 0x%08x ERR_CMD_GM 0x%lx "
              "ERR_LEVEL %u ERR_OPERAND 0x%lx ERR_COUNT %u\n",
              e->status, e->engine, e->engine == 0 ? "RCS" : e->engine == 1 ? "BCS" : "?", e->reason,
              vgpu_reason_name(e->reason), e->opcode, e->cmd_gm, e->level, e->operand, e->count);
}

void vgpu_err_clear(const struct vgpu *v) { vgpu_write(v, VGPU_ERR_STATUS, 1); }

int vgpu_engine_recover(struct vgpu *v, int e) {
    struct vgpu_ring *r = &v->ring[e];
    vgpu_write(v, VGPU_RESET(e), 1);
    uint64_t deadline = mv_deadline(MV_TIMEOUT_TICKS);
    while (vgpu_read(v, VGPU_STATUS(e)) & VGPU_STATUS_ERROR) {
        if (mv_expired(deadline)) {
            mv_printf("vgpu: %s STATUS still shows an error after RESET\n", e ? "BCS" : "RCS");
            return -1;
        }
        cpu_relax();
    }
    vgpu_err_clear(v);
    vgpu_write(v, VGPU_REG_IIR, VGPU_IRQ_REJECT(e) | VGPU_IRQ_ERROR(e));
    if (cpl() == 0) vgpu_irq_forget(v, VGPU_IRQ_REJECT(e) | VGPU_IRQ_ERROR(e));
    r->seq = *r->fence;        /* rejected submissions never complete; continue after what did */
    return vgpu_ring_program(v, e);
}

int vgpu_hang_recover(struct vgpu *v) {
    vgpu_write(v, VGPU_REG_IIR, VGPU_IRQ_RCS_HANG | VGPU_IRQ_BCS_HANG);
    if (cpl() == 0) vgpu_irq_forget(v, VGPU_IRQ_RCS_HANG | VGPU_IRQ_BCS_HANG);
    vgpu_write(v, VGPU_ERR_STATUS, VGPU_ERR_STATUS_HANG);
    for (int e = 0; e < 2; e++) {
        struct vgpu_ring *r = &v->ring[e];
        if (!r->ready) continue;
        r->seq = *r->fence;        /* dropped submissions never complete; continue after what did */
        if (vgpu_ring_program(v, e) != 0) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- misc */

static void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

uint64_t vgpu_tsc_khz(void) {
    uint32_t a, b, c, d;
    cpuid(0x40000000, &a, &b, &c, &d);
    if (a >= 0x40000010 && a < 0x40000100) {
        uint32_t k, x;
        cpuid(0x40000010, &k, &x, &c, &d);
        if (k) return k;
    }
    cpuid(0, &a, &b, &c, &d);
    uint32_t max = a;
    if (max >= 0x15) {
        cpuid(0x15, &a, &b, &c, &d);
        if (a && b && c) return (uint64_t)c * b / a / 1000;
    }
    if (max >= 0x16) {
        cpuid(0x16, &a, &b, &c, &d);
        if (a & 0xffff) return (uint64_t)(a & 0xffff) * 1000;
    }
    return 0;
}
