/*
 * vgpu_stop: long GPU work must be stoppable (docs/vgpu.md sections 4, 7 and 8).
 *
 * Queues QUEUE batches of SGEMMS SGEMMs each (DIM x DIM x DIM, alpha 1, beta 1, A = B = ones, so C grows by
 * DIM per SGEMM) on RCS, one doorbell per batch: several seconds of work for the software GPU even in a
 * release build. It waits until the first row block of C has been written (the GPU is computing), then,
 * by "mode=" on the command line:
 *
 *   poweroff (default)  prints "vgpu stop: powering off with GPU work queued" and powers off at once;
 *   spin                prints "vgpu stop: spinning with GPU work queued" and waits with interrupts on
 *                       forever (for --timeout and for ending the VM from the host);
 *   reset               writes RESET and measures the time until STATUS reads idle, checks that the ring
 *                       registers read 0 and the last element of C stays as it was, recovers as section 8
 *                       says (RESET, clear ERR_STATUS, program the ring again) and checks that only the
 *                       store submitted next runs. Prints "vgpu stop reset ok" and powers off.
 */
#include "vgpu/vgpu.h"

#define DIM 1024u
#define SGEMMS 16u
#define QUEUE 4u
#define F32_ONE 0x3f800000u
#define MAGIC 0x5ca1ab1eu

static struct vgpu gpu;

struct fill_job { uint32_t *p; uint64_t n; uint32_t v; };
static uint64_t fill_user(uint64_t arg) {
    struct fill_job *j = (struct fill_job *)(uintptr_t)arg;
    for (uint64_t i = 0; i < j->n; i++) j->p[i] = j->v;
    return 0;
}

static int mode_is(const struct mv_boot_info *bi, const char *want) {
    size_t len;
    const char *v = mv_cmdline_value((const char *)(uintptr_t)bi->cmdline_addr, bi->cmdline_len, "mode", &len);
    if (!v) return strncmp(want, "poweroff", 9) == 0;
    size_t n = 0;
    while (want[n]) n++;
    return len == n && strncmp(v, want, n) == 0;
}

#define FAIL(...) do { mv_printf("vgpu stop FAIL: " __VA_ARGS__); return 1; } while (0)

int main(const struct mv_boot_info *bi) {
    if (vgpu_init(&gpu, bi) != 0) FAIL("no usable vGPU\n");
    if (vgpu_ring_init(&gpu, VGPU_RCS, 4) != 0) FAIL("ring set-up\n");

    uint64_t ga, gc, batch_gm, marker_gm;
    uint32_t *a = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, 4ull * DIM * DIM, &ga);
    uint32_t *c = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, 4ull * DIM * DIM, &gc);
    uint32_t *marker = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, 4096, &marker_gm);
    void *bram = vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, 4096, &batch_gm);
    if (!a || !c || !marker || !bram) FAIL("out of graphics memory or RAM\n");
    struct fill_job fj = { a, (uint64_t)DIM * DIM, F32_ONE };
    mv_run_user(fill_user, (uint64_t)(uintptr_t)&fj);

    /* One batch, submitted QUEUE times: SGEMMS x C += A * A, then a store of 1 to marker[0]. */
    struct vgpu_cmds b;
    vgpu_cmds_init(&b, vgpu_aperture(&gpu, batch_gm), 1024);
    b.gm = batch_gm;
    for (uint32_t i = 0; i < SGEMMS; i++)
        vgpu_sgemm(&b, DIM, DIM, DIM, VGPU_F32_1, VGPU_F32_1, ga, DIM, ga, DIM, gc, DIM);
    vgpu_store_dw(&b, marker_gm, 1);
    vgpu_bb_end(&b);
    if (b.overflow) FAIL("batch overflow\n");
    for (uint32_t q = 0; q < QUEUE; q++)
        if (!vgpu_submit_batch(&gpu, VGPU_RCS, batch_gm, vgpu_cmds_bytes(&b), 0)) FAIL("submission %u\n", q);

    /* The GPU is computing once the first row block of C is written. */
    uint64_t deadline = mv_deadline(VGPU_WAIT_TICKS);
    while (c[0] == 0) {
        if (mv_expired(deadline)) FAIL("the SGEMMs did not start (RCS STATUS 0x%x)\n", vgpu_read(&gpu, VGPU_STATUS(VGPU_RCS)));
        cpu_relax();
    }
    uint32_t st = vgpu_read(&gpu, VGPU_STATUS(VGPU_RCS));
    if (!(st & VGPU_STATUS_BUSY)) FAIL("RCS not busy while computing (STATUS 0x%x)\n", st);

    if (mode_is(bi, "poweroff")) {
        mv_puts("vgpu stop: powering off with GPU work queued");
        mv_exit(0);
    }
    if (mode_is(bi, "spin")) {
        mv_puts("vgpu stop: spinning with GPU work queued");
        for (;;) __asm__ volatile("sti; hlt");
    }
    if (!mode_is(bi, "reset")) FAIL("unknown mode= (poweroff, spin or reset)\n");

    /* RESET of the busy engine: idle when the write returns, ring registers cleared. */
    uint64_t t0 = rdtsc();
    vgpu_write(&gpu, VGPU_RESET(VGPU_RCS), 1);
    uint64_t t1 = rdtsc();
    deadline = mv_deadline(VGPU_WAIT_TICKS);
    while (!((st = vgpu_read(&gpu, VGPU_STATUS(VGPU_RCS))) & VGPU_STATUS_IDLE)) {
        if (mv_expired(deadline)) FAIL("RCS not idle after RESET (STATUS 0x%x)\n", st);
        cpu_relax();
    }
    uint64_t t2 = rdtsc();
    uint64_t khz = vgpu_tsc_khz();
    if (khz)
        mv_printf("vgpu stop: RESET write returned after %lu us, STATUS idle after %lu us (TSC %lu kHz)\n",
                  (t1 - t0) * 1000 / khz, (t2 - t0) * 1000 / khz, khz);
    else
        mv_printf("vgpu stop: RESET write returned after %lu TSC cycles, idle after %lu\n", t1 - t0, t2 - t0);
    if (st & (VGPU_STATUS_BUSY | VGPU_STATUS_ERROR)) FAIL("STATUS 0x%x after RESET\n", st);
    uint32_t h = vgpu_read(&gpu, VGPU_RING_HEAD(VGPU_RCS)), t = vgpu_read(&gpu, VGPU_RING_TAIL(VGPU_RCS));
    uint32_t s0 = vgpu_read(&gpu, VGPU_RING_START(VGPU_RCS)), ctl = vgpu_read(&gpu, VGPU_RING_CTL(VGPU_RCS));
    if (h || t || s0 || ctl) FAIL("ring registers after RESET: HEAD 0x%x TAIL 0x%x START 0x%x CTL 0x%x\n", h, t, s0, ctl);
    uint32_t last = c[DIM * DIM - 1];
    if (marker[0] != 0) FAIL("a batch ran to its end before RESET\n");

    /* Recovery (section 8, step 8), then one store: nothing else may run. */
    if (vgpu_engine_recover(&gpu, VGPU_RCS) != 0) FAIL("recovery\n");
    uint32_t cmd[4];
    struct vgpu_cmds s;
    vgpu_cmds_init(&s, cmd, 4);
    vgpu_store_dw(&s, marker_gm + 4, MAGIC);
    uint32_t seq = vgpu_submit(&gpu, VGPU_RCS, s.dw, s.len, 0);
    if (!seq || vgpu_wait_poll(&gpu, VGPU_RCS, seq, VGPU_WAIT_TICKS) != 0)
        FAIL("the store after recovery did not complete (STATUS 0x%x ERROR_CODE 0x%x)\n",
             vgpu_read(&gpu, VGPU_STATUS(VGPU_RCS)), vgpu_read(&gpu, VGPU_ERROR_CODE(VGPU_RCS)));
    /* The fence is written while the pass runs; COMMAND_COUNT and HEAD are published when it completes. */
    deadline = mv_deadline(VGPU_WAIT_TICKS);
    while ((st = vgpu_read(&gpu, VGPU_STATUS(VGPU_RCS))) & VGPU_STATUS_BUSY) {
        if (mv_expired(deadline)) FAIL("RCS still busy after the store (STATUS 0x%x)\n", st);
        cpu_relax();
    }
    uint32_t count = vgpu_read(&gpu, VGPU_CMD_COUNT(VGPU_RCS));
    if (marker[1] != MAGIC) FAIL("store after recovery: 0x%x\n", marker[1]);
    if (count != 2) FAIL("COMMAND_COUNT %u after recovery: commands other than STORE + FLUSH ran\n", count);
    if (marker[0] != 0 || c[DIM * DIM - 1] != last) FAIL("work submitted before RESET ran after it\n");
    mv_puts("vgpu stop reset ok");
    return 0;
}
