/*
 * vgpu.h: guest driver library for the minivisor vGPU (docs/vgpu.md on top of docs/softgpu.md).
 *
 * The library is freestanding C for the 64-bit guest runtime (runtime/mv.h). Everything in vgpu.c is
 * built with -mgeneral-regs-only and may run in ring 0 or ring 3, except what is marked "ring 0 only"
 * (anything that touches interrupts, the IDT, the LAPIC or page tables). vgpu_fp.c holds the
 * floating-point helpers; they are built without -mgeneral-regs-only and must only run in ring 3
 * (mv_run_user), because on hosts whose KVM emulates guest ring 0 most SSE instructions cannot be
 * emulated there.
 *
 * Typical use:
 *
 *   static struct vgpu gpu;
 *   if (vgpu_init(&gpu, bi) != 0) return 1;            // PCI scan, BARs, PV page, shared page
 *   vgpu_irq_setup(&gpu, VGPU_VECTOR, VGPU_IRQ_DEFAULT); // MSI + IDT + IER/IMR (ring 0)
 *   vgpu_ring_init(&gpu, VGPU_BCS, 16);                // 64 KiB ring + fence in the aperture
 *   uint64_t fb; void *ram = vgpu_gm_alloc_backed(&gpu, VGPU_APERTURE, 640 * 480 * 4, &fb);
 *   uint32_t buf[16]; struct vgpu_cmds c; vgpu_cmds_init(&c, buf, 16);
 *   vgpu_color_blt(&c, &(struct vgpu_surface){ fb, 2560, 640, 480 }, 0, 0, 640, 480, 0xff);
 *   uint32_t seq = vgpu_submit(&gpu, VGPU_BCS, c.dw, c.len, VGPU_NOTIFY);
 *   vgpu_wait_irq(&gpu, VGPU_BCS, seq, VGPU_WAIT_TICKS);
 */
#ifndef VGPU_H
#define VGPU_H

#include "mv.h"

/* ---- PCI identity (docs/vgpu.md section 1) ---- */
#define VGPU_PCI_VENDOR      0x4d56u
#define VGPU_PCI_DEVICE      0x0001u
#define VGPU_PCI_CLASS       0x038000u      /* class 0x03, subclass 0x80, prog-if 0x00 */
#define VGPU_BAR0_SIZE       (16ull << 20)
#define VGPU_GTT_WINDOW      0x800000u      /* BAR0 offset of the GTT window (one 8-byte entry per GM page) */
#define VGPU_GTT_WINDOW_SIZE 0x800000u

#define PCI_CFG_COMMAND      0x04
#define PCI_CMD_IO           0x1u
#define PCI_CMD_MEMORY       0x2u
#define PCI_CMD_BUS_MASTER   0x4u
#define PCI_CMD_INTX_DISABLE 0x400u

/* ---- SoftGPU registers (BAR0 offsets, docs/softgpu.md section 4) ---- */
#define VGPU_REG_GPU_ID           0x0000u
#define VGPU_REG_GM_SIZE_MB       0x0004u
#define VGPU_REG_APERTURE_SIZE_MB 0x0008u
#define VGPU_GPU_ID_VALUE         0x53464750u   /* "SFGP" */

#define VGPU_RCS 0
#define VGPU_BCS 1
#define VGPU_ENGINE_BASE(e)  ((e) ? 0x22000u : 0x2000u)
#define VGPU_RING_TAIL(e)    (VGPU_ENGINE_BASE(e) + 0x30u)
#define VGPU_RING_HEAD(e)    (VGPU_ENGINE_BASE(e) + 0x34u)
#define VGPU_RING_START(e)   (VGPU_ENGINE_BASE(e) + 0x38u)
#define VGPU_RING_CTL(e)     (VGPU_ENGINE_BASE(e) + 0x3Cu)
#define VGPU_STATUS(e)       (VGPU_ENGINE_BASE(e) + 0x40u)
#define VGPU_ERROR_CODE(e)   (VGPU_ENGINE_BASE(e) + 0x44u)
#define VGPU_FAULT_LO(e)     (VGPU_ENGINE_BASE(e) + 0x48u)
#define VGPU_FAULT_HI(e)     (VGPU_ENGINE_BASE(e) + 0x4Cu)
#define VGPU_ERROR_IP_LO(e)  (VGPU_ENGINE_BASE(e) + 0x50u)
#define VGPU_ERROR_IP_HI(e)  (VGPU_ENGINE_BASE(e) + 0x54u)
#define VGPU_RESET(e)        (VGPU_ENGINE_BASE(e) + 0x58u)
#define VGPU_CMD_COUNT(e)    (VGPU_ENGINE_BASE(e) + 0x5Cu)
#define VGPU_ACTHD(e)        (VGPU_ENGINE_BASE(e) + 0x74u)
#define VGPU_GPR(e, dword)   (VGPU_ENGINE_BASE(e) + 0x600u + 4u * (dword))
#define VGPU_RING_CTL_VALUE(pages) ((((uint32_t)(pages) - 1u) & 0x1ffu) << 12 | 1u)

#define VGPU_STATUS_ENABLED  (1u << 0)
#define VGPU_STATUS_BUSY     (1u << 1)
#define VGPU_STATUS_ERROR    (1u << 2)
#define VGPU_STATUS_IDLE     (1u << 3)

#define VGPU_REG_ISR 0x44300u
#define VGPU_REG_IMR 0x44304u
#define VGPU_REG_IIR 0x44308u
#define VGPU_REG_IER 0x4430Cu

#define VGPU_IRQ_RCS_USER   (1u << 0)
#define VGPU_IRQ_RCS_ERROR  (1u << 1)
#define VGPU_IRQ_RCS_IDLE   (1u << 2)
#define VGPU_IRQ_RCS_REJECT (1u << 3)     /* vGPU: submission rejected by the command scanner */
#define VGPU_IRQ_BCS_USER   (1u << 8)
#define VGPU_IRQ_BCS_ERROR  (1u << 9)
#define VGPU_IRQ_BCS_IDLE   (1u << 10)
#define VGPU_IRQ_BCS_REJECT (1u << 11)
#define VGPU_IRQ_VBLANK     (1u << 16)
#define VGPU_IRQ_FLIP_DONE  (1u << 17)
#define VGPU_IRQ_CURSOR_FLIP_DONE (1u << 18)
#define VGPU_IRQ_USER(e)    ((e) ? VGPU_IRQ_BCS_USER : VGPU_IRQ_RCS_USER)
#define VGPU_IRQ_ERROR(e)   ((e) ? VGPU_IRQ_BCS_ERROR : VGPU_IRQ_RCS_ERROR)
#define VGPU_IRQ_IDLE(e)    ((e) ? VGPU_IRQ_BCS_IDLE : VGPU_IRQ_RCS_IDLE)
#define VGPU_IRQ_REJECT(e)  ((e) ? VGPU_IRQ_BCS_REJECT : VGPU_IRQ_RCS_REJECT)
#define VGPU_IRQ_RCS_HANG   (1u << 4)     /* vGPU: the watchdog found an RCS submission hung and reset the vGPU */
#define VGPU_IRQ_BCS_HANG   (1u << 12)
#define VGPU_IRQ_HANG(e)    ((e) ? VGPU_IRQ_BCS_HANG : VGPU_IRQ_RCS_HANG)
/* Everything but vblank and the idle pulses. */
#define VGPU_IRQ_DEFAULT (VGPU_IRQ_RCS_USER | VGPU_IRQ_RCS_ERROR | VGPU_IRQ_RCS_REJECT | VGPU_IRQ_BCS_USER | \
                          VGPU_IRQ_BCS_ERROR | VGPU_IRQ_BCS_REJECT | VGPU_IRQ_FLIP_DONE | VGPU_IRQ_CURSOR_FLIP_DONE)

#define VGPU_SCRATCH(i)      (0x8000u + 4u * (i))
#define VGPU_SCRATCH_COUNT   64

#define VGPU_REG_PIPE_CONF    0x70008u
#define VGPU_REG_VBLANK_COUNT 0x70040u
#define VGPU_REG_FLIP_COUNT   0x70044u
#define VGPU_REG_CURSOR_FLIP_COUNT 0x70048u
#define VGPU_REG_DISPLAY_FAULTS 0x7004Cu
#define VGPU_REG_CUR_CTL      0x70080u
#define VGPU_REG_CUR_BASE     0x70084u
#define VGPU_REG_CUR_POS      0x70088u
#define VGPU_REG_PRI_CTL      0x70180u
#define VGPU_REG_PRI_STRIDE   0x70188u
#define VGPU_REG_PRI_SIZE     0x70190u
#define VGPU_REG_PRI_SURF     0x7019Cu
#define VGPU_PIPE_ENABLE      (1u << 31)
#define VGPU_PLANE_ENABLE     (1u << 31)
#define VGPU_FORMAT_XRGB8888  6u
#define VGPU_PRI_CTL_VALUE(enable) (((enable) ? VGPU_PLANE_ENABLE : 0u) | (VGPU_FORMAT_XRGB8888 << 26))

/* ---- PV information page (docs/vgpu.md section 2) ---- */
#define VGPU_PV_MAGIC          0x78000u
#define VGPU_PV_VERSION        0x78004u
#define VGPU_PV_VGPU_ID        0x78008u
#define VGPU_PV_APERTURE_BASE  0x78010u
#define VGPU_PV_APERTURE_SIZE  0x78018u
#define VGPU_PV_HIDDEN_BASE    0x78020u
#define VGPU_PV_HIDDEN_SIZE    0x78028u
#define VGPU_PV_GM_SIZE        0x78030u
#define VGPU_PV_SHARED_PAGE    0x78040u
#define VGPU_PV_DOORBELL(e)    (0x78100u + 4u * (e))
#define VGPU_PV_DEVICE_RESET   0x78108u      /* write 1: device-level reset (docs/vgpu.md section 4) */
#define VGPU_PV_MAGIC_VALUE    0x5550474du   /* "MGPU" */
#define VGPU_PV_VERSION_1_0    0x00010000u

/* ---- error register block (docs/vgpu.md section 6) ---- */
#define VGPU_ERR_STATUS   0x79000u
#define VGPU_ERR_ENGINE   0x79004u
#define VGPU_ERR_REASON   0x79008u
#define VGPU_ERR_OPCODE   0x7900cu
#define VGPU_ERR_CMD_GM   0x79010u
#define VGPU_ERR_LEVEL    0x79018u
#define VGPU_ERR_OPERAND  0x7901cu
#define VGPU_ERR_COUNT    0x79024u
#define VGPU_ERR_OFFSET   0x79028u
#define VGPU_ERR_HANG_COUNT 0x7902cu
#define VGPU_ERR_STATUS_REJECTED (1u << 0)
#define VGPU_ERR_STATUS_HANG     (1u << 1)

/* ---- statistics block (docs/vgpu.md section 7): read-only counters, low 32 bits ---- */
#define VGPU_STAT_BAD_ACCESS        0x7a000u
#define VGPU_STAT_PRIVILEGED_WRITES 0x7a004u
#define VGPU_STAT_REFUSED_ADDRESS   0x7a008u
#define VGPU_STAT_GTT_REJECTED      0x7a00cu
#define VGPU_STAT_GTT_DROPPED       0x7a010u
#define VGPU_STAT_SUBMISSIONS       0x7a014u
#define VGPU_STAT_REJECTIONS        0x7a018u

enum vgpu_reason {
    VGPU_REASON_UNKNOWN_COMMAND = 1,
    VGPU_REASON_WRONG_ENGINE = 2,
    VGPU_REASON_INVALID_LENGTH = 3,
    VGPU_REASON_PAST_END = 4,
    VGPU_REASON_ADDRESS = 5,
    VGPU_REASON_REGISTER = 6,
    VGPU_REASON_NESTING = 7,
    VGPU_REASON_TOO_MANY_BATCHES = 8,
    VGPU_REASON_STEP_BUDGET = 9,
    VGPU_REASON_INVALID_OPERAND = 10,
    VGPU_REASON_RING = 11,
    VGPU_REASON_UNREADABLE = 12,
    VGPU_REASON_HANG = 13,            /* not a rejection: the watchdog reset the vGPU */
};
const char *vgpu_reason_name(uint32_t reason);

/* ---- commands (docs/softgpu.md section 6) ---- */
#define VGPU_CMD_NOOP            0x00000000u
#define VGPU_CMD_USER_INTERRUPT  0x01000000u
#define VGPU_CMD_BB_END          0x05000000u
#define VGPU_CMD_DISPLAY_FLIP    0x0A000002u
#define VGPU_CMD_STORE_DW        0x10000002u
#define VGPU_CMD_STORE_QW        0x10000003u
#define VGPU_CMD_LRI(pairs)      (0x11000000u + 2u * (pairs) - 1u)
#define VGPU_CMD_FLUSH           0x13000002u
#define VGPU_CMD_BB_START        0x18800002u
#define VGPU_CMD_COLOR_BLT       0x54000006u
#define VGPU_CMD_SRC_COPY_BLT    0x54C0000Au
#define VGPU_CMD_SAXPY           0x76000005u
#define VGPU_CMD_SGEMM           0x7601000Du
#define VGPU_FLUSH_POST_SYNC     (1u << 14)
#define VGPU_FLUSH_NOTIFY        (1u << 8)
#define VGPU_BB_SECOND_LEVEL     (1u << 22)
#define VGPU_FLIP_PLANE(p)       ((uint32_t)(p) << 20)
#define VGPU_PLANE_PRIMARY 0
#define VGPU_PLANE_CURSOR  1
#define VGPU_LRI_MAX_PAIRS 63
#define VGPU_BATCH_MAX_BYTES (16u << 20)

/* f32 bit patterns for encoders (the library itself is integer-only). */
#define VGPU_F32_0   0x00000000u
#define VGPU_F32_0_5 0x3f000000u
#define VGPU_F32_1   0x3f800000u
#define VGPU_F32_1_5 0x3fc00000u
#define VGPU_F32_2   0x40000000u

/* A command buffer: dwords are appended at dw[len]. dw may point at ordinary memory or straight into
 * the aperture (BAR2) for a batch. Appends that do not fit set `overflow` and are dropped. */
struct vgpu_cmds {
    uint32_t *dw;
    uint32_t len, cap;      /* dwords */
    uint64_t gm;            /* GM address of dw[0] when the buffer lives in GM (batches), else 0 */
    int overflow;
};

/* A 32-bpp blit surface (clip bounds width x height, pitch in bytes). */
struct vgpu_surface {
    uint64_t gm;
    uint32_t pitch;
    uint16_t width, height;
};

void vgpu_cmds_init(struct vgpu_cmds *c, void *buf, uint32_t cap_dwords);
uint32_t vgpu_cmds_bytes(const struct vgpu_cmds *c);
uint64_t vgpu_cmds_gm_here(const struct vgpu_cmds *c);     /* GM address of the next dword */
void vgpu_raw(struct vgpu_cmds *c, const uint32_t *dw, uint32_t n);
void vgpu_dword(struct vgpu_cmds *c, uint32_t dw);
void vgpu_noop(struct vgpu_cmds *c);
void vgpu_align_qword(struct vgpu_cmds *c);                  /* NOOP-pad to an even dword count */
void vgpu_user_interrupt(struct vgpu_cmds *c);
void vgpu_bb_end(struct vgpu_cmds *c);
void vgpu_bb_start(struct vgpu_cmds *c, uint64_t gm, uint32_t length_bytes, int second_level);
void vgpu_store_dw(struct vgpu_cmds *c, uint64_t gm, uint32_t value);
void vgpu_store_qw(struct vgpu_cmds *c, uint64_t gm, uint64_t value);
void vgpu_lri(struct vgpu_cmds *c, const uint32_t *offset_value_pairs, uint32_t pairs);
void vgpu_lri1(struct vgpu_cmds *c, uint32_t offset, uint32_t value);
/* FLUSH; post-sync store of `value` at `gm` when post_sync, user interrupt when notify. */
void vgpu_flush(struct vgpu_cmds *c, int post_sync, uint64_t gm, uint32_t value, int notify);
void vgpu_display_flip(struct vgpu_cmds *c, unsigned plane, uint64_t gm, uint32_t stride);
/* COLOR_BLT [x1, x2) x [y1, y2) (signed 16-bit, clipped by the GPU to the surface). */
void vgpu_color_blt(struct vgpu_cmds *c, const struct vgpu_surface *dst, int x1, int y1, int x2, int y2,
                    uint32_t color);
void vgpu_src_copy_blt(struct vgpu_cmds *c, const struct vgpu_surface *dst, int x1, int y1, int x2, int y2,
                       const struct vgpu_surface *src, int src_x, int src_y);
void vgpu_saxpy(struct vgpu_cmds *c, uint32_t n, uint32_t a_f32, uint64_t x, uint64_t y);
void vgpu_sgemm(struct vgpu_cmds *c, uint32_t m, uint32_t n, uint32_t k, uint32_t alpha_f32, uint32_t beta_f32,
                uint64_t a, uint32_t lda, uint64_t b, uint32_t ldb, uint64_t cm, uint32_t ldc);

/* ---- the device ---- */
#define VGPU_APERTURE 0
#define VGPU_HIDDEN   1
#define VGPU_GM_NONE  (~0ull)

enum vgpu_doorbell { VGPU_DOORBELL_TAIL = 0, VGPU_DOORBELL_PV = 1 };

#define VGPU_NOTIFY 1               /* vgpu_submit flag: FLUSH raises the engine's user interrupt */

struct vgpu_ring {
    uint64_t gm;                    /* ring GM address (aperture) */
    uint32_t bytes;                 /* ring size */
    uint32_t pages;
    volatile uint32_t *cpu;         /* the ring through BAR2 */
    uint32_t tail;                  /* software tail (bytes) */
    uint32_t free_head;             /* ring offset known to be consumed (everything before the last wait-idle) */
    uint32_t seq;                   /* last sequence number submitted */
    uint64_t fence_gm;              /* FLUSH post-sync target */
    volatile uint32_t *fence;       /* the fence in guest RAM */
    uint32_t user_irqs_seen;        /* user interrupts consumed by vgpu_wait_irq */
    int ready;
};

struct vgpu {
    unsigned bus, dev, fn;
    uint64_t bar0, bar0_size, bar2, bar2_size;
    uint32_t id, pv_version;
    uint64_t ap_base, ap_size, hid_base, hid_size, gm_size;
    uint64_t aperture_total;        /* APERTURE_SIZE_MB, all vGPUs */
    uint64_t ap_next, hid_next;     /* GM bump allocators inside the slices */
    uint64_t ram_end;               /* end of the highest usable RAM region */
    unsigned warnings;              /* spec deviations vgpu_init noticed (printed as "vgpu: warning: ...") */

    volatile uint32_t *shared;      /* PV shared page (tail of engine e at dword 2 * e) */
    uint64_t shared_gpa;
    enum vgpu_doorbell doorbell;

    struct vgpu_ring ring[2];
    uint64_t fence_page_gm;         /* one aperture page: fences at 64 * e, the rest free for tests */
    volatile uint32_t *fence_page;  /* its guest RAM */

    /* interrupts (vgpu_irq_setup) */
    unsigned msi_cap, vector, apic_id;
    uint32_t irq_mask;
    volatile uint32_t irq_pending;  /* IIR bits recorded by the handler, not yet consumed by a waiter */
    volatile uint32_t irq_seen;     /* every IIR bit ever recorded */
    volatile uint32_t irq_count;    /* handler invocations */
    volatile uint32_t irq_bit_count[32];
    volatile uint32_t irq_spurious; /* handler found IIR == 0 */
    volatile uint32_t timer_ticks;
};

/* Set up everything up to (not including) rings and interrupts: PCI scan of bus 0, BAR sizing and
 * addresses (mapping BAR2 if it lies outside the boot identity map), memory decoding and bus
 * mastering, PV information page checks, GM allocators, PV shared page, fence page. Prints one line
 * describing the device. Returns 0, or -1 after printing why not. */
int vgpu_init(struct vgpu *v, const struct mv_boot_info *bi);

/* PCI configuration space of the vGPU (mechanism #1). */
uint32_t vgpu_cfg_read32(const struct vgpu *v, unsigned off);
uint16_t vgpu_cfg_read16(const struct vgpu *v, unsigned off);
uint8_t vgpu_cfg_read8(const struct vgpu *v, unsigned off);
void vgpu_cfg_write32(const struct vgpu *v, unsigned off, uint32_t val);
void vgpu_cfg_write16(const struct vgpu *v, unsigned off, uint16_t val);
/* Offset of capability `id` in config space, 0 if absent. */
unsigned vgpu_cfg_find_cap(const struct vgpu *v, uint8_t id);

/* BAR0 registers (aligned dwords). */
static inline uint32_t vgpu_read(const struct vgpu *v, uint32_t off) { return mmio_read32(v->bar0 + off); }
static inline void vgpu_write(const struct vgpu *v, uint32_t off, uint32_t val) { mmio_write32(v->bar0 + off, val); }
static inline uint64_t vgpu_read64(const struct vgpu *v, uint32_t lo_off) {
    return (uint64_t)vgpu_read(v, lo_off) | (uint64_t)vgpu_read(v, lo_off + 4) << 32;
}

/* ---- graphics memory ---- */
/* Page-aligned GM from the vGPU's own aperture or hidden slice; VGPU_GM_NONE when exhausted. */
uint64_t vgpu_gm_alloc(struct vgpu *v, int hidden, uint64_t bytes);
int vgpu_gm_in_slices(const struct vgpu *v, uint64_t gm, uint64_t bytes);
/* CPU address of aperture GM through BAR2 (BAR2 offset x is GM x). */
static inline void *vgpu_aperture(const struct vgpu *v, uint64_t gm) { return (void *)(uintptr_t)(v->bar2 + gm); }

/* GTT entry of the GM page holding gm (through the BAR0 window). */
static inline uintptr_t vgpu_gtt_addr(const struct vgpu *v, uint64_t gm) {
    return (uintptr_t)(v->bar0 + VGPU_GTT_WINDOW + (gm >> 12) * 8);
}
static inline void vgpu_gtt_write(const struct vgpu *v, uint64_t gm, uint64_t entry) { mmio_write64(vgpu_gtt_addr(v, gm), entry); }
static inline uint64_t vgpu_gtt_read(const struct vgpu *v, uint64_t gm) { return mmio_read64(vgpu_gtt_addr(v, gm)); }
#define VGPU_GTT_VALID 1ull
#define VGPU_GTT_READ_ONLY 2ull
#define VGPU_GTT_ADDR_MASK 0x000ffffffffff000ull
/* Map `pages` GM pages from gm to consecutive guest-physical pages from gpa (valid entries). */
void vgpu_gtt_map(struct vgpu *v, uint64_t gm, uint64_t gpa, uint64_t pages);
/* Back [gm, gm + bytes) with freshly allocated (physically contiguous, zeroed) guest RAM; returns the RAM
 * (NULL when out of memory). */
void *vgpu_gm_back(struct vgpu *v, uint64_t gm, uint64_t bytes);
/* vgpu_gm_alloc + vgpu_gm_back. */
void *vgpu_gm_alloc_backed(struct vgpu *v, int hidden, uint64_t bytes, uint64_t *gm_out);

/* ---- rings and submission ---- */
/* Allocate `pages` (1..512) of aperture for engine e's ring, back it and program RING_START/CTL/HEAD/TAIL. */
int vgpu_ring_init(struct vgpu *v, int e, unsigned pages);
/* (Re)program the ring registers of an initialised ring and reset the software tail (after RESET). */
int vgpu_ring_program(struct vgpu *v, int e);
/* Copy n dwords into the ring at the software tail (wrapping); does not ring the doorbell. Waits for
 * the engine's outstanding work when the ring is full. Returns 0, or -1 if there is no room. */
int vgpu_ring_emit(struct vgpu *v, int e, const uint32_t *dw, uint32_t n);
/* Tell the vGPU about the software tail: RING_TAIL write or PV doorbell, per v->doorbell. */
void vgpu_ring_kick(struct vgpu *v, int e);
void vgpu_ring_kick_tail(struct vgpu *v, int e);     /* always the trapped TAIL write */
void vgpu_ring_kick_pv(struct vgpu *v, int e);       /* always the PV shared page + doorbell */
/* Emit dw[0..n) + FLUSH (post-sync store of the next sequence number to the engine's fence, user
 * interrupt if flags & VGPU_NOTIFY) + NOOP padding, then kick. Returns the sequence number (0 on error). */
uint32_t vgpu_submit(struct vgpu *v, int e, const uint32_t *dw, uint32_t n, unsigned flags);
/* A first-level batch already in GM: BATCH_BUFFER_START (length in dword 3) + FLUSH, as vgpu_submit. */
uint32_t vgpu_submit_batch(struct vgpu *v, int e, uint64_t batch_gm, uint32_t bytes, unsigned flags);
static inline uint32_t vgpu_fence(const struct vgpu *v, int e) { return *v->ring[e].fence; }
static inline int vgpu_seq_done(const struct vgpu *v, int e, uint32_t seq) {
    return (int32_t)(vgpu_fence(v, e) - seq) >= 0;
}
/* Wait for seq by polling the fence (ring 0 or 3). 0 = done, -1 = timed out. */
int vgpu_wait_poll(struct vgpu *v, int e, uint32_t seq, uint64_t ticks);
/* Ring 0 only. Wait with sti; hlt for seq and for the user interrupt its FLUSH raised (submit it with
 * VGPU_NOTIFY). 0 = done; -1 timed out; -2 the engine's submission was rejected or the engine reported
 * an error (interrupt); -3 the fence arrived but no user interrupt did. */
int vgpu_wait_irq(struct vgpu *v, int e, uint32_t seq, uint64_t ticks);
/* Wait (polling) until everything submitted on e is done and treat the whole ring as free. */
int vgpu_ring_idle(struct vgpu *v, int e, uint64_t ticks);
#define VGPU_WAIT_TICKS (2 * MV_TIMEOUT_TICKS)

/* ---- interrupts (ring 0 only) ---- */
#define VGPU_VECTOR       0x40u
#define VGPU_TIMER_VECTOR 0x41u
/* Enable the LAPIC, install the handler for `vector`, program the MSI capability (address
 * 0xFEE00000 | apic_id << 12, data = vector), IMR = ~mask, IER = mask, and INTx disable. The handler reads
 * IIR, writes the bits back (W1C), sends LAPIC EOI and records them in irq_pending/irq_seen. */
int vgpu_irq_setup(struct vgpu *v, unsigned vector, uint32_t mask);
void vgpu_irq_set_mask(struct vgpu *v, uint32_t mask);
/* sti; hlt until one of `mask` is recorded (a LAPIC timer wakes the CPU every ~10 ms to check the
 * deadline). Returns the bits found (and removes them from irq_pending); 0 on timeout. */
uint32_t vgpu_irq_wait(struct vgpu *v, uint32_t mask, uint64_t ticks);
void vgpu_irq_forget(struct vgpu *v, uint32_t mask);   /* drop recorded-but-unconsumed bits */

/* ---- display ---- */
/* Primary plane: PRI_CTL (enable, XRGB8888), PRI_STRIDE, PRI_SIZE, PRI_SURF; PIPE_CONF enable. */
void vgpu_display_set(struct vgpu *v, uint64_t surface_gm, unsigned width, unsigned height, uint32_t stride);
void vgpu_display_off(struct vgpu *v);
/* Ask the VMM to write the current scanout as PNG (minivisor run --screenshot PATH): port 0xf5. */
#define VGPU_SCREENSHOT_PORT 0xf5
static inline void vgpu_screenshot(void) { outb(VGPU_SCREENSHOT_PORT, 1); }

/* ---- errors and recovery ---- */
struct vgpu_err {
    uint32_t status, engine, reason, opcode, level, count;
    uint64_t cmd_gm, operand;
};
void vgpu_err_read(const struct vgpu *v, struct vgpu_err *e);
void vgpu_err_print(const struct vgpu *v, const struct vgpu_err *e);
void vgpu_err_clear(const struct vgpu *v);                /* ERR_STATUS bit 0 is write-1-to-clear */
/* Engine recovery after a rejection or an engine error: RESET, clear ERR_STATUS, reprogram the ring. */
int vgpu_engine_recover(struct vgpu *v, int e);
/* After a hang interrupt (VGPU_IRQ_HANG): the watchdog has reset the whole vGPU (both rings disabled). Clears
 * the hang bits (IIR, ERR_STATUS) and programs every ring that was set up again (docs/vgpu.md section 4). */
int vgpu_hang_recover(struct vgpu *v);

/* ---- misc ---- */
/* Make [phys, phys + size) identity-mapped (2 MiB pages, user accessible) if the boot map does not cover
 * it yet. Ring 0 only. */
void vgpu_map_identity(uint64_t phys, uint64_t size);
/* A rough TSC frequency in kHz from CPUID leaves 0x15/0x16/0x40000010, or 0 when unknown. */
uint64_t vgpu_tsc_khz(void);

/* ---- floating-point helpers (vgpu_fp.c): ring 3 only ---- */
/* p[i] = (float)(((i * mul + add) % mod) - mod / 2) * scale where scale is an f32 bit pattern. Exactly
 * representable small values, so GPU and reference agree closely. */
void vgpu_fp_fill(uint32_t *p, uint64_t n, uint32_t mul, uint32_t add, uint32_t mod, uint32_t scale_f32);
/* y[i] = a * x[i] + y[i] */
void vgpu_fp_saxpy_ref(uint32_t *y, const uint32_t *x, uint64_t n, uint32_t a_f32);
/* C = alpha * A * B + beta * C (row-major, leading dimensions in elements). */
void vgpu_fp_sgemm_ref(uint32_t m, uint32_t n, uint32_t k, uint32_t alpha_f32, uint32_t beta_f32,
                       const uint32_t *a, uint32_t lda, const uint32_t *b, uint32_t ldb, uint32_t *c, uint32_t ldc);
/* Count elements with |got - want| > abs_tol + rel_tol * |want| (tolerances as f32 bit patterns); NaN in
 * either counts as a mismatch. *first gets the first bad index (or n). */
uint64_t vgpu_fp_compare(const uint32_t *got, const uint32_t *want, uint64_t n, uint32_t abs_tol_f32,
                         uint32_t rel_tol_f32, uint64_t *first);
/* value * 1000 rounded toward zero, for printing without %f. */
int64_t vgpu_fp_milli(uint32_t f32);

#endif
