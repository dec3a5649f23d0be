/*
 * mv.h: the minivisor 64-bit guest runtime.
 *
 * crt0 calls mv_runtime_init(bi) (GDT with user segments and a TSS per CPU, IDT with handlers for the
 * 32 exceptions, SYSCALL MSRs) and then int main(const struct mv_boot_info *bi); main's return value goes
 * to mv_exit. Structures follow docs/boot-protocol.md exactly.
 */
#ifndef MV_H
#define MV_H

#include "common.h"

/* ---- boot protocol (docs/boot-protocol.md) ---- */
#define MV_BOOT_MAGIC 0x4942564du          /* "MVBI", also in RSI at entry */
#define MV_BOOT_VERSION 1u
#define MV_MMAP_USABLE 1u
#define MV_MMAP_RESERVED 2u

struct mv_mmap_entry {
    uint64_t base, length;
    uint32_t type, reserved;
};

struct mv_boot_info {                      /* at 0x1000 */
    uint32_t magic;                        /* MV_BOOT_MAGIC */
    uint32_t version;                      /* 1 */
    uint32_t size;                         /* the doc says "sizeof(struct mv_boot_info) = 80", but the
                                              fields below add up to 72; guests accept size >= 72 */
    uint32_t cpu_count;                    /* number of vCPUs (APIC IDs 0..cpu_count-1) */
    uint64_t cmdline_addr;                 /* GPA of the NUL-terminated command line */
    uint32_t cmdline_len;                  /* bytes, not counting the NUL */
    uint32_t mmap_count;                   /* entries at mmap_addr */
    uint64_t mmap_addr;                    /* GPA of struct mv_mmap_entry[mmap_count] */
    uint64_t ram_bytes;                    /* total guest RAM */
    uint64_t ap_mailbox_addr;              /* GPA of struct mv_ap_mailbox (0x6000) */
    uint32_t ap_sipi_vector;               /* SIPI vector of the firmware AP trampoline (0x08) */
    uint32_t reserved0;
    uint64_t mp_table_addr;                /* GPA of the MP floating pointer structure */
};

struct mv_ap_mailbox {                     /* at 0x6000 */
    uint64_t entry;                        /* void entry(uint32_t apic_id, uint64_t arg) */
    uint64_t stack_top;                    /* RSP for the next AP to start */
    uint64_t arg;                          /* passed in RSI */
    uint32_t started;                      /* each AP increments this (lock xadd) once it has taken stack_top */
    uint32_t reserved;
};

_Static_assert(sizeof(struct mv_mmap_entry) == 24, "mv_mmap_entry layout");
_Static_assert(sizeof(struct mv_boot_info) == 72, "mv_boot_info layout (the fields of docs/boot-protocol.md)");
_Static_assert(sizeof(struct mv_ap_mailbox) == 32, "mv_ap_mailbox layout");

/* Fixed low-memory layout. */
#define MV_BOOT_INFO_ADDR   0x1000ul
#define MV_CMDLINE_ADDR     0x2000ul
#define MV_MMAP_ADDR        0x4000ul
#define MV_AP_MAILBOX_ADDR  0x6000ul
#define MV_AP_SIPI_VECTOR   0x08u
#define MV_MP_TABLE_ADDR    0x9fc00ul
#define MV_IMAGE_MIN        0x100000ul
#define MV_MMIO_HOLE_START  0xc0000000ul
#define MV_4GIB             0x100000000ul
#define MV_LAPIC_BASE       0xfee00000ul

/* The boot information block crt0 received (also at MV_BOOT_INFO_ADDR). */
extern const struct mv_boot_info *mv_boot_info;

/* Linker-script symbols: the whole image including .bss (page aligned). */
extern char __image_start[], __image_end[];

/* ---- CPUs ---- */
#define MV_MAX_CPUS 256                    /* xAPIC IDs are 8 bits: per-CPU data is indexed by APIC ID */

/* Selectors of the runtime's GDT (kernel ones equal the boot GDT's). */
#define MV_SEL_KCODE 0x08
#define MV_SEL_KDATA 0x10
#define MV_SEL_UDATA 0x1b                  /* 0x18 | RPL 3 */
#define MV_SEL_UCODE 0x23                  /* 0x20 | RPL 3 */
#define MV_SEL_TSS(cpu) (0x28 + 16 * (cpu))

static inline uint32_t mv_apic_id(void) { return mmio_read32(MV_LAPIC_BASE + 0x20) >> 24; }
static inline uint64_t read_cr2(void) { uint64_t v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline uint64_t read_cr3(void) { uint64_t v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline uint64_t read_rflags(void) { uint64_t v; __asm__ volatile("pushfq; popq %0" : "=r"(v)); return v; }

void mv_runtime_init(const struct mv_boot_info *bi);  /* called by crt0 on the BSP */

/* Bump allocator over the usable RAM right after the image (never freed; not zeroed). NULL when the
 * usable memory-map entry holding the image is exhausted. */
void *mv_alloc(uint64_t size, uint64_t align);
void mv_cpu_init(uint32_t apic_id);        /* GDT/TSS/IDT/SYSCALL MSRs for the calling CPU (APs: done for you) */

/* ---- interrupts and exceptions ---- */
struct mv_regs {                           /* what the ISR stubs push; handlers may modify it */
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error_code;           /* error_code is 0 for vectors without one */
    uint64_t rip, cs, rflags, rsp, ss;     /* the hardware frame; iretq resumes from it */
};
typedef void (*mv_handler_t)(struct mv_regs *regs);

/* Install handler for vector (0-255), or NULL to restore the default (print and mv_exit(99)).
 * The IDT is shared by all CPUs. */
void mv_set_handler(unsigned vector, mv_handler_t handler);
const char *mv_exception_name(unsigned vector);

/* ---- SMP (mailbox protocol of docs/boot-protocol.md) ---- */
typedef void (*mv_ap_entry_t)(uint32_t apic_id, uint64_t arg);
/*
 * Starts APs 1..cpu_count-1 one after the other (INIT, SIPI, wait for mailbox.started to change). Each
 * AP gets its own 32 KiB stack (mv_alloc), runs mv_cpu_init and then entry(apic_id, arg); when entry
 * returns it halts.
 * Returns the number of APs started, or -n if AP n did not start in time (about a second or more).
 */
int mv_start_aps(const struct mv_boot_info *bi, mv_ap_entry_t entry, uint64_t arg);

/* Rough spin timeout helper: rdtsc-based deadline, `ticks` from now. */
static inline uint64_t mv_deadline(uint64_t ticks) { return rdtsc() + ticks; }
static inline int mv_expired(uint64_t deadline) { return (int64_t)(rdtsc() - deadline) >= 0; }
#define MV_TIMEOUT_TICKS 8000000000ull       /* a few seconds on any plausible TSC */

/* ---- ring 3 ---- */
/*
 * Runs fn(arg) at CPL 3 (RFLAGS.IOPL = 3, so it may use in/out, e.g. mv_printf; interrupts off) and
 * returns its result. fn returns to ring 0 through SYSCALL. The user stack is the caller's own stack,
 * 8 KiB below its current depth (the 8 KiB between take exceptions from ring 3, TSS.RSP0), so keep
 * ring-3 stack use well inside what is left of the ring-0 stack. Not reentrant per CPU.
 */
uint64_t mv_run_user(uint64_t (*fn)(uint64_t), uint64_t arg);
/* Ring 3 is left through SYSCALL. Where the host's SYSCALL reaches LSTAR without leaving CPL 3 (seen on
 * kvm-pvm) the LSTAR stub falls back to a ud2 that the #UD entry recognises, and counts it here. */
extern volatile uint64_t mv_user_exit_fallbacks;
/* Likewise, where ring 3 runs with a hardware IOPL of 0 despite RFLAGS.IOPL = 3 (kvm-pvm), in/out in ring 3
 * raise #GP; the runtime's #GP handler then performs them in ring 0 and counts them here. */
extern volatile uint64_t mv_user_io_emulated;

int main(const struct mv_boot_info *bi);

#endif
