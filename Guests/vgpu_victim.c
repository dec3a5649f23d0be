/*
 * vgpu_victim: the victim of the isolation test. It keeps a known pattern in graphics memory (an aperture
 * buffer read through BAR2 and a hidden buffer read through its guest RAM) and, round after round, renders
 * (COLOR_BLT on BCS into a framebuffer it scans out) and computes (SAXPY on RCS), checking after every
 * round that the pattern, the rendered pixels and the computed vector are exactly what it made them.
 * It stops after "rounds=N" rounds (default 1000000) or when a byte arrives on its serial port, whichever
 * comes first, and prints "vgpu victim ok: R rounds" only if every check held. Heavy checks run in ring 3.
 */
#include "vgpu/vgpu.h"

#define PAT_AP_BYTES (256u << 10)
#define PAT_HID_BYTES (1u << 20)
#define W 256
#define H 128
#define PITCH (W * 4)
#define NS 4096u
#define SAXPY_A 0x40000000u          /* 2.0f */

static struct vgpu gpu;
static unsigned failures;
#define FAIL(...) do { mv_printf("vgpu victim FAIL: " __VA_ARGS__); failures++; } while (0)

static uint32_t pattern(uint64_t i, uint32_t seed) {
    uint32_t x = (uint32_t)i * 2654435761u ^ seed;
    x ^= x >> 15;
    return x * 0x2c1b3c6du;
}

struct job {
    volatile uint32_t *ap;       /* through BAR2 */
    volatile uint32_t *hid;      /* through guest RAM */
    volatile uint32_t *fb;       /* through BAR2 */
    uint32_t *x, *y, *y_ref;     /* hidden (guest RAM) and plain RAM */
    uint32_t seed, color;
    uint64_t bad, first;
    int which;                   /* 0: pattern, 1: frame, 2: saxpy */
};

static uint64_t fill_user(uint64_t arg) {
    struct job *j = (struct job *)(uintptr_t)arg;
    for (uint64_t i = 0; i < PAT_AP_BYTES / 4; i++) j->ap[i] = pattern(i, j->seed);
    for (uint64_t i = 0; i < PAT_HID_BYTES / 4; i++) j->hid[i] = pattern(i + (1u << 24), j->seed);
    vgpu_fp_fill(j->x, NS, 7, 3, 97, VGPU_F32_0_5);
    return 0;
}

static uint64_t check_user(uint64_t arg) {
    struct job *j = (struct job *)(uintptr_t)arg;
    j->bad = 0;
    for (uint64_t i = 0; i < PAT_AP_BYTES / 4; i++)
        if (j->ap[i] != pattern(i, j->seed) && j->bad++ == 0) { j->first = i; j->which = 0; }
    for (uint64_t i = 0; i < PAT_HID_BYTES / 4; i++)
        if (j->hid[i] != pattern(i + (1u << 24), j->seed) && j->bad++ == 0) { j->first = PAT_AP_BYTES / 4 + i; j->which = 0; }
    for (uint64_t i = 0; i < (uint64_t)W * H; i++)
        if (j->fb[i] != j->color && j->bad++ == 0) { j->first = i; j->which = 1; }
    uint64_t f = 0;
    uint64_t b = vgpu_fp_compare(j->y, j->y_ref, NS, 0, 0, &f);
    if (b && j->bad == 0) { j->first = f; j->which = 2; }
    j->bad += b;
    return j->bad;
}

/* Ring 3: y = initial values; the reference after one SAXPY. */
static uint64_t saxpy_prep_user(uint64_t arg) {
    struct job *j = (struct job *)(uintptr_t)arg;
    vgpu_fp_fill(j->y, NS, 13, 5, 89, VGPU_F32_0_5);
    for (uint64_t i = 0; i < NS; i++) j->y_ref[i] = j->y[i];
    vgpu_fp_saxpy_ref(j->y_ref, j->x, NS, SAXPY_A);
    return 0;
}

static int serial_has_input(void) { return inb(0x3f8 + 5) & 1; }

int main(const struct mv_boot_info *bi) {
    size_t n = 0;
    const char *cl = (const char *)(uintptr_t)bi->cmdline_addr;
    const char *v = mv_cmdline_value(cl, bi->cmdline_len, "rounds", &n);
    int ok = 1;
    uint64_t rounds = v ? mv_parse_u64(v, n, &ok) : 1000000;
    v = mv_cmdline_value(cl, bi->cmdline_len, "seed", &n);
    uint32_t seed = v ? (uint32_t)mv_parse_u64(v, n, &ok) : 0x5eed;
    if (vgpu_init(&gpu, bi) != 0 || vgpu_irq_setup(&gpu, VGPU_VECTOR, VGPU_IRQ_DEFAULT) != 0 ||
        vgpu_ring_init(&gpu, VGPU_RCS, 16) != 0 || vgpu_ring_init(&gpu, VGPU_BCS, 16) != 0) {
        mv_puts("vgpu victim FAIL: no usable vGPU");
        return 1;
    }
    struct job j = { 0 };
    uint64_t ap_gm, hid_gm, fb_gm, x_gm, y_gm;
    j.hid = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, PAT_HID_BYTES, &hid_gm);
    j.x = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, 4 * NS, &x_gm);
    j.y = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, 4 * NS, &y_gm);
    j.y_ref = mv_alloc(4 * NS, 64);
    void *ap_ram = vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, PAT_AP_BYTES, &ap_gm);
    void *fb_ram = vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, (uint64_t)PITCH * H, &fb_gm);
    if (!j.hid || !j.x || !j.y || !j.y_ref || !ap_ram || !fb_ram) {
        mv_puts("vgpu victim FAIL: out of graphics memory or RAM");
        return 1;
    }
    j.ap = vgpu_aperture(&gpu, ap_gm);
    j.fb = vgpu_aperture(&gpu, fb_gm);
    j.seed = seed;
    mv_printf("victim: pattern in aperture GM [0x%lx, +0x%x) and hidden GM [0x%lx, +0x%x); framebuffer GM 0x%lx\n",
              ap_gm, PAT_AP_BYTES, hid_gm, PAT_HID_BYTES, fb_gm);
    mv_run_user(fill_user, (uint64_t)(uintptr_t)&j);
    struct vgpu_surface surf = { fb_gm, PITCH, W, H };
    vgpu_display_set(&gpu, fb_gm, W, H, PITCH);

    uint64_t r;
    for (r = 0; r < rounds && !serial_has_input() && !failures; r++) {
        uint32_t buf[32];
        struct vgpu_cmds c;
        j.color = pattern(r, seed ^ 0xc0105) & 0xffffff;
        vgpu_cmds_init(&c, buf, MV_ARRAY_SIZE(buf));
        vgpu_color_blt(&c, &surf, 0, 0, W, H, j.color);
        uint32_t seq = vgpu_submit(&gpu, VGPU_BCS, c.dw, c.len, VGPU_NOTIFY);
        if (!seq || vgpu_wait_irq(&gpu, VGPU_BCS, seq, VGPU_WAIT_TICKS) != 0) { FAIL("round %lu: render did not complete\n", r); break; }
        mv_run_user(saxpy_prep_user, (uint64_t)(uintptr_t)&j);
        vgpu_cmds_init(&c, buf, MV_ARRAY_SIZE(buf));
        vgpu_saxpy(&c, NS, SAXPY_A, x_gm, y_gm);
        seq = vgpu_submit(&gpu, VGPU_RCS, c.dw, c.len, VGPU_NOTIFY);
        if (!seq || vgpu_wait_irq(&gpu, VGPU_RCS, seq, VGPU_WAIT_TICKS) != 0) { FAIL("round %lu: compute did not complete\n", r); break; }
        if (mv_run_user(check_user, (uint64_t)(uintptr_t)&j)) {
            static const char *what[] = { "pattern", "rendered frame", "SAXPY result" };
            FAIL("round %lu: %lu words differ; first: %s word %lu\n", r, j.bad, what[j.which], j.first);
        }
        uint32_t es = vgpu_read(&gpu, VGPU_ERR_STATUS);
        if (es & 1) FAIL("round %lu: ERR_STATUS 0x%x after valid submissions\n", r, es);
    }
    if (serial_has_input()) (void)inb(0x3f8);
    vgpu_screenshot();
    if (failures) {
        mv_printf("vgpu victim FAIL: %u check(s) failed after %lu rounds\n", failures, r);
        return 1;
    }
    mv_printf("vgpu victim ok: %lu rounds, pattern, frames and results intact\n", r);
    return 0;
}
