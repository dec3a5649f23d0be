/*
 * vgpu_bench: vGPU micro-benchmarks, all timed with rdtsc in ring 3 (native on every host). Results are
 * printed as "bench NAME VALUE UNIT" lines; compare ratios from the same run.
 *
 *  (i)   writing N MiB (cmdline mib=, default 16) through the aperture (BAR2, GTT-mapped guest RAM) vs
 *        the same amount to ordinary guest RAM: cycles per MiB and the ratio;
 *  (ii)  N (doorbells=, default 2000) PV fast doorbells (ioeventfd) vs N trapped register writes
 *        (SCRATCH0), in blocks of block= (default 100), cycles per operation; then N tiny submissions
 *        with each doorbell kind;
 *  For (i) and (ii) the two kinds run as many short blocks interleaved A B B A A B B A ..., so that both
 *  see the same host conditions, and every pair is printed as "pair NAME CYCLES_A CYCLES_B" (the host
 *  takes the median of the pairs' ratios: one slow moment spoils one pair, not the result);
 *  (iii) a stream of small COLOR_BLT fills (fills=, default 16384, 16x16 each) built in ring 3 straight
 *        into batch buffers in the aperture, batch= fills per batch (default 256), PV doorbell, fence
 *        polling; against the same fills submitted one per ring submission (1/16 as many);
 *  (iv)  only=sgemm: reps= SGEMMs of sgemm= (default 512) cubed, timed by the host against native runs;
 *  (v)   only=load: the scheduler benchmarks' workload: for ms= milliseconds (default 2000), SGEMMs of
 *        load= (default 256) cubed in groups of group= (default 4) batches on RCS, two groups in flight,
 *        the driver sleeping (sti; hlt) until a group's interrupt; prints the SGEMMs completed and their rate.
 */
#include "vgpu/vgpu.h"

static struct vgpu gpu;
static int failures;

#define FAIL(...) do { mv_printf("vgpu bench FAIL: " __VA_ARGS__); failures++; } while (0)

static uint64_t param(const struct mv_boot_info *bi, const char *key, uint64_t def, uint64_t lo, uint64_t hi) {
    size_t len;
    const char *v = mv_cmdline_value((const char *)(uintptr_t)bi->cmdline_addr, bi->cmdline_len, key, &len);
    if (!v) return def;
    int ok;
    uint64_t x = mv_parse_u64(v, len, &ok);
    if (!ok || x < lo || x > hi) {
        mv_printf("note: ignoring %s=%.*s (allowed %lu..%lu)\n", key, (int)len, v, lo, hi);
        return def;
    }
    return x;
}

static void print_ratio(const char *name, uint64_t num, uint64_t den) {
    if (!den) den = 1;
    uint64_t r = num * 1000 / den;
    mv_printf("bench %s %lu.%03lu x\n", name, r / 1000, r % 1000);
}

/* ------------------------------------------------------------------ (i) */

/* One block = one timed pass writing `bytes` to `dst`. */
struct write_job {
    volatile uint64_t *dst;
    uint64_t bytes;
    uint64_t v;
    uint64_t cycles;
};

static uint64_t write_user(uint64_t arg) {
    struct write_job *j = (struct write_job *)(uintptr_t)arg;
    uint64_t n = j->bytes / 8, v = j->v;
    volatile uint64_t *p = j->dst;
    uint64_t t0 = rdtsc();
    for (uint64_t i = 0; i < n; i += 8) {
        p[i] = v; p[i + 1] = v; p[i + 2] = v; p[i + 3] = v;
        p[i + 4] = v; p[i + 5] = v; p[i + 6] = v; p[i + 7] = v;
    }
    j->cycles = rdtsc() - t0;
    return 0;
}

static uint64_t write_block(volatile uint64_t *dst, uint64_t bytes, uint64_t v) {
    struct write_job j = { dst, bytes, v, 0 };
    mv_run_user(write_user, (uint64_t)(uintptr_t)&j);
    return j.cycles ? j.cycles : 1;
}

static void bench_aperture(uint64_t mib, uint64_t tsc_khz) {
    uint64_t bytes = mib << 20;
    if (bytes > gpu.ap_size / 2) {
        bytes = (gpu.ap_size / 2) & ~0xfffffull;
        mv_printf("note: aperture slice is %lu MiB; writing %lu MiB\n", gpu.ap_size >> 20, bytes >> 20);
    }
    uint64_t gm;
    uint64_t *back = vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, bytes, &gm);
    uint64_t *ram = mv_alloc(bytes, 4096);
    if (!back || !ram) {
        FAIL("no memory for the %lu MiB write test\n", bytes >> 20);
        return;
    }
    volatile uint64_t *ap = vgpu_aperture(&gpu, gm);

    /* Probe with 64 KiB first (after a warm-up pass each): if the aperture traps, a full run would take minutes. */
    write_block(ap, 64 << 10, 1);
    write_block(ram, 64 << 10, 1);
    uint64_t pa = write_block(ap, 64 << 10, 1), pr = write_block(ram, 64 << 10, 1);
    if (pa > 1000 * (pr + 1000)) {
        mv_printf("note: aperture writes are %lu times slower than RAM in a 64 KiB probe (trapping?); measuring 64 KiB only\n",
                  pa / pr);
        bytes = 64 << 10;
    }
    /* Warm-up (first-touch faults, remaps), then 60 pairs of one pass each, A B B A: the pair's order
     * alternates, so drifts and order effects hit both kinds alike. The last pass of each kind writes 0x02..02. */
    write_block(ap, bytes, 1);
    write_block(ram, bytes, 1);
    const int pairs = 60;
    uint64_t best_a = ~0ull, best_r = ~0ull;
    for (int k = 0; k < pairs; k++) {
        uint64_t v = 0x0101010101010101ull * (k + 1 == pairs ? 2 : 3), ca, cr;
        if (k % 2 == 0) { ca = write_block(ap, bytes, v); cr = write_block(ram, bytes, v); }
        else { cr = write_block(ram, bytes, v); ca = write_block(ap, bytes, v); }
        mv_printf("pair aperture_ram %lu %lu\n", ca, cr);
        if (ca < best_a) best_a = ca;
        if (cr < best_r) best_r = cr;
    }
    /* The last pass wrote 0x02..02 through BAR2: it must be in the guest RAM behind the GTT. */
    uint64_t n = bytes / 8, want = 0x0202020202020202ull;
    if (back[0] != want || back[n / 2] != want || back[n - 1] != want)
        FAIL("aperture writes did not land in the backing RAM: 0x%lx 0x%lx 0x%lx\n", back[0], back[n / 2], back[n - 1]);
    uint64_t mibs = bytes >> 20 ? bytes >> 20 : 1;
    uint64_t ca = bytes >> 20 ? best_a / mibs : best_a * 16, cr = bytes >> 20 ? best_r / mibs : best_r * 16;
    mv_printf("bench write_mib %lu MiB\n", bytes >> 20);
    mv_printf("bench aperture_write_cycles_per_mib %lu cycles\n", ca);
    mv_printf("bench ram_write_cycles_per_mib %lu cycles\n", cr);
    print_ratio("aperture_vs_ram_time_ratio", ca, cr);
    if (tsc_khz) {
        mv_printf("bench aperture_write_mib_per_s %lu MiB/s\n", ca ? tsc_khz * 1000 / ca : 0);
        mv_printf("bench ram_write_mib_per_s %lu MiB/s\n", cr ? tsc_khz * 1000 / cr : 0);
    }
}

/* ------------------------------------------------------------------ (ii) */

struct door_job {
    uint64_t n, block;
    uint64_t pv, trapped, submit_pv, submit_tail;   /* total cycles */
    uint64_t *pair_pv, *pair_trapped;               /* per pair of blocks */
    uint64_t pairs;
    int rc;
};

static uint64_t door_user(uint64_t arg) {
    struct door_job *j = (struct door_job *)(uintptr_t)arg;
    const int e = VGPU_BCS;
    uintptr_t db = (uintptr_t)(gpu.bar0 + VGPU_PV_DOORBELL(e)), scratch = (uintptr_t)(gpu.bar0 + VGPU_SCRATCH(0));
    /* Plain doorbells: the shared page already holds the current tail, so there is nothing new to run.
     * One short warm-up block of each, then n of each in pairs of blocks, A B B A. */
    gpu.shared[2 * e] = gpu.ring[e].tail;
    for (uint64_t i = 0; i < 16; i++) { mmio_write32(db, 1); mmio_write32(scratch, (uint32_t)i); }
    j->pv = j->trapped = 0;
    for (uint64_t k = 0; k < j->pairs; k++) {
        uint64_t m = k + 1 == j->pairs ? j->n - k * j->block : j->block, tp = 0, tt = 0;
        for (int half = 0; half < 2; half++) {
            uint64_t t0 = rdtsc();
            if ((half == 0) == (k % 2 == 0)) {
                for (uint64_t i = 0; i < m; i++) mmio_write32(db, 1);
                tp = rdtsc() - t0;
            } else {
                for (uint64_t i = 0; i < m; i++) mmio_write32(scratch, (uint32_t)i);
                tt = rdtsc() - t0;
            }
        }
        j->pair_pv[k] = tp;
        j->pair_trapped[k] = tt;
        j->pv += tp;
        j->trapped += tt;
    }
    uint64_t t0;

    /* Tiny submissions (two NOOPs each), then one fenced FLUSH to know they all ran. */
    static const uint32_t noops[2] = { VGPU_CMD_NOOP, VGPU_CMD_NOOP };
    for (int kind = 0; kind < 2; kind++) {
        gpu.doorbell = kind ? VGPU_DOORBELL_TAIL : VGPU_DOORBELL_PV;
        t0 = rdtsc();
        for (uint64_t i = 0; i < j->n; i++) {
            if (vgpu_ring_emit(&gpu, e, noops, 2) != 0) { j->rc = -1; return 1; }
            vgpu_ring_kick(&gpu, e);
        }
        uint32_t seq = vgpu_submit(&gpu, e, 0, 0, 0);
        if (!seq || vgpu_wait_poll(&gpu, e, seq, VGPU_WAIT_TICKS) != 0) { j->rc = -2; return 1; }
        uint64_t t = rdtsc() - t0;
        if (kind) j->submit_tail = t; else j->submit_pv = t;
        if (vgpu_ring_idle(&gpu, e, VGPU_WAIT_TICKS) != 0) { j->rc = -3; return 1; }
    }
    j->rc = 0;
    return 0;
}

static void bench_doorbells(uint64_t n, uint64_t block) {
    if (block > n) block = n;
    uint64_t pairs = n / block;
    struct door_job j = { n, block, 0, 0, 0, 0, mv_alloc(pairs * 8, 8), mv_alloc(pairs * 8, 8), pairs, 0 };
    if (!j.pair_pv || !j.pair_trapped) {
        FAIL("no memory for %lu doorbell pairs\n", pairs);
        return;
    }
    mv_run_user(door_user, (uint64_t)(uintptr_t)&j);
    if (j.rc) {
        FAIL("doorbell benchmark: submissions did not complete (%d; BCS fence %u, seq %u)\n", j.rc,
             vgpu_fence(&gpu, VGPU_BCS), gpu.ring[VGPU_BCS].seq);
        return;
    }
    /* A, B = trapped, PV: the host's ratio is trapped / PV. The last pair may hold more operations. */
    for (uint64_t k = 0; k < pairs; k++) mv_printf("pair trapped_pv %lu %lu\n", j.pair_trapped[k], j.pair_pv[k]);
    mv_printf("bench doorbells %lu ops\n", n);
    mv_printf("bench pv_doorbell_cycles %lu cycles/op\n", j.pv / n);
    mv_printf("bench trapped_write_cycles %lu cycles/op\n", j.trapped / n);
    print_ratio("trapped_vs_pv_ratio", j.trapped, j.pv);
    mv_printf("bench submit_pv_cycles %lu cycles/op\n", j.submit_pv / n);
    mv_printf("bench submit_tail_cycles %lu cycles/op\n", j.submit_tail / n);
    print_ratio("submit_tail_vs_pv_ratio", j.submit_tail, j.submit_pv);
}

/* ------------------------------------------------------------------ (iii) */

#define FW 1024
#define FH 768
#define FILL 16
#define SLOTS_X (FW / FILL)
#define SLOTS (SLOTS_X * (FH / FILL))
#define NBUF 4

struct fill_job {
    enum vgpu_doorbell doorbell;  /* TAIL: the scan runs on this vCPU; PV: on the mediator thread */
    uint64_t fills, per_batch, single;
    struct vgpu_surface s;
    uint64_t buf_gm[NBUF];
    uint32_t buf_seq[NBUF];
    uint32_t batch_bytes;
    uint64_t stream_cycles, single_cycles, batches;
    uint64_t bad;
    int rc;
};

static uint32_t fill_color(uint64_t i) { return (uint32_t)(i * 0x00010203u + 0x00405060u) & 0x00ffffffu; }
static void fill_pos(uint64_t i, int *x, int *y) {
    uint64_t k = (i * 7) % SLOTS;     /* 7 is coprime with SLOTS: every slot, scattered */
    *x = (int)(k % SLOTS_X) * FILL;
    *y = (int)(k / SLOTS_X) * FILL;
}

static uint64_t fill_user(uint64_t arg) {
    struct fill_job *j = (struct fill_job *)(uintptr_t)arg;
    const int e = VGPU_BCS;
    gpu.doorbell = j->doorbell;
    for (int b = 0; b < NBUF; b++) j->buf_seq[b] = 0;
    uint64_t t0 = rdtsc();
    uint64_t i = 0;
    unsigned b = 0;
    uint32_t seq = 0;
    j->batches = 0;
    while (i < j->fills) {
        if (j->buf_seq[b] && vgpu_wait_poll(&gpu, e, j->buf_seq[b], VGPU_WAIT_TICKS) != 0) { j->rc = -1; return 1; }
        struct vgpu_cmds c;
        vgpu_cmds_init(&c, vgpu_aperture(&gpu, j->buf_gm[b]), j->batch_bytes / 4);
        c.gm = j->buf_gm[b];
        for (uint64_t k = 0; k < j->per_batch && i < j->fills; k++, i++) {
            int x, y;
            fill_pos(i, &x, &y);
            vgpu_color_blt(&c, &j->s, x, y, x + FILL, y + FILL, fill_color(i));
        }
        vgpu_bb_end(&c);
        if (c.overflow) { j->rc = -2; return 1; }
        seq = vgpu_submit_batch(&gpu, e, j->buf_gm[b], vgpu_cmds_bytes(&c), 0);
        if (!seq) { j->rc = -3; return 1; }
        j->buf_seq[b] = seq;
        b = (b + 1) % NBUF;
        j->batches++;
    }
    if (vgpu_wait_poll(&gpu, e, seq, VGPU_WAIT_TICKS) != 0) { j->rc = -4; return 1; }
    j->stream_cycles = rdtsc() - t0;

    /* Check the top-left and bottom-right pixel of every slot against the last fill that hit it. */
    volatile uint32_t *px = vgpu_aperture(&gpu, j->s.gm);
    j->bad = 0;
    for (uint64_t k = j->fills > SLOTS ? j->fills - SLOTS : 0; k < j->fills; k++) {
        int x, y;
        fill_pos(k, &x, &y);
        if (px[(uint64_t)y * FW + x] != fill_color(k) || px[(uint64_t)(y + FILL - 1) * FW + x + FILL - 1] != fill_color(k))
            j->bad++;
    }

    /* The same kind of fill, one ring submission (COLOR_BLT + FLUSH) each. */
    if (j->single == 0) { j->rc = 0; return 0; }
    t0 = rdtsc();
    for (uint64_t k = 0; k < j->single; k++) {
        uint32_t buf[8];
        struct vgpu_cmds c;
        vgpu_cmds_init(&c, buf, 8);
        int x, y;
        fill_pos(k, &x, &y);
        vgpu_color_blt(&c, &j->s, x, y, x + FILL, y + FILL, fill_color(k));
        seq = vgpu_submit(&gpu, e, c.dw, c.len, 0);
        if (!seq) { j->rc = -5; return 1; }
    }
    if (vgpu_wait_poll(&gpu, e, seq, VGPU_WAIT_TICKS) != 0) { j->rc = -6; return 1; }
    j->single_cycles = rdtsc() - t0;
    j->rc = 0;
    return 0;
}

static void bench_fills(uint64_t fills, uint64_t per_batch, uint64_t singles, enum vgpu_doorbell doorbell, uint64_t tsc_khz) {
    struct fill_job j;
    memset(&j, 0, sizeof j);
    j.fills = fills;
    j.per_batch = per_batch;
    j.single = singles;
    j.doorbell = doorbell;
    j.batch_bytes = (uint32_t)((per_batch * 8 + 1) * 4 + 4095) & ~4095u;
    uint64_t gm;
    if (!vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, (uint64_t)FW * FH * 4, &gm)) {
        FAIL("no aperture for the fill surface\n");
        return;
    }
    j.s = (struct vgpu_surface){ gm, FW * 4, FW, FH };
    for (int b = 0; b < NBUF; b++)
        if (!vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, j.batch_bytes, &j.buf_gm[b])) {
            FAIL("no aperture for batch buffers\n");
            return;
        }
    mv_run_user(fill_user, (uint64_t)(uintptr_t)&j);
    if (j.rc) {
        FAIL("fill stream stopped (%d; BCS fence %u, seq %u)\n", j.rc, vgpu_fence(&gpu, VGPU_BCS), gpu.ring[VGPU_BCS].seq);
        struct vgpu_err er;
        vgpu_err_read(&gpu, &er);
        vgpu_err_print(&gpu, &er);
        return;
    }
    if (j.bad) FAIL("%lu fill slots hold the wrong colour\n", j.bad);
    mv_printf("bench fill_surface %u x %u, fill %u x %u\n", FW, FH, FILL, FILL);
    mv_printf("bench fill_stream_fills %lu fills\n", fills);
    mv_printf("bench fill_stream_batch %lu fills\n", per_batch);
    mv_printf("bench fill_stream_batches %lu batches\n", j.batches);
    mv_printf("bench fill_stream_cycles_per_fill %lu cycles\n", j.stream_cycles / fills);
    if (j.single) {
        mv_printf("bench fill_single_fills %lu fills\n", j.single);
        mv_printf("bench fill_single_cycles_per_fill %lu cycles\n", j.single_cycles / j.single);
        print_ratio("fill_single_vs_stream_ratio", j.single_cycles / j.single, j.stream_cycles / fills);
    }
    if (tsc_khz) mv_printf("bench fill_stream_fills_per_s %lu fills/s\n", fills * tsc_khz * 1000 / (j.stream_cycles ? j.stream_cycles : 1));
}

/* ------------------------------------------------------------------ (iv) */
/* GPU-intensive work: `reps` SGEMMs of n x n x n, each its own batch on RCS, submitted back to back.
 * The host times the same work submitted natively (minivisor bench); the result is checked here. */

struct sgemm_job {
    uint32_t *a, *b, *c, *ref;
    uint32_t n;
    uint64_t bad, first;
};

static uint64_t sgemm_prepare_user(uint64_t arg) {
    struct sgemm_job *j = (struct sgemm_job *)(uintptr_t)arg;
    uint64_t nn = (uint64_t)j->n * j->n;
    vgpu_fp_fill(j->a, nn, 7, 3, 17, 0x3d800000u);      /* small integers / 16: exact products */
    vgpu_fp_fill(j->b, nn, 5, 1, 13, 0x3e000000u);      /* small integers / 8 */
    return 0;
}

static uint64_t sgemm_check_user(uint64_t arg) {
    struct sgemm_job *j = (struct sgemm_job *)(uintptr_t)arg;
    vgpu_fp_sgemm_ref(j->n, j->n, j->n, 0x3f800000u, 0, j->a, j->n, j->b, j->n, j->ref, j->n);
    j->bad = vgpu_fp_compare(j->c, j->ref, (uint64_t)j->n * j->n, 0x3a83126fu /* 1e-3 */, 0x3a83126fu, &j->first);
    return 0;
}

static void bench_sgemm(uint32_t n, uint64_t reps) {
    uint64_t bytes = (uint64_t)n * n * 4, ga, gb, gc, gbatch;
    struct sgemm_job j = { 0 };
    j.n = n;
    j.a = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, bytes, &ga);
    j.b = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, bytes, &gb);
    j.c = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, bytes, &gc);
    j.ref = mv_alloc(bytes, 4096);
    uint32_t *batch = vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, 4096, &gbatch);
    if (!j.a || !j.b || !j.c || !j.ref || !batch || vgpu_ring_init(&gpu, VGPU_RCS, 16) != 0
        || vgpu_irq_setup(&gpu, VGPU_VECTOR, VGPU_IRQ_DEFAULT) != 0) {
        FAIL("no memory or ring for the %u^3 SGEMM\n", n);
        return;
    }
    mv_run_user(sgemm_prepare_user, (uint64_t)(uintptr_t)&j);
    struct vgpu_cmds c;
    vgpu_cmds_init(&c, vgpu_aperture(&gpu, gbatch), 1024);
    c.gm = gbatch;
    vgpu_sgemm(&c, n, n, n, 0x3f800000u, 0, ga, n, gb, n, gc, n);
    vgpu_bb_end(&c);
    uint64_t t0 = rdtsc();
    uint32_t seq = 0;
    for (uint64_t r = 0; r < reps; r++) {
        /* Only the last one notifies: the driver sleeps (sti; hlt) until it completes, as a real one would. */
        seq = vgpu_submit_batch(&gpu, VGPU_RCS, gbatch, vgpu_cmds_bytes(&c), r + 1 == reps ? VGPU_NOTIFY : 0);
        if (!seq) { FAIL("SGEMM submission %lu failed\n", r); return; }
    }
    if (vgpu_wait_irq(&gpu, VGPU_RCS, seq, VGPU_WAIT_TICKS) != 0) { FAIL("SGEMM did not complete\n"); return; }
    uint64_t cycles = rdtsc() - t0;
    mv_run_user(sgemm_check_user, (uint64_t)(uintptr_t)&j);
    if (j.bad) FAIL("SGEMM result wrong in %lu elements (first %lu)\n", j.bad, j.first);
    mv_printf("bench sgemm_n %u\n", n);
    mv_printf("bench sgemm_reps %lu\n", reps);
    mv_printf("bench sgemm_cycles %lu cycles\n", cycles);
}

/* ------------------------------------------------------------------ (v) */
/* The scheduler benchmarks' load: GPU-bound, and the vCPU sleeps while the GPU works (a busy-polling vCPU
 * would take a core from the engine's thread). Two groups are in flight so that the engine never waits for
 * this driver; the host measures shares and throughput from the engine's side, this is the guest's side. */
static int load_wait(uint32_t seq) {
    const uint32_t bad = VGPU_IRQ_ERROR(VGPU_RCS) | VGPU_IRQ_REJECT(VGPU_RCS);
    while (!vgpu_seq_done(&gpu, VGPU_RCS, seq)) {
        uint32_t got = vgpu_irq_wait(&gpu, VGPU_IRQ_USER(VGPU_RCS) | bad, VGPU_WAIT_TICKS);
        if (got & bad) return -2;
        if (!got && !vgpu_seq_done(&gpu, VGPU_RCS, seq)) return -1;
    }
    return 0;
}

static void bench_load(uint32_t n, uint64_t per_group, uint64_t ms, uint64_t tsc_khz) {
    uint64_t bytes = (uint64_t)n * n * 4, ga, gb, gc, gbatch;
    struct sgemm_job j = { 0 };
    j.n = n;
    j.a = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, bytes, &ga);
    j.b = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, bytes, &gb);
    j.c = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, bytes, &gc);
    uint32_t *batch = vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, 4096, &gbatch);
    if (!j.a || !j.b || !j.c || !batch || vgpu_ring_init(&gpu, VGPU_RCS, 16) != 0
        || vgpu_irq_setup(&gpu, VGPU_VECTOR, VGPU_IRQ_DEFAULT) != 0) {
        FAIL("no memory or ring for the %u^3 load\n", n);
        return;
    }
    mv_run_user(sgemm_prepare_user, (uint64_t)(uintptr_t)&j);
    struct vgpu_cmds c;
    vgpu_cmds_init(&c, vgpu_aperture(&gpu, gbatch), 1024);
    c.gm = gbatch;
    vgpu_sgemm(&c, n, n, n, 0x3f800000u, 0, ga, n, gb, n, gc, n);
    vgpu_bb_end(&c);
    if (!tsc_khz) tsc_khz = 2000000;
    uint64_t t0 = rdtsc(), deadline = t0 + ms * tsc_khz, done = 0;
    uint32_t prev = 0;
    while ((int64_t)(rdtsc() - deadline) < 0) {
        uint32_t seq = 0;
        for (uint64_t k = 0; k < per_group; k++) {
            seq = vgpu_submit_batch(&gpu, VGPU_RCS, gbatch, vgpu_cmds_bytes(&c), k + 1 == per_group ? VGPU_NOTIFY : 0);
            if (!seq) { FAIL("load submission failed after %lu SGEMMs\n", done); return; }
        }
        if (prev) {
            if (load_wait(prev) != 0) { FAIL("load SGEMMs did not complete (after %lu)\n", done); return; }
            done += per_group;
        }
        prev = seq;
    }
    if (prev) {
        if (load_wait(prev) != 0) { FAIL("load SGEMMs did not complete (after %lu)\n", done); return; }
        done += per_group;
    }
    uint64_t cycles = rdtsc() - t0;
    mv_printf("bench load_n %u\n", n);
    mv_printf("bench load_sgemms %lu SGEMMs\n", done);
    mv_printf("bench load_ms %lu ms\n", cycles / tsc_khz);
    mv_printf("bench load_sgemms_per_ks %lu SGEMMs per 1000 s\n", cycles ? done * tsc_khz * 1000000 / cycles : 0);
}

/* only=NAME runs one part (aperture, doorbells, fills, sgemm, load); default: all but sgemm and load. */
static int want(const struct mv_boot_info *bi, const char *name) {
    uint64_t len = 0;
    const char *v = mv_cmdline_value((const char *)(uintptr_t)bi->cmdline_addr, bi->cmdline_len, "only", &len);
    if (!v) return strcmp(name, "sgemm") != 0 && strcmp(name, "load") != 0;
    uint64_t n = 0;
    while (name[n]) n++;
    return n == len && memcmp(v, name, n) == 0;
}

int main(const struct mv_boot_info *bi) {
    uint64_t mib = param(bi, "mib", 16, 1, 1024);
    uint64_t doorbells = param(bi, "doorbells", 2000, 1, 1000000);
    uint64_t block = param(bi, "block", 100, 1, 1000000);
    uint64_t fills = param(bi, "fills", 16384, 1, 1u << 22);
    uint64_t per_batch = param(bi, "batch", 256, 1, 4096);
    if (vgpu_init(&gpu, bi) != 0) {
        mv_puts("vgpu bench FAIL: no usable vGPU");
        return 1;
    }
    /* BCS ring big enough for `doorbells` tiny submissions without waiting. */
    unsigned pages = (unsigned)((doorbells * 8 + 4096 * 2) / 4096);
    if (pages > 512) pages = 512;
    if (pages < 16) pages = 16;
    if (vgpu_ring_init(&gpu, VGPU_BCS, pages) != 0) {
        mv_puts("vgpu bench FAIL: ring set-up");
        return 1;
    }
    uint64_t khz = vgpu_tsc_khz();
    mv_printf("bench tsc_khz %lu kHz\n", khz);
    if (want(bi, "aperture")) bench_aperture(mib, khz);
    if (want(bi, "doorbells")) bench_doorbells(doorbells, block);
    if (want(bi, "fills"))
        bench_fills(fills, per_batch, param(bi, "singles", fills / 16 ? fills / 16 : 1, 0, 1u << 22),
                    param(bi, "pv", 1, 0, 1) ? VGPU_DOORBELL_PV : VGPU_DOORBELL_TAIL, khz);
    if (want(bi, "sgemm")) bench_sgemm((uint32_t)param(bi, "sgemm", 512, 16, 1024), param(bi, "reps", 8, 1, 1000));
    if (want(bi, "load"))
        bench_load((uint32_t)param(bi, "load", 256, 16, 1024), param(bi, "group", 4, 1, 64), param(bi, "ms", 2000, 1, 600000), khz);
    if (failures) {
        mv_printf("vgpu bench FAIL: %d problem(s)\n", failures);
        return 1;
    }
    mv_puts("vgpu bench ok");
    return 0;
}
