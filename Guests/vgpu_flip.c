/*
 * vgpu_flip: two 640x480 framebuffers in the aperture, filled with different colours by BCS. The primary
 * plane starts on A; the PRI_SURF write by MMIO arms a flip that the next vblank completes (softgpu.md
 * 4.4 and 7), and with PIPE_CONF on, VBLANK_COUNT must advance on its own (60 Hz). Then DISPLAY_FLIP
 * commands, alternately from RCS and BCS, flip between B and A eight times. Each flip must raise the
 * flip-done interrupt (bit 17, through MSI), advance FLIP_COUNT and leave PRI_SURF/PRI_STRIDE on the new
 * surface. Ends with a screenshot of the final surface and "vgpu flip ok".
 */
#include "vgpu/vgpu.h"

#define W 640
#define H 480
#define PITCH (W * 4)
#define FLIPS 8
#define COLOR_A 0x00ff8000u   /* orange */
#define COLOR_B 0x000080ffu   /* azure */

static struct vgpu gpu;
static int failures;

#define FAIL(...) do { mv_printf("vgpu flip FAIL: " __VA_ARGS__); failures++; } while (0)

struct check_job { volatile uint32_t *fb; uint32_t color; uint64_t bad; };

static uint64_t check_user(uint64_t arg) {
    struct check_job *j = (struct check_job *)(uintptr_t)arg;
    j->bad = 0;
    for (uint64_t i = 0; i < (uint64_t)W * H; i++)
        if (j->fb[i] != j->color) j->bad++;
    return j->bad;
}

static int wait_flip(const char *what, uint32_t count_before, uint32_t surf, uint64_t *cycles, uint64_t ticks) {
    uint64_t t0 = rdtsc();
    uint32_t got = vgpu_irq_wait(&gpu, VGPU_IRQ_FLIP_DONE, ticks);
    *cycles = rdtsc() - t0;
    if (!(got & VGPU_IRQ_FLIP_DONE)) {
        FAIL("%s: no flip-done interrupt (IIR 0x%x ISR 0x%x FLIP_COUNT %u VBLANK_COUNT %u PIPE_CONF 0x%x, "
             "irqs seen 0x%x)\n", what, vgpu_read(&gpu, VGPU_REG_IIR), vgpu_read(&gpu, VGPU_REG_ISR),
             vgpu_read(&gpu, VGPU_REG_FLIP_COUNT), vgpu_read(&gpu, VGPU_REG_VBLANK_COUNT),
             vgpu_read(&gpu, VGPU_REG_PIPE_CONF), gpu.irq_seen);
        return -1;
    }
    uint32_t count = vgpu_read(&gpu, VGPU_REG_FLIP_COUNT);
    uint32_t s = vgpu_read(&gpu, VGPU_REG_PRI_SURF), st = vgpu_read(&gpu, VGPU_REG_PRI_STRIDE);
    if ((int32_t)(count - count_before) < 1) FAIL("%s: FLIP_COUNT %u, was %u\n", what, count, count_before);
    if (s != surf || st != PITCH)
        FAIL("%s: PRI_SURF 0x%x PRI_STRIDE %u after the flip, expected 0x%x %u\n", what, s, st, surf, PITCH);
    return 0;
}

int main(const struct mv_boot_info *bi) {
    if (vgpu_init(&gpu, bi) != 0) {
        mv_puts("vgpu flip FAIL: no usable vGPU");
        return 1;
    }
    if (vgpu_irq_setup(&gpu, VGPU_VECTOR, VGPU_IRQ_DEFAULT) != 0 || vgpu_ring_init(&gpu, VGPU_BCS, 8) != 0 ||
        vgpu_ring_init(&gpu, VGPU_RCS, 8) != 0) {
        mv_puts("vgpu flip FAIL: interrupt or ring set-up");
        return 1;
    }
    uint64_t fb[2];
    if (!vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, (uint64_t)PITCH * H, &fb[0]) ||
        !vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, (uint64_t)PITCH * H, &fb[1])) {
        mv_puts("vgpu flip FAIL: out of aperture or RAM");
        return 1;
    }
    const uint32_t colors[2] = { COLOR_A, COLOR_B };

    /* Fill both on BCS (one submission, two COLOR_BLTs). */
    uint32_t buf[32];
    struct vgpu_cmds c;
    vgpu_cmds_init(&c, buf, MV_ARRAY_SIZE(buf));
    for (int i = 0; i < 2; i++) {
        struct vgpu_surface s = { fb[i], PITCH, W, H };
        vgpu_color_blt(&c, &s, 0, 0, W, H, colors[i]);
    }
    uint32_t seq = vgpu_submit(&gpu, VGPU_BCS, c.dw, c.len, VGPU_NOTIFY);
    int rc = seq ? vgpu_wait_irq(&gpu, VGPU_BCS, seq, VGPU_WAIT_TICKS) : -9;
    if (rc != 0) {
        mv_printf("vgpu flip FAIL: fills did not complete (%d)\n", rc);
        struct vgpu_err er;
        vgpu_err_read(&gpu, &er);
        vgpu_err_print(&gpu, &er);
        return 1;
    }
    for (int i = 0; i < 2; i++) {
        struct check_job j = { vgpu_aperture(&gpu, fb[i]), colors[i], 0 };
        if (mv_run_user(check_user, (uint64_t)(uintptr_t)&j))
            FAIL("framebuffer %c: %lu pixels are not 0x%06x\n", 'A' + i, j.bad, colors[i]);
    }
    mv_printf("framebuffers A (GM 0x%lx, 0x%06x) and B (GM 0x%lx, 0x%06x) filled\n", fb[0], COLOR_A, fb[1], COLOR_B);

    /* Start scanning out A: the PRI_SURF write arms a flip that completes at the next vblank. */
    vgpu_irq_forget(&gpu, VGPU_IRQ_FLIP_DONE);
    uint32_t count = vgpu_read(&gpu, VGPU_REG_FLIP_COUNT);
    uint32_t vbl_start = vgpu_read(&gpu, VGPU_REG_VBLANK_COUNT);
    uint64_t cyc;
    vgpu_display_set(&gpu, fb[0], W, H, PITCH);
    if (wait_flip("PRI_SURF write by MMIO (no submission since)", count, (uint32_t)fb[0], &cyc, MV_TIMEOUT_TICKS / 2) == 0)
        mv_printf("scanning out A; the MMIO flip completed after %lu cycles\n", cyc);
    uint32_t vbl_idle = vgpu_read(&gpu, VGPU_REG_VBLANK_COUNT) - vbl_start;
    if (vbl_idle == 0)
        FAIL("VBLANK_COUNT did not advance while PIPE_CONF was on and no submission was made (%lu cycles)\n", cyc);
    else
        mv_printf("%u vblanks while idle with the pipe on\n", vbl_idle);
    if (vgpu_read(&gpu, VGPU_REG_PRI_SURF) != (uint32_t)fb[0]) FAIL("PRI_SURF does not hold A\n");

    uint32_t flip_irqs0 = gpu.irq_bit_count[17];
    uint32_t vbl0 = vgpu_read(&gpu, VGPU_REG_VBLANK_COUNT);
    uint64_t total = 0;
    int cur = 0;
    for (int i = 0; i < FLIPS; i++) {
        int next = cur ^ 1, e = (i & 1) ? VGPU_BCS : VGPU_RCS;
        vgpu_irq_forget(&gpu, VGPU_IRQ_FLIP_DONE);
        count = vgpu_read(&gpu, VGPU_REG_FLIP_COUNT);
        vgpu_cmds_init(&c, buf, MV_ARRAY_SIZE(buf));
        vgpu_display_flip(&c, VGPU_PLANE_PRIMARY, fb[next], PITCH);
        seq = vgpu_submit(&gpu, e, c.dw, c.len, 0);
        char what[48];
        mv_snprintf(what, sizeof what, "flip %d to %c on %s", i + 1, 'A' + next, e ? "BCS" : "RCS");
        if (!seq || wait_flip(what, count, (uint32_t)fb[next], &cyc, VGPU_WAIT_TICKS) != 0) break;
        if (vgpu_wait_poll(&gpu, e, seq, VGPU_WAIT_TICKS) != 0) FAIL("%s: fence %u never reached\n", what, seq);
        total += cyc;
        mv_printf("%s: flip-done interrupt after %lu cycles, FLIP_COUNT %u\n", what, cyc,
                  vgpu_read(&gpu, VGPU_REG_FLIP_COUNT));
        cur = next;
    }
    uint32_t flip_irqs = gpu.irq_bit_count[17] - flip_irqs0;
    uint32_t vbl = vgpu_read(&gpu, VGPU_REG_VBLANK_COUNT) - vbl0;
    if (flip_irqs < FLIPS) FAIL("%u flip-done interrupts for %d flips\n", flip_irqs, FLIPS);
    mv_printf("%d flips, %u flip-done interrupts, %u vblanks meanwhile, average %lu cycles per flip\n", FLIPS,
              flip_irqs, vbl, total / FLIPS);

    vgpu_screenshot();
    mv_printf("vgpu flip pixel 320 240 0x%06x\n", colors[cur] & 0xffffff);
    uint32_t err = vgpu_read(&gpu, VGPU_ERR_STATUS);
    if (err & 1) FAIL("ERR_STATUS 0x%x after valid submissions\n", err);
    if (failures) {
        mv_printf("vgpu flip FAIL: %d check(s) failed\n", failures);
        return 1;
    }
    mv_puts("vgpu flip ok");
    return 0;
}
