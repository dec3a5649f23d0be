/*
 * vgpu_compute: SAXPY (n = 65536) and SGEMM (128x96x64, padded leading dimensions) on buffers in the
 * vGPU's hidden GM slice backed by guest RAM, run on RCS from one batch (PV doorbell), completion by the
 * FLUSH-notify interrupt. A second SGEMM with beta = 0 over a C full of NaNs must overwrite C without
 * reading it. Ring 3 fills the inputs, computes the references and compares with a tolerance (floats
 * only ever run in ring 3: vgpu/vgpu_fp.c). Prints "vgpu compute ok".
 */
#include "vgpu/vgpu.h"

#define NS (1u << 16)
#define M 128
#define N 96
#define K 64
#define LDA (K + 4)
#define LDB (N + 4)
#define LDC (N + 4)

#define F32_0_25 0x3e800000u
#define F32_NAN  0x7fc00000u
#define ABS_TOL  0x3a83126fu   /* 1e-3 */
#define REL_TOL  0x3727c5acu   /* 1e-5 */
#define SAXPY_A  VGPU_F32_2
#define ALPHA    VGPU_F32_1_5
#define BETA     VGPU_F32_0_5

static struct vgpu gpu;
static int failures;

#define FAIL(...) do { mv_printf("vgpu compute FAIL: " __VA_ARGS__); failures++; } while (0)

struct bufs {
    uint32_t *x, *y, *a, *b, *c, *c2;        /* hidden GM, through their guest RAM */
    uint32_t *y_ref, *c_ref, *c2_ref;        /* ordinary RAM */
    uint64_t bad_y, first_y, bad_c, first_c, bad_c2, first_c2;
    int64_t y_milli, c_milli;                /* y[1234] and C[5][7] * 1000, for the log */
};

static void copy32(uint32_t *d, const uint32_t *s, uint64_t n) { for (uint64_t i = 0; i < n; i++) d[i] = s[i]; }

/* Ring 3: inputs and references. */
static uint64_t prepare_user(uint64_t arg) {
    struct bufs *p = (struct bufs *)(uintptr_t)arg;
    vgpu_fp_fill(p->x, NS, 7, 3, 97, F32_0_25);
    vgpu_fp_fill(p->y, NS, 13, 5, 89, VGPU_F32_0_5);
    vgpu_fp_fill(p->a, (uint64_t)M * LDA, 5, 1, 11, VGPU_F32_0_5);
    vgpu_fp_fill(p->b, (uint64_t)K * LDB, 3, 2, 13, F32_0_25);
    vgpu_fp_fill(p->c, (uint64_t)M * LDC, 17, 0, 19, VGPU_F32_1);
    for (uint64_t i = 0; i < (uint64_t)M * LDC; i++) p->c2[i] = F32_NAN;
    copy32(p->y_ref, p->y, NS);
    copy32(p->c_ref, p->c, (uint64_t)M * LDC);
    copy32(p->c2_ref, p->c2, (uint64_t)M * LDC);
    vgpu_fp_saxpy_ref(p->y_ref, p->x, NS, SAXPY_A);
    vgpu_fp_sgemm_ref(M, N, K, ALPHA, BETA, p->a, LDA, p->b, LDB, p->c_ref, LDC);
    vgpu_fp_sgemm_ref(M, N, K, VGPU_F32_1, VGPU_F32_0, p->a, LDA, p->b, LDB, p->c2_ref, LDC);
    return 0;
}

/* Ring 3: compare (C including the padding columns, which the GPU must not touch). */
static uint64_t check_user(uint64_t arg) {
    struct bufs *p = (struct bufs *)(uintptr_t)arg;
    p->y_milli = vgpu_fp_milli(p->y[1234]);
    p->c_milli = vgpu_fp_milli(p->c[5 * LDC + 7]);
    p->bad_y = vgpu_fp_compare(p->y, p->y_ref, NS, ABS_TOL, REL_TOL, &p->first_y);
    p->bad_c = vgpu_fp_compare(p->c, p->c_ref, (uint64_t)M * LDC, ABS_TOL, REL_TOL, &p->first_c);
    /* c2 padding holds NaN in both: compare only the N columns of each row. */
    p->bad_c2 = 0;
    p->first_c2 = (uint64_t)M * LDC;
    for (uint32_t i = 0; i < M; i++) {
        uint64_t f;
        uint64_t bad = vgpu_fp_compare(p->c2 + (uint64_t)i * LDC, p->c2_ref + (uint64_t)i * LDC, N, ABS_TOL, REL_TOL, &f);
        if (bad && p->bad_c2 == 0) p->first_c2 = (uint64_t)i * LDC + f;
        p->bad_c2 += bad;
        for (uint32_t j = N; j < LDC; j++)
            if (p->c2[(uint64_t)i * LDC + j] != F32_NAN) p->bad_c2++;
    }
    return p->bad_y + p->bad_c + p->bad_c2;
}

static void *hidden(uint64_t bytes, uint64_t *gm) { return vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, bytes, gm); }

int main(const struct mv_boot_info *bi) {
    if (vgpu_init(&gpu, bi) != 0) {
        mv_puts("vgpu compute FAIL: no usable vGPU");
        return 1;
    }
    if (vgpu_irq_setup(&gpu, VGPU_VECTOR, VGPU_IRQ_DEFAULT) != 0 || vgpu_ring_init(&gpu, VGPU_RCS, 16) != 0) {
        mv_puts("vgpu compute FAIL: interrupt or ring set-up");
        return 1;
    }

    struct bufs p;
    uint64_t gx, gy, ga, gb, gc, gc2, batch_gm;
    p.x = hidden(4ull * NS, &gx);
    p.y = hidden(4ull * NS, &gy);
    p.a = hidden(4ull * M * LDA, &ga);
    p.b = hidden(4ull * K * LDB, &gb);
    p.c = hidden(4ull * M * LDC, &gc);
    p.c2 = hidden(4ull * M * LDC, &gc2);
    p.y_ref = mv_alloc(4ull * NS, 64);
    p.c_ref = mv_alloc(4ull * M * LDC, 64);
    p.c2_ref = mv_alloc(4ull * M * LDC, 64);
    void *bram = vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, 4096, &batch_gm);
    if (!p.x || !p.y || !p.a || !p.b || !p.c || !p.c2 || !p.y_ref || !p.c_ref || !p.c2_ref || !bram) {
        mv_puts("vgpu compute FAIL: out of graphics memory or RAM");
        return 1;
    }
    mv_printf("hidden GM: x 0x%lx y 0x%lx A 0x%lx B 0x%lx C 0x%lx C2 0x%lx (RAM x at 0x%lx)\n", gx, gy, ga, gb, gc, gc2,
              (uint64_t)(uintptr_t)p.x);
    if (!vgpu_gm_in_slices(&gpu, gx, 4ull * NS) || gx < gpu.hid_base) FAIL("allocator left the hidden slice\n");

    uint64_t t0 = rdtsc();
    mv_run_user(prepare_user, (uint64_t)(uintptr_t)&p);
    uint64_t t_prep = rdtsc() - t0;

    struct vgpu_cmds b;
    vgpu_cmds_init(&b, vgpu_aperture(&gpu, batch_gm), 1024);
    b.gm = batch_gm;
    vgpu_saxpy(&b, NS, SAXPY_A, gx, gy);
    vgpu_sgemm(&b, M, N, K, ALPHA, BETA, ga, LDA, gb, LDB, gc, LDC);
    vgpu_sgemm(&b, M, N, K, VGPU_F32_1, VGPU_F32_0, ga, LDA, gb, LDB, gc2, LDC);
    vgpu_bb_end(&b);
    gpu.doorbell = VGPU_DOORBELL_PV;
    t0 = rdtsc();
    uint32_t seq = vgpu_submit_batch(&gpu, VGPU_RCS, batch_gm, vgpu_cmds_bytes(&b), VGPU_NOTIFY);
    int rc = seq ? vgpu_wait_irq(&gpu, VGPU_RCS, seq, VGPU_WAIT_TICKS) : -9;
    uint64_t t_gpu = rdtsc() - t0;
    if (rc != 0) {
        mv_printf("vgpu compute FAIL: batch (seq %u) did not complete by interrupt: %d (fence %u, irq seen 0x%x, "
                  "RCS STATUS 0x%x ERROR_CODE 0x%x)\n", seq, rc, vgpu_fence(&gpu, VGPU_RCS), gpu.irq_seen,
                  vgpu_read(&gpu, VGPU_STATUS(VGPU_RCS)), vgpu_read(&gpu, VGPU_ERROR_CODE(VGPU_RCS)));
        struct vgpu_err er;
        vgpu_err_read(&gpu, &er);
        vgpu_err_print(&gpu, &er);
        return 1;
    }
    mv_printf("SAXPY n=%u + SGEMM %ux%ux%u (lda %u ldb %u ldc %u) x2: done by interrupt, seq %u, %lu cycles "
              "(ring-3 fill + reference: %lu cycles)\n", NS, M, N, K, LDA, LDB, LDC, seq, t_gpu, t_prep);

    mv_run_user(check_user, (uint64_t)(uintptr_t)&p);
    if (p.bad_y)
        FAIL("SAXPY: %lu of %u elements off; first y[%lu] = 0x%08x, expected 0x%08x\n", p.bad_y, NS, p.first_y,
             p.y[p.first_y], p.y_ref[p.first_y]);
    else
        mv_printf("SAXPY ok: y[1234] = %ld/1000 (a = 2)\n", (long)p.y_milli);
    if (p.bad_c)
        FAIL("SGEMM: %lu of %u elements off (padding included); first C[%lu][%lu] = 0x%08x, expected 0x%08x\n",
             p.bad_c, M * LDC, p.first_c / LDC, p.first_c % LDC, p.c[p.first_c], p.c_ref[p.first_c]);
    else
        mv_printf("SGEMM ok: C[5][7] = %ld/1000 (alpha 1.5, beta 0.5; padding columns untouched)\n", (long)p.c_milli);
    if (p.bad_c2)
        FAIL("SGEMM beta=0 over NaN: %lu elements off; first at %lu: 0x%08x, expected 0x%08x\n", p.bad_c2, p.first_c2,
             p.c2[p.first_c2], p.c2_ref[p.first_c2]);
    else
        mv_puts("SGEMM beta=0 ok (NaNs in C overwritten, padding untouched)");

    uint32_t err = vgpu_read(&gpu, VGPU_ERR_STATUS);
    if (err & 1) FAIL("ERR_STATUS 0x%x after valid submissions\n", err);
    if (failures) {
        mv_printf("vgpu compute FAIL: %d check(s) failed\n", failures);
        return 1;
    }
    mv_puts("vgpu compute ok");
    return 0;
}
