/*
 * vgpu_adversarial: tries each thing docs/vgpu.md forbids and checks that it is refused, reported and
 * harmless, and that the driver recovers and a normal submission still works afterwards.
 *
 *  1. odd-size and misaligned register and GTT-window accesses (all ones / ignored); BAR2 outside the
 *     vGPU's aperture slice is unbacked;
 *  2. GTT writes outside the vGPU's slices are dropped and read back 0 (also as 4-byte halves);
 *  3. GM-address registers (RING_START, PRI_SURF) refuse values outside the slices;
 *  4. GTT entries naming non-RAM guest-physical pages (beyond RAM, MMIO hole, BAR0 registers, BAR2,
 *     LAPIC, the host's scratch/allocation bus windows) read back as written, and a blit through them
 *     lands on the scratch page: it completes without error, the target is untouched, and copying the
 *     page back yields one uniform value (what the blit wrote, or zero);
 *  5. rejected submissions, each checked for the error block (ERR_*), the reject interrupt, STATUS /
 *     ERROR_CODE, nothing executed (a marker store before the offending command stays unwritten),
 *     TAIL writes ignored until RESET, then recovery and a normal submission: LOAD_REGISTER_IMM to
 *     privileged registers and to the GTT window, operands outside the slices, batch recursion (a batch
 *     calling itself, 3-level nests), an endless chain, unknown command, wrong engine, bad length,
 *     command past TAIL, batch without BATCH_BUFFER_END;
 *  6. changing a batch or the ring after the (trapped) doorbell does not change what runs; resubmitting
 *     runs the new contents. The same with the PV doorbell is reported but not required (an ioeventfd
 *     doorbell is asynchronous by design).
 *
 *  7. a sweep over all of graphics memory (the isolation test runs this guest beside a victim VM): GTT
 *     entries every 16 MiB outside the vGPU's slices are dropped, GM-address registers refuse them, and
 *     STORE_DATA_IMM / COLOR_BLT / SAXPY aimed every 512 MiB outside the slices are rejected.
 *
 * "rounds=N" on the command line repeats sections 2 to 7 N times (default 1).
 * Prints "vgpu adversarial ok" only if every check held.
 */
#include "vgpu/vgpu.h"

static struct vgpu gpu;
static unsigned checks, failures;

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        checks++;                                                              \
        if (!(cond)) {                                                         \
            failures++;                                                        \
            mv_printf("vgpu adversarial FAIL: " __VA_ARGS__);                  \
        }                                                                      \
    } while (0)

#define SHORT_TICKS 200000000ull      /* ~0.1 s: how long "nothing happens" is watched */

/* Fence-page layout (dwords): 0/16 engine fences, 64.. marker slots, 512..1023 a pattern that must never change. */
#define SLOT_MARK     64
#define SLOT_MARK2    65
#define SLOT_OK       66
#define SLOT_CHANGE   67
#define SLOT_CHANGE2  68
#define SLOT_CHANGE3  69
#define SLOT_OUT      70
#define GUARD_FIRST   512
#define GUARD_PATTERN(i) (0x6a000000u | (i))

static uint64_t slot_gm(unsigned i) { return gpu.fence_page_gm + 4ull * i; }
static volatile uint32_t *slot(unsigned i) { return &gpu.fence_page[i]; }
static const char *ename(int e) { return e ? "BCS" : "RCS"; }

/* Batch pages (aperture, backed). */
#define BATCH_PAGES 16
static uint64_t batch_gm[BATCH_PAGES];
static uint32_t *batch_cpu(int i) { return vgpu_aperture(&gpu, batch_gm[i]); }
static void batch_start(struct vgpu_cmds *c, int i) {
    vgpu_cmds_init(c, batch_cpu(i), 1024);
    c->gm = batch_gm[i];
}

static uint64_t outside_gm;          /* a GM page in neither slice */
static uint64_t good_gm, probe_gm;   /* one backed aperture page; one aperture page whose entry is played with */
static uint32_t *good_ram, *probe_ram;

/* ------------------------------------------------------------------ 1. access sizes */

static void test_access_sizes(void) {
    uint64_t b = gpu.bar0;
    vgpu_write(&gpu, VGPU_SCRATCH(0), 0x11223344);
    vgpu_write(&gpu, VGPU_SCRATCH(1), 0x55667788);
    CHECK(vgpu_read(&gpu, VGPU_SCRATCH(0)) == 0x11223344, "SCRATCH0 does not hold a dword write\n");
    uint8_t r8 = mmio_read8(b + VGPU_SCRATCH(0));
    uint16_t r16 = mmio_read16(b + VGPU_SCRATCH(0));
    uint16_t r16b = mmio_read16(b + VGPU_SCRATCH(0) + 2);
    uint32_t r32u = mmio_read32(b + VGPU_SCRATCH(0) + 1);
    uint32_t r32v = mmio_read32(b + VGPU_SCRATCH(0) + 2);
    uint64_t r64 = mmio_read64(b + VGPU_SCRATCH(0));
    uint8_t m8 = mmio_read8(b + VGPU_PV_MAGIC);
    mv_printf("register reads: 1-byte 0x%02x, 2-byte 0x%04x/0x%04x, unaligned 4-byte 0x%08x/0x%08x, 8-byte 0x%016lx, "
              "1-byte PV_MAGIC 0x%02x\n", r8, r16, r16b, r32u, r32v, r64, m8);
    CHECK(r8 == 0xff, "1-byte register read returned 0x%02x, not all ones\n", r8);
    CHECK(r16 == 0xffff && r16b == 0xffff, "2-byte register reads returned 0x%04x 0x%04x\n", r16, r16b);
    CHECK(r32u == 0xffffffffu && r32v == 0xffffffffu, "unaligned dword reads returned 0x%08x 0x%08x\n", r32u, r32v);
    CHECK(r64 == ~0ull, "8-byte register read returned 0x%016lx\n", r64);
    CHECK(m8 == 0xff, "1-byte PV_MAGIC read returned 0x%02x\n", m8);

    mmio_write8(b + VGPU_SCRATCH(0), 0xaa);
    mmio_write8(b + VGPU_SCRATCH(0) + 3, 0xab);
    mmio_write16(b + VGPU_SCRATCH(0), 0xbbbb);
    mmio_write16(b + VGPU_SCRATCH(0) + 2, 0xbcbc);
    mmio_write32(b + VGPU_SCRATCH(0) + 2, 0xcccccccc);
    mmio_write32(b + VGPU_SCRATCH(0) + 1, 0xdddddddd);
    mmio_write64(b + VGPU_SCRATCH(0), 0xeeeeeeeeeeeeeeeeull);
    uint32_t s0 = vgpu_read(&gpu, VGPU_SCRATCH(0)), s1 = vgpu_read(&gpu, VGPU_SCRATCH(1));
    CHECK(s0 == 0x11223344 && s1 == 0x55667788,
          "odd-size/misaligned register writes changed SCRATCH0/1 to 0x%08x 0x%08x (were 0x11223344 0x55667788)\n", s0, s1);

    /* GTT window: 4 or 8 bytes, naturally aligned; anything else reads all ones and is ignored. */
    uintptr_t g = vgpu_gtt_addr(&gpu, good_gm);
    uint64_t entry = vgpu_gtt_read(&gpu, good_gm);
    uint32_t glo = mmio_read32(g), ghi = mmio_read32(g + 4);
    uint16_t g16 = mmio_read16(g);
    uint8_t g8 = mmio_read8(g);
    uint32_t g32u = mmio_read32(g + 2);
    uint64_t g64u = mmio_read64(g + 4);
    mv_printf("GTT window: entry 0x%lx, dwords 0x%08x 0x%08x, 2-byte 0x%04x, 1-byte 0x%02x, misaligned dword 0x%08x, "
              "misaligned qword 0x%016lx\n", entry, glo, ghi, g16, g8, g32u, g64u);
    CHECK(entry == ((uint64_t)(uintptr_t)good_ram | 1), "GTT entry reads 0x%lx, written 0x%lx\n", entry,
          (uint64_t)(uintptr_t)good_ram | 1);
    CHECK(((uint64_t)ghi << 32 | glo) == entry, "GTT entry as two dwords 0x%08x 0x%08x differs from 8-byte read\n", ghi, glo);
    CHECK(g16 == 0xffff && g8 == 0xff && g32u == 0xffffffffu && g64u == ~0ull,
          "odd-size/misaligned GTT reads did not return all ones\n");
    mmio_write16(g, 0x1234);
    mmio_write8(g + 1, 0x56);
    mmio_write32(g + 2, 0x9abcdef0);
    mmio_write64(g + 4, 0x0123456789abcdefull);
    uint64_t after = vgpu_gtt_read(&gpu, good_gm);
    CHECK(after == entry, "odd-size/misaligned GTT writes changed the entry to 0x%lx\n", after);

    /* BAR2 outside the vGPU's aperture slice is unbacked: all ones, writes dropped. */
    uint64_t off = gpu.ap_base >= 4096 ? gpu.ap_base - 4096
                   : gpu.ap_base + gpu.ap_size < gpu.bar2_size ? gpu.ap_base + gpu.ap_size : VGPU_GM_NONE;
    if (off != VGPU_GM_NONE) {
        uintptr_t a = (uintptr_t)(gpu.bar2 + off);
        uint32_t before = mmio_read32(a);
        mmio_write32(a, 0x12345678);
        uint32_t again = mmio_read32(a);
        mv_printf("BAR2 at GM 0x%lx (outside the slice): 0x%08x, after a write 0x%08x\n", off, before, again);
        CHECK(before == 0xffffffffu && again == 0xffffffffu, "BAR2 outside the slice is not unbacked\n");
    } else {
        mv_puts("note: the aperture slice is all of BAR2; no unbacked BAR2 to probe");
    }
    mv_puts("checked: odd-size and misaligned register and GTT accesses");
}

/* ------------------------------------------------------------------ 2. GTT outside the slices */

static void test_gtt_outside(void) {
    uint64_t cand[5];
    unsigned n = 0;
    if (gpu.ap_base >= 4096) cand[n++] = gpu.ap_base - 4096;
    if (gpu.ap_base + gpu.ap_size < gpu.aperture_total) cand[n++] = gpu.ap_base + gpu.ap_size;
    if (gpu.hid_base > gpu.aperture_total) cand[n++] = gpu.hid_base - 4096;
    if (gpu.hid_base + gpu.hid_size < gpu.gm_size) cand[n++] = gpu.hid_base + gpu.hid_size;
    if (gpu.gm_size < (4ull << 30)) cand[n++] = gpu.gm_size;       /* beyond GM, still inside the window */
    uint64_t want = (uint64_t)(uintptr_t)good_ram | VGPU_GTT_VALID;
    for (unsigned i = 0; i < n; i++) {
        uint64_t gm = cand[i];
        if (vgpu_gm_in_slices(&gpu, gm, 4096)) continue;
        vgpu_gtt_write(&gpu, gm, want);
        uint64_t r = vgpu_gtt_read(&gpu, gm);
        uintptr_t a = vgpu_gtt_addr(&gpu, gm);
        mmio_write32(a, (uint32_t)want);        /* and as two halves */
        mmio_write32(a + 4, 0);
        uint64_t r2 = vgpu_gtt_read(&gpu, gm);
        mv_printf("GTT entry for GM 0x%lx (outside the slices): written 0x%lx, reads 0x%lx / 0x%lx (halves)\n", gm,
                  want, r, r2);
        CHECK(r == 0 && r2 == 0, "GTT entry outside the slices (GM 0x%lx) reads 0x%lx / 0x%lx, not 0\n", gm, r, r2);
    }
    /* Inside the slices, two 4-byte halves make one entry. */
    uintptr_t a = vgpu_gtt_addr(&gpu, probe_gm);
    mmio_write32(a + 4, 0);
    mmio_write32(a, (uint32_t)(uintptr_t)probe_ram | 1);
    uint64_t r = vgpu_gtt_read(&gpu, probe_gm);
    CHECK(r == ((uint64_t)(uintptr_t)probe_ram | 1), "GTT entry written as halves reads 0x%lx\n", r);
    mv_puts("checked: GTT writes outside the slices are dropped");
}

/* ------------------------------------------------------------------ 3. GM-address registers */

static void test_gm_registers(void) {
    uint32_t start = vgpu_read(&gpu, VGPU_RING_START(VGPU_BCS));
    vgpu_write(&gpu, VGPU_RING_START(VGPU_BCS), (uint32_t)outside_gm);
    uint32_t s2 = vgpu_read(&gpu, VGPU_RING_START(VGPU_BCS));
    CHECK(s2 != (uint32_t)outside_gm, "RING_START accepted GM 0x%lx outside the slices\n", outside_gm);
    if (s2 != start) vgpu_ring_program(&gpu, VGPU_BCS);

    uint32_t surf = vgpu_read(&gpu, VGPU_REG_PRI_SURF);
    vgpu_write(&gpu, VGPU_REG_PRI_SURF, (uint32_t)outside_gm);
    uint32_t p2 = vgpu_read(&gpu, VGPU_REG_PRI_SURF);
    CHECK(p2 != (uint32_t)outside_gm, "PRI_SURF accepted GM 0x%lx outside the slices\n", outside_gm);
    mv_printf("RING_START / PRI_SURF write of GM 0x%lx: read back 0x%x / 0x%x (before 0x%x / 0x%x)\n", outside_gm, s2,
              p2, start, surf);
    mv_puts("checked: GM-address registers refuse addresses outside the slices");
}

/* ------------------------------------------------------------------ 4. GTT entries naming non-RAM pages */

struct target {
    const char *name;
    uint64_t gpa;
    int kind;        /* 0: no CPU check, 1: reads all ones, 2: BAR0 scratch registers, 3: fence-page guard, 4: LAPIC */
};

static uint64_t pick_hole(void) {
    static const uint64_t c[] = { 0xd0000000ull, 0xc0000000ull, 0xf0000000ull, 0xe0000000ull };
    for (unsigned i = 0; i < MV_ARRAY_SIZE(c); i++) {
        uint64_t a = c[i];
        int in0 = a >= gpu.bar0 && a < gpu.bar0 + gpu.bar0_size, in2 = a >= gpu.bar2 && a < gpu.bar2 + gpu.bar2_size;
        if (!in0 && !in2 && a >= gpu.ram_end) return a;
    }
    return 0;
}

static int blit_probe(uint32_t color, uint32_t *g_first, int *uniform) {
    struct vgpu_surface p = { probe_gm, 4096, 1024, 1 }, g = { good_gm, 4096, 1024, 1 };
    uint32_t buf[40];
    struct vgpu_cmds c;
    vgpu_cmds_init(&c, buf, MV_ARRAY_SIZE(buf));
    vgpu_color_blt(&c, &g, 0, 0, 1024, 1, 0x11111111);
    vgpu_color_blt(&c, &p, 0, 0, 1024, 1, color);
    vgpu_src_copy_blt(&c, &g, 0, 0, 1024, 1, &p, 0, 0);
    uint32_t seq = vgpu_submit(&gpu, VGPU_BCS, c.dw, c.len, VGPU_NOTIFY);
    int rc = seq ? vgpu_wait_irq(&gpu, VGPU_BCS, seq, VGPU_WAIT_TICKS) : -9;
    if (rc != 0) {
        struct vgpu_err er;
        vgpu_err_read(&gpu, &er);
        vgpu_err_print(&gpu, &er);
        mv_printf("BCS STATUS 0x%x ERROR_CODE 0x%x FAULT_ADDR 0x%lx fence %u/%u; recovering\n",
                  vgpu_read(&gpu, VGPU_STATUS(VGPU_BCS)), vgpu_read(&gpu, VGPU_ERROR_CODE(VGPU_BCS)),
                  vgpu_read64(&gpu, VGPU_FAULT_LO(VGPU_BCS)), vgpu_fence(&gpu, VGPU_BCS), seq);
        vgpu_engine_recover(&gpu, VGPU_BCS);
    }
    *g_first = good_ram[0];
    *uniform = 1;
    for (int i = 1; i < 1024; i++)
        if (good_ram[i] != good_ram[0]) { *uniform = 0; break; }
    return rc;
}

static void test_gtt_targets(void) {
    uint64_t beyond = ((gpu.ram_end + 0x1fffff) & ~0x1fffffull) + 0x100000;
    if (gpu.ram_end <= MV_MMIO_HOLE_START && beyond + 4096 > MV_MMIO_HOLE_START) beyond = MV_4GIB + 0x40000000ull;
    uint64_t hole = pick_hole();
    struct target t[] = {
        { "beyond the end of RAM", beyond, beyond < MV_MMIO_HOLE_START ? 1 : 0 },
        { "MMIO hole", hole, 1 },
        { "BAR0 (SCRATCH registers)", gpu.bar0 + 0x8000, 2 },
        { "BAR2 (own aperture, fence page)", gpu.bar2 + gpu.fence_page_gm, 3 },
        { "LAPIC", MV_LAPIC_BASE, 4 },
        { "host scratch page bus address", 0x000FFFFFFFFFF000ull, 0 },
        { "host allocation bus window", 0x000E000000000000ull, 0 },
        { "far beyond RAM (2^51)", 1ull << 51, 0 },
    };
    for (unsigned i = 0; i < VGPU_SCRATCH_COUNT; i++) vgpu_write(&gpu, VGPU_SCRATCH(i), 0x5c000000u | i);
    for (unsigned i = GUARD_FIRST; i < 1024; i++) gpu.fence_page[i] = GUARD_PATTERN(i);
    uint32_t lapic_ver = mmio_read32(MV_LAPIC_BASE + 0x30);

    /* Warm-up with a RAM page: the probe itself works. */
    vgpu_gtt_write(&gpu, probe_gm, (uint64_t)(uintptr_t)probe_ram | 1);
    uint32_t first;
    int uniform;
    int rc = blit_probe(0x00abcdef, &first, &uniform);
    CHECK(rc == 0 && uniform && first == 0x00abcdef && probe_ram[5] == 0x00abcdef,
          "probe blit through a RAM page: rc %d, copy-back 0x%08x (uniform %d), page 0x%08x\n", rc, first, uniform,
          probe_ram[5]);
    uint32_t bar2_probe_ram = mmio_read32((uintptr_t)vgpu_aperture(&gpu, probe_gm));

    for (unsigned k = 0; k < MV_ARRAY_SIZE(t); k++) {
        if (!t[k].gpa) continue;
        uint64_t e = t[k].gpa | VGPU_GTT_VALID;
        uint32_t color = 0x00a00000u + k * 0x1111u + 1;
        vgpu_gtt_write(&gpu, probe_gm, e);
        uint64_t back = vgpu_gtt_read(&gpu, probe_gm);
        uint32_t cpu_view = mmio_read32((uintptr_t)vgpu_aperture(&gpu, probe_gm));
        vgpu_irq_forget(&gpu, VGPU_IRQ_BCS_ERROR | VGPU_IRQ_BCS_REJECT);
        uint32_t err0 = vgpu_read(&gpu, VGPU_ERR_STATUS);
        rc = blit_probe(color, &first, &uniform);
        uint32_t err1 = vgpu_read(&gpu, VGPU_ERR_STATUS);
        mv_printf("GTT -> %s (GPA 0x%lx): reads back 0x%lx; BAR2 view 0x%08x; blit rc %d, copy-back 0x%08x%s\n",
                  t[k].name, t[k].gpa, back, cpu_view, rc, first, uniform ? " (uniform)" : " (NOT uniform)");
        CHECK(back == e, "%s: GTT entry reads back 0x%lx, written 0x%lx\n", t[k].name, back, e);
        CHECK(rc == 0, "%s: blit through the entry did not complete cleanly (%d)\n", t[k].name, rc);

        CHECK(!(err1 & 1) || (err0 & 1), "%s: the blit was rejected (ERR_STATUS 0x%x)\n", t[k].name, err1);
        CHECK(uniform && (first == color || first == 0),
              "%s: copying the page back gave 0x%08x (uniform %d), not the scratch page (0x%08x or 0)\n", t[k].name,
              first, uniform, color);
        if (cpu_view == bar2_probe_ram && bar2_probe_ram == 0x00abcdef)
            mv_printf("note: %s: BAR2 still shows the previously mapped RAM page\n", t[k].name);
        if (t[k].kind == 1) {
            uint32_t v0 = mmio_read32((uintptr_t)t[k].gpa), v1 = mmio_read32((uintptr_t)t[k].gpa + 0x400);
            CHECK(v0 == 0xffffffffu && v1 == 0xffffffffu, "%s: the target now reads 0x%08x 0x%08x\n", t[k].name, v0, v1);
        } else if (t[k].kind == 2) {
            unsigned bad = 0;
            for (unsigned i = 0; i < VGPU_SCRATCH_COUNT; i++)
                if (vgpu_read(&gpu, VGPU_SCRATCH(i)) != (0x5c000000u | i)) bad++;
            CHECK(bad == 0, "%s: %u SCRATCH registers changed\n", t[k].name, bad);
        } else if (t[k].kind == 3) {
            unsigned bad = 0;
            for (unsigned i = GUARD_FIRST; i < 1024; i++)
                if (gpu.fence_page[i] != GUARD_PATTERN(i)) bad++;
            CHECK(bad == 0, "%s: %u guard dwords of the fence page changed\n", t[k].name, bad);
        } else if (t[k].kind == 4) {
            uint32_t v = mmio_read32(MV_LAPIC_BASE + 0x30);
            CHECK(v == lapic_ver, "%s: LAPIC version register changed 0x%x -> 0x%x\n", t[k].name, lapic_ver, v);
        }
    }
    vgpu_gtt_write(&gpu, probe_gm, (uint64_t)(uintptr_t)probe_ram | 1);
    rc = blit_probe(0x00fedcba, &first, &uniform);
    CHECK(rc == 0 && uniform && first == 0x00fedcba, "probe blit after restoring the entry: rc %d, 0x%08x\n", rc, first);
    mv_puts("checked: GTT entries naming non-RAM pages reach only the scratch page");
}

/* ------------------------------------------------------------------ 5. rejected submissions */

struct rej {
    const char *name;
    int e;
    uint32_t reason, reason_alt;          /* alt 0: only `reason` */
    int level;                             /* -1: not checked */
    int ring_index;                        /* >= 0: offending command is body dword ring_index in the ring */
    uint64_t cmd_gm;                       /* else its GM (0: not checked) */
    int check_opcode;
    uint32_t opcode;
    int check_operand;
    uint64_t operand;
    int no_flush;                          /* body goes into the ring as is (no FLUSH after it) */
};

static unsigned cases_ok;

static void wait_ticks(uint64_t t) {
    uint64_t d = mv_deadline(t);
    while (!mv_expired(d)) cpu_relax();
}

/* Returns 1 if the case held (besides counting checks). */
static int reject_case(const struct rej *x, const uint32_t *body, uint32_t n, int (*harmless)(void)) {
    int e = x->e;
    struct vgpu_ring *r = &gpu.ring[e];
    unsigned f0 = failures;
    if (vgpu_ring_idle(&gpu, e, VGPU_WAIT_TICKS) != 0) mv_printf("note: %s was not idle before '%s'\n", ename(e), x->name);
    vgpu_err_clear(&gpu);
    vgpu_irq_forget(&gpu, VGPU_IRQ_REJECT(e) | VGPU_IRQ_ERROR(e) | VGPU_IRQ_USER(e));
    uint32_t count0 = vgpu_read(&gpu, VGPU_ERR_COUNT);
    *slot(SLOT_MARK) = 0;
    *slot(SLOT_MARK2) = 0;

    uint32_t buf[160];
    struct vgpu_cmds c;
    vgpu_cmds_init(&c, buf, MV_ARRAY_SIZE(buf));
    vgpu_store_dw(&c, slot_gm(SLOT_MARK), 0x4d41524b);
    uint32_t body_at = c.len;
    vgpu_raw(&c, body, n);
    uint32_t seq = r->seq + 1;
    if (!x->no_flush) vgpu_flush(&c, 1, r->fence_gm, seq, 1);
    vgpu_align_qword(&c);
    uint64_t cmd_gm = x->ring_index >= 0 ? r->gm + (r->tail + 4 * (body_at + (uint32_t)x->ring_index)) % r->bytes : x->cmd_gm;
    if (c.overflow || vgpu_ring_emit(&gpu, e, c.dw, c.len) != 0) {
        CHECK(0, "%s: could not build the submission\n", x->name);
        return 0;
    }
    if (!x->no_flush) r->seq = seq;
    vgpu_ring_kick(&gpu, e);

    uint32_t got = vgpu_irq_wait(&gpu, VGPU_IRQ_REJECT(e) | VGPU_IRQ_USER(e), VGPU_WAIT_TICKS);
    struct vgpu_err er;
    vgpu_err_read(&gpu, &er);
    mv_printf("[%s] on %s via %s doorbell:\n", x->name, ename(e), gpu.doorbell == VGPU_DOORBELL_PV ? "PV" : "TAIL");
    vgpu_err_print(&gpu, &er);
    CHECK(got & VGPU_IRQ_REJECT(e), "%s: no reject interrupt (bit %u; got 0x%x, fence %u/%u, marker 0x%x)\n", x->name,
          e ? 11 : 3, got, vgpu_fence(&gpu, e), seq, *slot(SLOT_MARK));
    CHECK(er.status & 1, "%s: ERR_STATUS 0x%x\n", x->name, er.status);
    CHECK(er.engine == (uint32_t)e, "%s: ERR_ENGINE %u, expected %d\n", x->name, er.engine, e);
    CHECK(er.reason == x->reason || (x->reason_alt && er.reason == x->reason_alt),
          "%s: ERR_REASON %u (%s), expected %u (%s)%s\n", x->name, er.reason, vgpu_reason_name(er.reason), x->reason,
          vgpu_reason_name(x->reason), x->reason_alt ? " or the alternative" : "");
    CHECK(er.count == count0 + 1, "%s: ERR_COUNT %u, was %u before\n", x->name, er.count, count0);
    if (x->level >= 0) CHECK(er.level == (uint32_t)x->level, "%s: ERR_LEVEL %u, expected %d\n", x->name, er.level, x->level);
    if (cmd_gm) CHECK(er.cmd_gm == cmd_gm, "%s: ERR_CMD_GM 0x%lx, expected 0x%lx\n", x->name, er.cmd_gm, cmd_gm);
    if (x->check_opcode) CHECK(er.opcode == x->opcode, "%s: ERR_OPCODE 0x%08x, expected 0x%08x\n", x->name, er.opcode, x->opcode);
    if (x->check_operand)
        CHECK(er.operand == x->operand, "%s: ERR_OPERAND 0x%lx, expected 0x%lx\n", x->name, er.operand, x->operand);
    uint32_t st = vgpu_read(&gpu, VGPU_STATUS(e)), ec = vgpu_read(&gpu, VGPU_ERROR_CODE(e));
    CHECK(st & VGPU_STATUS_ERROR, "%s: %s STATUS 0x%x has no error bit\n", x->name, ename(e), st);
    CHECK(ec == 0x100 + er.reason, "%s: ERROR_CODE 0x%x, expected 0x%x\n", x->name, ec, 0x100 + er.reason);
    CHECK(*slot(SLOT_MARK) == 0, "%s: the store before the offending command ran (marker 0x%x): not 'executed not at all'\n",
          x->name, *slot(SLOT_MARK));
    CHECK(!vgpu_seq_done(&gpu, e, seq) || x->no_flush, "%s: the FLUSH after the offending command ran\n", x->name);
    if (harmless) CHECK(harmless(), "%s: harmlessness check failed\n", x->name);

    /* While in error, further doorbells are ignored. */
    vgpu_cmds_init(&c, buf, MV_ARRAY_SIZE(buf));
    vgpu_store_dw(&c, slot_gm(SLOT_MARK2), 0x41474e4e);
    vgpu_align_qword(&c);
    vgpu_ring_emit(&gpu, e, c.dw, c.len);
    vgpu_ring_kick(&gpu, e);
    wait_ticks(SHORT_TICKS);
    CHECK(*slot(SLOT_MARK2) == 0, "%s: a doorbell while in error executed (marker 0x%x)\n", x->name, *slot(SLOT_MARK2));

    /* Recover and prove the engine works. */
    int rr = vgpu_engine_recover(&gpu, e);
    uint32_t st2 = vgpu_read(&gpu, VGPU_STATUS(e)), es = vgpu_read(&gpu, VGPU_ERR_STATUS);
    CHECK(rr == 0 && !(st2 & VGPU_STATUS_ERROR) && !(es & 1),
          "%s: recovery: rc %d, STATUS 0x%x, ERR_STATUS 0x%x\n", x->name, rr, st2, es);
    uint32_t okv = 0x0c000000u | (checks & 0xffffff);
    vgpu_cmds_init(&c, buf, MV_ARRAY_SIZE(buf));
    vgpu_store_dw(&c, slot_gm(SLOT_OK), okv);
    uint32_t s2 = vgpu_submit(&gpu, e, c.dw, c.len, VGPU_NOTIFY);
    int rc = s2 ? vgpu_wait_irq(&gpu, e, s2, VGPU_WAIT_TICKS) : -9;
    CHECK(rc == 0 && *slot(SLOT_OK) == okv, "%s: normal submission after recovery: rc %d, slot 0x%x (want 0x%x)\n",
          x->name, rc, *slot(SLOT_OK), okv);
    CHECK(*slot(SLOT_MARK) == 0 && *slot(SLOT_MARK2) == 0, "%s: rejected commands ran after the reset\n", x->name);
    int ok = failures == f0;
    if (ok) {
        cases_ok++;
        mv_printf("ok: %s refused (reason %u), reported, harmless; %s recovered\n", x->name, er.reason, ename(e));
    }
    return ok;
}

static int bcs_start_unchanged(void) {
    return vgpu_read(&gpu, VGPU_RING_START(VGPU_BCS)) == (uint32_t)gpu.ring[VGPU_BCS].gm;
}
static int scratch0_unchanged(void) { return vgpu_read(&gpu, VGPU_SCRATCH(0)) == 0x5a5a0001; }
static int good_gtt_unchanged(void) {
    return vgpu_gtt_read(&gpu, good_gm) == ((uint64_t)(uintptr_t)good_ram | 1);
}

static void test_rejections(void) {
    uint32_t body[64];
    struct vgpu_cmds c;
    struct vgpu_cmds bb;
    uint32_t hdr;

    /* LOAD_REGISTER_IMM to privileged registers. */
    gpu.doorbell = VGPU_DOORBELL_TAIL;
    vgpu_cmds_init(&c, body, 64);
    vgpu_lri1(&c, VGPU_RING_START(VGPU_BCS), (uint32_t)gpu.ring[VGPU_RCS].gm);
    reject_case(&(struct rej){ "LRI to BCS RING_START (0x22038) from RCS", VGPU_RCS, VGPU_REASON_REGISTER, 0, 0, 0, 0,
                               1, VGPU_CMD_LRI(1), 1, 0x22038, 0 }, c.dw, c.len, bcs_start_unchanged);

    /* GPRs are the command-load registers of the vGPU's policy table: allowed alone... */
    vgpu_cmds_init(&c, body, 64);
    vgpu_lri1(&c, VGPU_GPR(VGPU_BCS, 0), 0x600d0001);
    vgpu_store_dw(&c, slot_gm(SLOT_OK), 0x600d0002);
    uint32_t seq = vgpu_submit(&gpu, VGPU_BCS, c.dw, c.len, VGPU_NOTIFY);
    int rc = seq ? vgpu_wait_irq(&gpu, VGPU_BCS, seq, VGPU_WAIT_TICKS) : -9;
    CHECK(rc == 0 && *slot(SLOT_OK) == 0x600d0002, "LRI to a GPR (command-load) was not accepted: rc %d\n", rc);
    if (rc != 0) vgpu_engine_recover(&gpu, VGPU_BCS);
    /* ...but one privileged pair after it refuses the whole command. */
    vgpu_cmds_init(&c, body, 64);
    uint32_t pairs[4] = { VGPU_GPR(VGPU_BCS, 0), 0xbad00bad, VGPU_REG_IIR, 0xffffffffu };
    vgpu_lri(&c, pairs, 2);
    reject_case(&(struct rej){ "LRI to GPR0 + IIR (0x44308)", VGPU_BCS, VGPU_REASON_REGISTER, 0, 0, 0, 0, 1,
                               VGPU_CMD_LRI(2), 1, VGPU_REG_IIR, 0 }, c.dw, c.len, 0);

    /* SCRATCH is plain emulated storage in the vGPU (not command-load, unlike SoftGPU's CW set). */
    vgpu_write(&gpu, VGPU_SCRATCH(0), 0x5a5a0001);
    vgpu_cmds_init(&c, body, 64);
    vgpu_lri1(&c, VGPU_SCRATCH(0), 0xbad00bad);
    reject_case(&(struct rej){ "LRI to SCRATCH0 (emulated, not command-load)", VGPU_RCS, VGPU_REASON_REGISTER, 0, 0, 0, 0,
                               1, VGPU_CMD_LRI(1), 1, VGPU_SCRATCH(0), 0 }, c.dw, c.len, scratch0_unchanged);

    gpu.doorbell = VGPU_DOORBELL_PV;
    uint32_t gtt_off = VGPU_GTT_WINDOW + (uint32_t)(good_gm >> 12) * 8;
    vgpu_cmds_init(&c, body, 64);
    vgpu_lri1(&c, gtt_off, 0xd0000001);
    reject_case(&(struct rej){ "LRI into the GTT window", VGPU_RCS, VGPU_REASON_REGISTER, 0, 0, 0, 0, 1, VGPU_CMD_LRI(1),
                               1, gtt_off, 0 }, c.dw, c.len, good_gtt_unchanged);

    vgpu_cmds_init(&c, body, 64);
    vgpu_lri1(&c, VGPU_ERR_STATUS, 1);
    reject_case(&(struct rej){ "LRI to ERR_STATUS", VGPU_BCS, VGPU_REASON_REGISTER, 0, 0, 0, 0, 1, VGPU_CMD_LRI(1), 1,
                               VGPU_ERR_STATUS, 0 }, c.dw, c.len, 0);

    /* Operands outside the slices. */
    vgpu_cmds_init(&c, body, 64);
    vgpu_store_dw(&c, outside_gm, 0xbadbad01);
    reject_case(&(struct rej){ "STORE_DATA_IMM outside the slices", VGPU_RCS, VGPU_REASON_ADDRESS, 0, 0, 0, 0, 1,
                               VGPU_CMD_STORE_DW, 1, outside_gm, 0 }, c.dw, c.len, 0);

    gpu.doorbell = VGPU_DOORBELL_TAIL;
    uint64_t ap_end = gpu.ap_base + gpu.ap_size;
    struct vgpu_surface cross = { ap_end - 4096, 4096, 1024, 2 };    /* second row lies past the aperture slice */
    batch_start(&bb, 0);
    vgpu_store_dw(&bb, slot_gm(SLOT_MARK), 0x4d41524c);
    uint64_t blt_gm = vgpu_cmds_gm_here(&bb);
    vgpu_color_blt(&bb, &cross, 0, 0, 1024, 2, 0x00ff0000);
    vgpu_bb_end(&bb);
    vgpu_cmds_init(&c, body, 64);
    vgpu_bb_start(&c, batch_gm[0], vgpu_cmds_bytes(&bb), 0);
    reject_case(&(struct rej){ "COLOR_BLT in a batch whose extent crosses the end of the aperture slice", VGPU_BCS,
                               VGPU_REASON_ADDRESS, 0, 1, -1, blt_gm, 1, VGPU_CMD_COLOR_BLT, 1, ap_end - 4096, 0 },
                c.dw, c.len, 0);

    uint64_t hid_end = gpu.hid_base + gpu.hid_size;
    vgpu_cmds_init(&c, body, 64);
    vgpu_saxpy(&c, 4096, VGPU_F32_1, gpu.hid_base, hid_end - 4096);
    reject_case(&(struct rej){ "SAXPY with y running past the hidden slice", VGPU_RCS, VGPU_REASON_ADDRESS, 0, 0, 0, 0,
                               1, VGPU_CMD_SAXPY, 1, hid_end - 4096, 0 }, c.dw, c.len, 0);

    vgpu_cmds_init(&c, body, 64);
    vgpu_bb_start(&c, outside_gm, 64, 0);
    reject_case(&(struct rej){ "BATCH_BUFFER_START outside the slices", VGPU_BCS, VGPU_REASON_ADDRESS, 0, 0, 0, 0, 1,
                               VGPU_CMD_BB_START, 1, outside_gm, 0 }, c.dw, c.len, 0);

    /* Batch recursion. */
    gpu.doorbell = VGPU_DOORBELL_PV;
    batch_start(&bb, 1);
    vgpu_bb_start(&bb, batch_gm[1], 8 * 4, 1);     /* calls itself as a second-level batch */
    vgpu_bb_end(&bb);
    vgpu_noop(&bb); vgpu_noop(&bb); vgpu_noop(&bb);
    vgpu_cmds_init(&c, body, 64);
    vgpu_bb_start(&c, batch_gm[1], 8 * 4, 0);
    reject_case(&(struct rej){ "batch that starts itself as a second-level batch", VGPU_RCS, VGPU_REASON_NESTING, 0, 2,
                               -1, batch_gm[1], 1, VGPU_CMD_BB_START | VGPU_BB_SECOND_LEVEL, 0, 0, 0 }, c.dw, c.len, 0);

    for (int chain = 0; chain < 2; chain++) {
        struct vgpu_cmds b1, b2, b3;
        batch_start(&b3, 4);
        vgpu_store_dw(&b3, slot_gm(SLOT_MARK), 0x4d41524d);
        vgpu_bb_end(&b3);
        batch_start(&b2, 3);
        vgpu_bb_start(&b2, batch_gm[4], vgpu_cmds_bytes(&b3), !chain);
        vgpu_bb_end(&b2);
        batch_start(&b1, 2);
        vgpu_bb_start(&b1, batch_gm[3], vgpu_cmds_bytes(&b2), 1);
        vgpu_bb_end(&b1);
        vgpu_cmds_init(&c, body, 64);
        vgpu_bb_start(&c, batch_gm[2], vgpu_cmds_bytes(&b1), 0);
        hdr = VGPU_CMD_BB_START | (chain ? 0 : VGPU_BB_SECOND_LEVEL);
        reject_case(&(struct rej){ chain ? "3-level nest (ring -> batch -> 2nd level -> chain)"
                                         : "3-level nest (ring -> batch -> 2nd level -> call)",
                                   chain ? VGPU_BCS : VGPU_RCS, VGPU_REASON_NESTING, 0, 2, -1, batch_gm[3], 1, hdr, 0, 0, 0 },
                    c.dw, c.len, 0);
    }

    /* An endless chain: a first-level batch chaining to itself. */
    batch_start(&bb, 5);
    vgpu_bb_start(&bb, batch_gm[5], 16, 0);
    vgpu_cmds_init(&c, body, 64);
    vgpu_bb_start(&c, batch_gm[5], 16, 0);
    reject_case(&(struct rej){ "endless chain (a batch chaining to itself)", VGPU_RCS, VGPU_REASON_TOO_MANY_BATCHES,
                               VGPU_REASON_STEP_BUDGET, 1, -1, 0, 0, 0, 0, 0, 0 }, c.dw, c.len, 0);

    /* Malformed streams. */
    gpu.doorbell = VGPU_DOORBELL_TAIL;
    vgpu_cmds_init(&c, body, 64);
    vgpu_dword(&c, 0x20000000);                    /* client 1: reserved */
    vgpu_noop(&c);
    reject_case(&(struct rej){ "unknown command (client 1)", VGPU_BCS, VGPU_REASON_UNKNOWN_COMMAND, 0, 0, 0, 0, 1,
                               0x20000000, 0, 0, 0 }, c.dw, c.len, 0);

    vgpu_cmds_init(&c, body, 64);
    vgpu_saxpy(&c, 16, VGPU_F32_1, gpu.hid_base, gpu.hid_base + 4096);
    reject_case(&(struct rej){ "SAXPY on BCS", VGPU_BCS, VGPU_REASON_WRONG_ENGINE, 0, 0, 0, 0, 1, VGPU_CMD_SAXPY, 0, 0, 0 },
                c.dw, c.len, 0);

    vgpu_cmds_init(&c, body, 64);
    struct vgpu_surface s = { good_gm, 4096, 1024, 1 };
    vgpu_color_blt(&c, &s, 0, 0, 4, 1, 0x00ffffff);
    reject_case(&(struct rej){ "COLOR_BLT on RCS", VGPU_RCS, VGPU_REASON_WRONG_ENGINE, 0, 0, 0, 0, 1, VGPU_CMD_COLOR_BLT,
                               0, 0, 0 }, c.dw, c.len, 0);

    vgpu_cmds_init(&c, body, 64);
    uint32_t even_lri[4] = { 0x11000002, VGPU_SCRATCH(1), 1, 0 };   /* length field 2: 4 dwords, must be odd */
    vgpu_raw(&c, even_lri, 4);
    reject_case(&(struct rej){ "LOAD_REGISTER_IMM with an even length", VGPU_RCS, VGPU_REASON_INVALID_LENGTH, 0, 0, 0, 0,
                               1, 0x11000002, 0, 0, 0 }, c.dw, c.len, 0);

    vgpu_cmds_init(&c, body, 64);
    vgpu_color_blt(&c, &s, 0, 0, 4, 1, 0x00ffffff);
    c.len = 4;                                     /* header + 3 of 8 dwords before TAIL */
    reject_case(&(struct rej){ "COLOR_BLT running past TAIL", VGPU_BCS, VGPU_REASON_PAST_END, 0, 0, 0, 0, 1,
                               VGPU_CMD_COLOR_BLT, 0, 0, 1 }, c.dw, c.len, 0);

    batch_start(&bb, 6);
    vgpu_noop(&bb); vgpu_noop(&bb); vgpu_noop(&bb); vgpu_noop(&bb);
    vgpu_cmds_init(&c, body, 64);
    vgpu_bb_start(&c, batch_gm[6], 16, 0);
    reject_case(&(struct rej){ "batch without BATCH_BUFFER_END", VGPU_RCS, VGPU_REASON_PAST_END,
                               VGPU_REASON_INVALID_OPERAND, 1, -1, 0, 0, 0, 0, 0, 0 }, c.dw, c.len, 0);

    batch_start(&bb, 7);
    vgpu_noop(&bb);
    vgpu_bb_end(&bb);
    vgpu_cmds_init(&c, body, 64);
    vgpu_bb_start(&c, batch_gm[7], 6, 0);          /* length not a multiple of 4 */
    reject_case(&(struct rej){ "BATCH_BUFFER_START with length 6", VGPU_BCS, VGPU_REASON_INVALID_OPERAND,
                               VGPU_REASON_INVALID_LENGTH, 0, 0, 0, 1, VGPU_CMD_BB_START, 0, 0, 0 }, c.dw, c.len, 0);
}

/* ------------------------------------------------------------------ 6. changes after the doorbell */

static void test_change_after_doorbell(void) {
    const uint32_t A = 0x000000a1, B = 0x000000b2;
    uint32_t buf[16];
    struct vgpu_cmds c, bb;

    for (int pass = 0; pass < 2; pass++) {
        int pv = pass == 1;
        gpu.doorbell = pv ? VGPU_DOORBELL_PV : VGPU_DOORBELL_TAIL;
        /* Batch: STORE_DATA_IMM A; the guest rewrites the value to B right after the doorbell. */
        batch_start(&bb, 8);
        vgpu_store_dw(&bb, slot_gm(SLOT_CHANGE), A);
        vgpu_bb_end(&bb);
        volatile uint32_t *value = batch_cpu(8) + 3;
        *slot(SLOT_CHANGE) = 0;
        uint32_t seq = vgpu_submit_batch(&gpu, VGPU_RCS, batch_gm[8], vgpu_cmds_bytes(&bb), VGPU_NOTIFY);
        *value = B;
        int rc = vgpu_wait_irq(&gpu, VGPU_RCS, seq, VGPU_WAIT_TICKS);
        uint32_t got = *slot(SLOT_CHANGE);
        mv_printf("batch rewritten right after the %s doorbell: rc %d, fence slot 0x%x (A = 0x%x, B = 0x%x)\n",
                  pv ? "PV" : "TAIL", rc, got, A, B);
        if (!pv)
            CHECK(rc == 0 && got == A, "a batch changed after the TAIL doorbell: slot 0x%x, expected A 0x%x\n", got, A);
        else if (got != A)
            mv_printf("note: with the asynchronous PV doorbell the rewrite raced the mediator's copy (slot 0x%x)\n", got);
        /* Resubmitting the same batch now runs what it holds now. */
        *slot(SLOT_CHANGE) = 0;
        seq = vgpu_submit_batch(&gpu, VGPU_RCS, batch_gm[8], vgpu_cmds_bytes(&bb), VGPU_NOTIFY);
        rc = vgpu_wait_irq(&gpu, VGPU_RCS, seq, VGPU_WAIT_TICKS);
        CHECK(rc == 0 && *slot(SLOT_CHANGE) == B, "resubmitted batch (%s): rc %d, slot 0x%x, expected B 0x%x\n",
              pv ? "PV" : "TAIL", rc, *slot(SLOT_CHANGE), B);

        /* The ring itself: STORE_DATA_IMM A in the ring, value rewritten after the doorbell. */
        struct vgpu_ring *r = &gpu.ring[VGPU_BCS];
        vgpu_cmds_init(&c, buf, MV_ARRAY_SIZE(buf));
        vgpu_store_dw(&c, slot_gm(SLOT_CHANGE2), A);
        *slot(SLOT_CHANGE2) = 0;
        vgpu_ring_idle(&gpu, VGPU_BCS, VGPU_WAIT_TICKS);
        uint32_t pos = r->tail / 4 + 3;
        seq = vgpu_submit(&gpu, VGPU_BCS, c.dw, c.len, VGPU_NOTIFY);
        r->cpu[pos % (r->bytes / 4)] = B;
        rc = vgpu_wait_irq(&gpu, VGPU_BCS, seq, VGPU_WAIT_TICKS);
        got = *slot(SLOT_CHANGE2);
        mv_printf("ring rewritten right after the %s doorbell: rc %d, slot 0x%x\n", pv ? "PV" : "TAIL", rc, got);
        if (!pv)
            CHECK(rc == 0 && got == A, "the ring changed after the TAIL doorbell: slot 0x%x, expected A 0x%x\n", got, A);
        else if (got != A)
            mv_printf("note: with the asynchronous PV doorbell the ring rewrite raced the mediator's copy (slot 0x%x)\n", got);
    }
    mv_puts("checked: changes after the doorbell do not affect what runs");
}

/* ------------------------------------------------------------------ 7. a sweep over all of GM */

static void test_sweep(void) {
    uint64_t want = (uint64_t)(uintptr_t)good_ram | VGPU_GTT_VALID;
    unsigned gtt = 0, regs = 0, cmds = 0;
    for (uint64_t gm = 0; gm < gpu.gm_size; gm += 16ull << 20) {
        if (vgpu_gm_in_slices(&gpu, gm, 4096)) continue;
        vgpu_gtt_write(&gpu, gm, want);
        uint64_t r = vgpu_gtt_read(&gpu, gm);
        CHECK(r == 0, "sweep: GTT entry for GM 0x%lx outside the slices reads 0x%lx\n", gm, r);
        gtt++;
        if (gm >= (1ull << 32)) continue;
        uint32_t surf = vgpu_read(&gpu, VGPU_REG_PRI_SURF);
        vgpu_write(&gpu, VGPU_REG_PRI_SURF, (uint32_t)gm);
        CHECK(vgpu_read(&gpu, VGPU_REG_PRI_SURF) == surf, "sweep: PRI_SURF accepted GM 0x%lx\n", gm);
        regs++;
    }
    for (uint64_t gm = 0; gm < gpu.gm_size; gm += 512ull << 20) {
        if (vgpu_gm_in_slices(&gpu, gm, 1 << 16)) continue;
        uint32_t body[16];
        struct vgpu_cmds c;
        vgpu_cmds_init(&c, body, 16);
        vgpu_store_dw(&c, gm, 0xbadbad02);
        reject_case(&(struct rej){ "sweep: STORE_DATA_IMM into GM outside the slices", VGPU_RCS, VGPU_REASON_ADDRESS, 0, 0,
                                   0, 0, 1, VGPU_CMD_STORE_DW, 1, gm, 0 }, c.dw, c.len, 0);
        vgpu_cmds_init(&c, body, 16);
        vgpu_saxpy(&c, 1024, 0x3f800000u, gpu.hid_base, gm);
        reject_case(&(struct rej){ "sweep: SAXPY writing GM outside the slices", VGPU_RCS, VGPU_REASON_ADDRESS, 0, 0,
                                   0, 0, 0, 0, 0, 0, 0 }, c.dw, c.len, 0);
        struct vgpu_surface other = { gm, 4096, 1024, 16 };
        vgpu_cmds_init(&c, body, 16);
        vgpu_color_blt(&c, &other, 0, 0, 1024, 16, 0x00badbad);
        reject_case(&(struct rej){ "sweep: COLOR_BLT onto GM outside the slices", VGPU_BCS, VGPU_REASON_ADDRESS, 0, 0,
                                   0, 0, 0, 0, 0, 0, 0 }, c.dw, c.len, 0);
        cmds += 3;
    }
    mv_printf("checked: sweep over GM: %u GTT entries dropped, %u PRI_SURF writes refused, %u commands rejected\n",
              gtt, regs, cmds);
}

int main(const struct mv_boot_info *bi) {
    size_t rn = 0;
    int rok = 1;
    const char *rv = mv_cmdline_value((const char *)(uintptr_t)bi->cmdline_addr, bi->cmdline_len, "rounds", &rn);
    uint64_t rounds = rv ? mv_parse_u64(rv, rn, &rok) : 1;
    if (!rok || rounds == 0) rounds = 1;
    if (vgpu_init(&gpu, bi) != 0) {
        mv_puts("vgpu adversarial FAIL: no usable vGPU");
        return 1;
    }
    if (vgpu_irq_setup(&gpu, VGPU_VECTOR, VGPU_IRQ_DEFAULT) != 0 || vgpu_ring_init(&gpu, VGPU_RCS, 16) != 0 ||
        vgpu_ring_init(&gpu, VGPU_BCS, 16) != 0) {
        mv_puts("vgpu adversarial FAIL: interrupt or ring set-up");
        return 1;
    }
    good_ram = vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, 4096, &good_gm);
    probe_ram = vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, 4096, &probe_gm);
    for (int i = 0; i < BATCH_PAGES; i++)
        if (!vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, 4096, &batch_gm[i])) good_ram = 0;
    if (!good_ram || !probe_ram) {
        mv_puts("vgpu adversarial FAIL: out of aperture or RAM");
        return 1;
    }
    uint64_t cand[4] = { gpu.ap_base >= 4096 ? gpu.ap_base - 4096 : VGPU_GM_NONE,
                         gpu.ap_base + gpu.ap_size < gpu.aperture_total ? gpu.ap_base + gpu.ap_size : VGPU_GM_NONE,
                         gpu.hid_base + gpu.hid_size < gpu.gm_size ? gpu.hid_base + gpu.hid_size : VGPU_GM_NONE,
                         gpu.hid_base > gpu.aperture_total ? gpu.hid_base - 4096 : VGPU_GM_NONE };
    outside_gm = gpu.gm_size;    /* beyond GM if nothing else is free */
    for (int i = 0; i < 4; i++)
        if (cand[i] != VGPU_GM_NONE) { outside_gm = cand[i]; break; }
    mv_printf("outside GM used for operands: 0x%lx; good page GM 0x%lx, probe page GM 0x%lx\n", outside_gm, good_gm, probe_gm);

    test_access_sizes();
    for (uint64_t round = 0; round < rounds; round++) {
        test_gtt_outside();
        test_gm_registers();
        test_gtt_targets();
        test_rejections();
        test_change_after_doorbell();
        test_sweep();
        if (rounds > 1) mv_printf("vgpu adversarial: round %lu of %lu done, %u failed so far\n", round + 1, rounds, failures);
    }

    /* A last normal submission on each engine, by interrupt. */
    for (int e = 0; e < 2; e++) {
        uint32_t buf[8];
        struct vgpu_cmds c;
        vgpu_cmds_init(&c, buf, 8);
        vgpu_store_dw(&c, slot_gm(SLOT_OUT + e), 0x600d0000u + e);
        uint32_t seq = vgpu_submit(&gpu, e, c.dw, c.len, VGPU_NOTIFY);
        int rc = vgpu_wait_irq(&gpu, e, seq, VGPU_WAIT_TICKS);
        CHECK(rc == 0 && *slot(SLOT_OUT + e) == 0x600d0000u + e, "final submission on %s: rc %d\n", ename(e), rc);
    }
    mv_printf("vgpu adversarial: %u checks, %u failed; %u rejection cases held; interrupts: %u (seen 0x%x, spurious %u)\n",
              checks, failures, cases_ok, gpu.irq_count, gpu.irq_seen, gpu.irq_spurious);
    if (failures) {
        mv_printf("vgpu adversarial FAIL: %u check(s) failed\n", failures);
        return 1;
    }
    mv_puts("vgpu adversarial ok");
    return 0;
}
