/*
 * vgpu_hang: a submission far longer than the GPU watchdog's limit (docs/vgpu.md section 4, "Hangs").
 *
 * Submits one batch of SGEMMS SGEMMs (DIM x DIM x DIM: legal, each short, together tens of seconds of
 * software-GPU time even in a release build), then a store of 1 to a marker. It waits for the hang
 * interrupt (bit 4) and checks what the watchdog's reset left: the error block says "hang" (ERR_STATUS bit
 * 1, ERR_REASON 13, ERR_ENGINE 0, ERR_CMD_GM the submission's ring address, ERR_HANG_COUNT 1), RCS is idle
 * with its ring disabled, the marker was never written. It then follows the recovery recipe
 * (vgpu_hang_recover) and checks that a store and a small SGEMM run correctly. Finally it tries the
 * device-level reset (PV_DEVICE_RESET): interrupt registers and error block cleared, ERR_HANG_COUNT kept,
 * the GTT kept; after setting interrupts and the ring up again, work runs again. Prints
 * "vgpu hang: reset interrupt T ms after the submission, held H ms" and "vgpu hang ok".
 * Run it with a low limit: minivisor run --vgpu --hang-limit 100 Guests/build/vgpu_hang.elf
 */
#include "vgpu/vgpu.h"

#define DIM 512u
#define SGEMMS 2000u
#define MAGIC 0x600dcafeu

static struct vgpu gpu;

struct fill_job { uint32_t *p; uint64_t n; uint32_t v; };
static uint64_t fill_user(uint64_t arg) {
    struct fill_job *j = (struct fill_job *)(uintptr_t)arg;
    for (uint64_t i = 0; i < j->n; i++) j->p[i] = j->v;
    return 0;
}

#define FAIL(...) do { mv_printf("vgpu hang FAIL: " __VA_ARGS__); return 1; } while (0)

/* A store of `value` to `gm` then a small SGEMM (16 x 16 x 16 of ones: every C element 16) on RCS; waits. */
static int small_work(uint64_t gm, uint32_t value, uint64_t ga, uint64_t gc2) {
    uint32_t cmd[32];
    struct vgpu_cmds s;
    vgpu_cmds_init(&s, cmd, 32);
    vgpu_store_dw(&s, gm, value);
    vgpu_sgemm(&s, 16, 16, 16, VGPU_F32_1, 0, ga, DIM, ga, DIM, gc2, 16);
    if (s.overflow) return -1;
    uint32_t seq = vgpu_submit(&gpu, VGPU_RCS, s.dw, s.len, VGPU_NOTIFY);
    return seq && vgpu_wait_irq(&gpu, VGPU_RCS, seq, VGPU_WAIT_TICKS) == 0 ? 0 : -1;
}

int main(const struct mv_boot_info *bi) {
    (void)bi;
    if (vgpu_init(&gpu, bi) != 0) FAIL("no usable vGPU\n");
    uint32_t irqs = VGPU_IRQ_DEFAULT | VGPU_IRQ_RCS_HANG | VGPU_IRQ_BCS_HANG;
    if (vgpu_irq_setup(&gpu, 0x50, irqs) != 0) FAIL("interrupt set-up\n");
    if (vgpu_ring_init(&gpu, VGPU_RCS, 4) != 0) FAIL("ring set-up\n");

    uint64_t ga, gc, gc2, batch_gm, marker_gm;
    uint32_t *a = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, 4ull * DIM * DIM, &ga);
    uint32_t *c = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, 4ull * DIM * DIM, &gc);
    uint32_t *c2 = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, 4096, &gc2);
    uint32_t *marker = vgpu_gm_alloc_backed(&gpu, VGPU_HIDDEN, 4096, &marker_gm);
    uint32_t batch_dwords = SGEMMS * 16 + 8;
    void *bram = vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, 4ull * batch_dwords, &batch_gm);
    if (!a || !c || !c2 || !marker || !bram) FAIL("out of graphics memory or RAM\n");
    struct fill_job fj = { a, (uint64_t)DIM * DIM, VGPU_F32_1 };
    mv_run_user(fill_user, (uint64_t)(uintptr_t)&fj);

    struct vgpu_cmds b;
    vgpu_cmds_init(&b, vgpu_aperture(&gpu, batch_gm), batch_dwords);
    b.gm = batch_gm;
    for (uint32_t i = 0; i < SGEMMS; i++)
        vgpu_sgemm(&b, DIM, DIM, DIM, VGPU_F32_1, VGPU_F32_1, ga, DIM, ga, DIM, gc, DIM);
    vgpu_store_dw(&b, marker_gm, 1);
    vgpu_bb_end(&b);
    if (b.overflow) FAIL("batch overflow\n");
    uint32_t ring_head = vgpu_read(&gpu, VGPU_RING_HEAD(VGPU_RCS));
    uint64_t t0 = rdtsc();
    if (!vgpu_submit_batch(&gpu, VGPU_RCS, batch_gm, vgpu_cmds_bytes(&b), 0)) FAIL("submission\n");

    /* The watchdog resets the vGPU: the hang interrupt. */
    uint32_t got = vgpu_irq_wait(&gpu, VGPU_IRQ_RCS_HANG | VGPU_IRQ_RCS_ERROR | VGPU_IRQ_RCS_REJECT, 8 * VGPU_WAIT_TICKS);
    uint64_t t1 = rdtsc();
    if (got != VGPU_IRQ_RCS_HANG)
        FAIL("waited for the hang interrupt, got IIR bits 0x%x (ERR_STATUS 0x%x, RCS STATUS 0x%x)\n", got,
             vgpu_read(&gpu, VGPU_ERR_STATUS), vgpu_read(&gpu, VGPU_STATUS(VGPU_RCS)));
    uint64_t khz = vgpu_tsc_khz();
    uint64_t held_us = vgpu_read64(&gpu, VGPU_ERR_OPERAND);
    if (khz) mv_printf("vgpu hang: reset interrupt %lu ms after the submission, held %lu ms\n", (t1 - t0) / khz, held_us / 1000);
    else mv_printf("vgpu hang: reset interrupt %lu TSC cycles after the submission, held %lu ms\n", t1 - t0, held_us / 1000);

    uint32_t st = vgpu_read(&gpu, VGPU_ERR_STATUS), reason = vgpu_read(&gpu, VGPU_ERR_REASON);
    if (st != VGPU_ERR_STATUS_HANG) FAIL("ERR_STATUS 0x%x after a hang\n", st);
    if (reason != VGPU_REASON_HANG) FAIL("ERR_REASON %u (%s) after a hang\n", reason, vgpu_reason_name(reason));
    if (vgpu_read(&gpu, VGPU_ERR_ENGINE) != VGPU_RCS) FAIL("ERR_ENGINE %u\n", vgpu_read(&gpu, VGPU_ERR_ENGINE));
    uint64_t cmd_gm = vgpu_read64(&gpu, VGPU_ERR_CMD_GM);
    if (cmd_gm != gpu.ring[VGPU_RCS].gm + ring_head) FAIL("ERR_CMD_GM 0x%lx, the submission is at 0x%lx\n", cmd_gm, gpu.ring[VGPU_RCS].gm + ring_head);
    if (vgpu_read(&gpu, VGPU_ERR_HANG_COUNT) != 1) FAIL("ERR_HANG_COUNT %u\n", vgpu_read(&gpu, VGPU_ERR_HANG_COUNT));
    if (vgpu_read(&gpu, VGPU_ERR_COUNT) != 0) FAIL("ERR_COUNT %u: a hang is no rejection\n", vgpu_read(&gpu, VGPU_ERR_COUNT));
    uint32_t s = vgpu_read(&gpu, VGPU_STATUS(VGPU_RCS));
    if (s != VGPU_STATUS_IDLE) FAIL("RCS STATUS 0x%x after the hang reset (idle, ring disabled expected)\n", s);
    if (vgpu_read(&gpu, VGPU_RING_CTL(VGPU_RCS)) != 0) FAIL("RING_CTL still enabled after the hang reset\n");
    if (marker[0] != 0) FAIL("the hung batch ran to its end\n");

    /* The recovery recipe; then work runs again, correctly. */
    if (vgpu_hang_recover(&gpu) != 0) FAIL("recovery\n");
    if (vgpu_read(&gpu, VGPU_ERR_STATUS) != 0) FAIL("ERR_STATUS 0x%x after recovery\n", vgpu_read(&gpu, VGPU_ERR_STATUS));
    if (small_work(marker_gm + 4, MAGIC, ga, gc2) != 0) FAIL("work after the recovery did not complete\n");
    if (marker[1] != MAGIC || c2[255] != 0x41800000u) FAIL("work after the recovery: marker 0x%x\n", marker[1]);
    if (marker[0] != 0) FAIL("the hung batch ran after the recovery\n");
    mv_puts("vgpu hang: recovered after the watchdog reset");

    /* Device-level reset: interrupts and error block cleared, counters and the GTT kept. */
    uint64_t gtt_before = vgpu_gtt_read(&gpu, marker_gm);
    vgpu_write(&gpu, VGPU_PV_DEVICE_RESET, 1);
    if (vgpu_read(&gpu, VGPU_REG_IER) != 0 || vgpu_read(&gpu, VGPU_REG_IMR) != 0xffffffffu || vgpu_read(&gpu, VGPU_REG_IIR) != 0)
        FAIL("interrupt registers after the device reset: IER 0x%x IMR 0x%x IIR 0x%x\n", vgpu_read(&gpu, VGPU_REG_IER),
             vgpu_read(&gpu, VGPU_REG_IMR), vgpu_read(&gpu, VGPU_REG_IIR));
    if (vgpu_read(&gpu, VGPU_RING_CTL(VGPU_RCS)) != 0) FAIL("RING_CTL after the device reset\n");
    if (vgpu_read(&gpu, VGPU_ERR_HANG_COUNT) != 1) FAIL("ERR_HANG_COUNT not kept by the device reset\n");
    if (vgpu_gtt_read(&gpu, marker_gm) != gtt_before) FAIL("the GTT changed in the device reset\n");
    if (vgpu_irq_setup(&gpu, 0x50, irqs) != 0) FAIL("interrupt set-up after the device reset\n");
    if (vgpu_hang_recover(&gpu) != 0) FAIL("ring set-up after the device reset\n");
    if (small_work(marker_gm + 8, MAGIC + 1, ga, gc2) != 0 || marker[2] != MAGIC + 1) FAIL("work after the device reset\n");
    mv_puts("vgpu hang ok");
    return 0;
}
