/*
 * vgpu_fill: a 640x480 XRGB8888 framebuffer in the vGPU's aperture. BCS clears it blue (COLOR_BLT in
 * the ring, PV doorbell), then a batch (TAIL doorbell) fills coloured rectangles, two of them partly off
 * the surface (clipping, including negative coordinates), and copies one region with SRC_COPY_BLT.
 * Ring 3 compares every pixel, read through BAR2, with a software model. Then the primary plane scans the
 * framebuffer out and the guest asks the VMM for a screenshot (port 0xf5; minivisor run --screenshot
 * PATH). Prints four sample pixels as "vgpu fill pixel X Y 0xRRGGBB" and "vgpu fill ok".
 * "tint=RRGGBB" (hex) on the command line XORs every colour with it, so VMs sharing a GPU draw different
 * pictures.
 */
#include "vgpu/vgpu.h"

#define W 640
#define H 480
#define PITCH (W * 4)

static struct vgpu gpu;

enum { FILL, COPY };
struct op {
    int kind;
    int x1, y1, x2, y2;
    uint32_t color;
    int sx, sy;
};

static struct op ops[] = {
    { FILL, 0, 0, W, H, 0x000000ff, 0, 0 },            /* clear: blue (sent in the ring) */
    { FILL, 40, 40, 240, 200, 0x00ff0000, 0, 0 },      /* red */
    { FILL, 300, 100, 500, 300, 0x0000ff00, 0, 0 },    /* green */
    { FILL, 560, 380, 700, 560, 0x00ffff00, 0, 0 },    /* yellow, runs off the right and bottom edges */
    { FILL, -50, -30, 30, 20, 0x00ff00ff, 0, 0 },      /* magenta, negative x1/y1: clipped at the top left */
    { COPY, 100, 300, 200, 400, 0, 200, 160 },         /* red/blue corner copied down-left */
};

static const struct { int x, y; } samples[4] = { { 620, 20 }, { 5, 5 }, { 630, 470 }, { 110, 310 } };

static int failures;

#define FAIL(...) do { mv_printf("vgpu fill FAIL: " __VA_ARGS__); failures++; } while (0)

static int imax(int a, int b) { return a > b ? a : b; }
static int imin(int a, int b) { return a < b ? a : b; }

/* Software model of the blits (docs/softgpu.md 6.2: clipping, copy only where source and destination
 * are inside their surfaces). Ring 3. */
static void model(uint32_t *img) {
    for (unsigned i = 0; i < MV_ARRAY_SIZE(ops); i++) {
        const struct op *o = &ops[i];
        int x1 = imax(o->x1, 0), y1 = imax(o->y1, 0), x2 = imin(o->x2, W), y2 = imin(o->y2, H);
        for (int y = y1; y < y2; y++)
            for (int x = x1; x < x2; x++) {
                if (o->kind == FILL) {
                    img[y * W + x] = o->color;
                } else {
                    int sx = o->sx + x - o->x1, sy = o->sy + y - o->y1;
                    if (sx >= 0 && sx < W && sy >= 0 && sy < H) img[y * W + x] = img[sy * W + sx];
                }
            }
    }
}

struct check_job {
    uint32_t *model;
    volatile uint32_t *fb;       /* through BAR2 */
    uint64_t bad, first;
    uint32_t got, want;
};

static uint64_t check_user(uint64_t arg) {
    struct check_job *j = (struct check_job *)(uintptr_t)arg;
    model(j->model);
    j->bad = 0;
    for (uint64_t i = 0; i < (uint64_t)W * H; i++) {
        uint32_t g = j->fb[i];
        if (g != j->model[i]) {
            if (j->bad++ == 0) {
                j->first = i;
                j->got = g;
                j->want = j->model[i];
            }
        }
    }
    return j->bad;
}

static void encode(struct vgpu_cmds *c, const struct vgpu_surface *s, const struct op *o) {
    if (o->kind == FILL)
        vgpu_color_blt(c, s, o->x1, o->y1, o->x2, o->y2, o->color);
    else
        vgpu_src_copy_blt(c, s, o->x1, o->y1, o->x2, o->y2, s, o->sx, o->sy);
}

static int wait(int e, uint32_t seq, const char *what) {
    int rc = vgpu_wait_irq(&gpu, e, seq, VGPU_WAIT_TICKS);
    if (rc != 0) {
        FAIL("%s: wait for seq %u returned %d (fence %u, irq seen 0x%x, ISR 0x%x, STATUS 0x%x)\n", what, seq, rc,
             vgpu_fence(&gpu, e), gpu.irq_seen, vgpu_read(&gpu, VGPU_REG_ISR), vgpu_read(&gpu, VGPU_STATUS(e)));
        struct vgpu_err er;
        vgpu_err_read(&gpu, &er);
        vgpu_err_print(&gpu, &er);
    }
    return rc;
}

static uint32_t hex(const char *s, size_t n) {
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        uint32_t d = c >= '0' && c <= '9' ? (uint32_t)(c - '0') : c >= 'a' && c <= 'f' ? (uint32_t)(c - 'a' + 10)
                   : c >= 'A' && c <= 'F' ? (uint32_t)(c - 'A' + 10) : 0;
        v = v << 4 | d;
    }
    return v;
}

int main(const struct mv_boot_info *bi) {
    size_t tn = 0;
    const char *t = mv_cmdline_value((const char *)(uintptr_t)bi->cmdline_addr, bi->cmdline_len, "tint", &tn);
    uint32_t tint = t ? hex(t, tn) & 0xffffff : 0;
    for (unsigned i = 0; i < MV_ARRAY_SIZE(ops); i++) ops[i].color ^= tint;
    if (tint) mv_printf("tint 0x%06x\n", tint);
    if (vgpu_init(&gpu, bi) != 0) {
        mv_puts("vgpu fill FAIL: no usable vGPU");
        return 1;
    }
    if (vgpu_irq_setup(&gpu, VGPU_VECTOR, VGPU_IRQ_DEFAULT) != 0 || vgpu_ring_init(&gpu, VGPU_BCS, 16) != 0) {
        mv_puts("vgpu fill FAIL: interrupt or ring set-up");
        return 1;
    }

    uint64_t fb_gm, batch_gm;
    if (!vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, (uint64_t)PITCH * H, &fb_gm) ||
        !vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, 4096, &batch_gm)) {
        mv_puts("vgpu fill FAIL: out of aperture or RAM");
        return 1;
    }
    struct vgpu_surface surf = { fb_gm, PITCH, W, H };
    mv_printf("framebuffer %ux%u at GM 0x%lx (BAR2 0x%lx), batch at GM 0x%lx\n", W, H, fb_gm,
              (uint64_t)(uintptr_t)vgpu_aperture(&gpu, fb_gm), batch_gm);

    /* 1. Clear: COLOR_BLT straight in the BCS ring, PV doorbell, wait for the user interrupt. */
    uint32_t buf[16];
    struct vgpu_cmds c;
    vgpu_cmds_init(&c, buf, MV_ARRAY_SIZE(buf));
    encode(&c, &surf, &ops[0]);
    gpu.doorbell = VGPU_DOORBELL_PV;
    uint32_t seq = vgpu_submit(&gpu, VGPU_BCS, c.dw, c.len, VGPU_NOTIFY);
    if (!seq || wait(VGPU_BCS, seq, "clear (ring, PV doorbell)") != 0) return 1;
    mv_printf("clear done: seq %u by interrupt (PV doorbell)\n", seq);

    /* 2. The rest as a first-level batch written through BAR2; trapped TAIL doorbell. */
    struct vgpu_cmds b;
    vgpu_cmds_init(&b, vgpu_aperture(&gpu, batch_gm), 1024);
    b.gm = batch_gm;
    for (unsigned i = 1; i < MV_ARRAY_SIZE(ops); i++) encode(&b, &surf, &ops[i]);
    vgpu_bb_end(&b);
    if (b.overflow) { mv_puts("vgpu fill FAIL: batch overflow"); return 1; }
    gpu.doorbell = VGPU_DOORBELL_TAIL;
    seq = vgpu_submit_batch(&gpu, VGPU_BCS, batch_gm, vgpu_cmds_bytes(&b), VGPU_NOTIFY);
    if (!seq || wait(VGPU_BCS, seq, "rectangles + copy (batch, TAIL doorbell)") != 0) return 1;
    mv_printf("batch of %u commands (%u bytes) done: seq %u by interrupt (TAIL doorbell)\n",
              (unsigned)MV_ARRAY_SIZE(ops), vgpu_cmds_bytes(&b), seq);
    uint32_t err = vgpu_read(&gpu, VGPU_ERR_STATUS);
    if (err & 1) FAIL("ERR_STATUS 0x%x after valid submissions\n", err);

    /* 3. Every pixel, in ring 3, through the aperture. */
    uint32_t *img = mv_alloc((uint64_t)W * H * 4, 4096);
    if (!img) { mv_puts("vgpu fill FAIL: no RAM for the model"); return 1; }
    struct check_job job = { img, vgpu_aperture(&gpu, fb_gm), 0, 0, 0, 0 };
    uint64_t bad = mv_run_user(check_user, (uint64_t)(uintptr_t)&job);
    if (bad) {
        FAIL("%lu of %u pixels differ from the model; first at (%lu, %lu): 0x%08x, expected 0x%08x\n", bad, W * H,
             job.first % W, job.first / W, job.got, job.want);
    } else {
        mv_printf("all %u pixels match the model (read through BAR2 in ring 3)\n", W * H);
    }

    /* 4. Scan it out and ask for a screenshot. */
    uint32_t faults0 = vgpu_read(&gpu, VGPU_REG_DISPLAY_FAULTS);
    vgpu_display_set(&gpu, fb_gm, W, H, PITCH);
    uint32_t ctl = vgpu_read(&gpu, VGPU_REG_PRI_CTL), stride = vgpu_read(&gpu, VGPU_REG_PRI_STRIDE);
    uint32_t size = vgpu_read(&gpu, VGPU_REG_PRI_SIZE), surf_reg = vgpu_read(&gpu, VGPU_REG_PRI_SURF);
    uint32_t pipe = vgpu_read(&gpu, VGPU_REG_PIPE_CONF);
    if (ctl != VGPU_PRI_CTL_VALUE(1) || stride != PITCH || size != ((uint32_t)H << 16 | W) ||
        surf_reg != (uint32_t)fb_gm || !(pipe & VGPU_PIPE_ENABLE))
        FAIL("display registers read back PRI_CTL 0x%08x PRI_STRIDE %u PRI_SIZE 0x%08x PRI_SURF 0x%08x "
             "PIPE_CONF 0x%08x\n", ctl, stride, size, surf_reg, pipe);
    vgpu_screenshot();
    uint32_t faults1 = vgpu_read(&gpu, VGPU_REG_DISPLAY_FAULTS);
    if (faults1 != faults0) FAIL("DISPLAY_FAULTS went from %u to %u during scanout\n", faults0, faults1);
    mv_puts("primary plane enabled; screenshot requested (port 0xf5)");

    for (unsigned i = 0; i < 4; i++)
        mv_printf("vgpu fill pixel %d %d 0x%06x\n", samples[i].x, samples[i].y,
                  img[samples[i].y * W + samples[i].x] & 0xffffff);
    if (gpu.warnings) mv_printf("note: %u spec deviation warning(s) from the driver (see above)\n", gpu.warnings);
    if (failures) {
        mv_printf("vgpu fill FAIL: %d check(s) failed\n", failures);
        return 1;
    }
    mv_puts("vgpu fill ok");
    return 0;
}
