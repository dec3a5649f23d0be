/* GDT (kernel + user segments, one TSS per CPU), IDT, exception dispatch, SYSCALL MSRs. */
#include "mv.h"

const struct mv_boot_info *mv_boot_info;

struct tss64 {
    uint32_t reserved0;
    uint64_t rsp0, rsp1, rsp2;
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap_base;
} __attribute__((packed));
_Static_assert(sizeof(struct tss64) == 104, "TSS layout");

struct idt_gate {
    uint16_t offset0, selector;
    uint8_t ist, type;
    uint16_t offset1;
    uint32_t offset2, zero;
};
_Static_assert(sizeof(struct idt_gate) == 16, "IDT gate layout");

struct __attribute__((packed)) table_ptr {
    uint16_t limit;
    uint64_t base;
};

#define GDT_FIXED 5
/* Kernel code/data equal the boot GDT's 0x08/0x10; user data at 0x18 and user code at 0x20 are in the
 * order SYSRET needs (STAR[63:48] = 0x10: SS = 0x18 | 3, CS = 0x20 | 3). */
static uint64_t gdt[GDT_FIXED + 2 * MV_MAX_CPUS] __attribute__((aligned(16))) = {
    0,
    0x00af9a000000ffffull,  /* 0x08 kernel code, 64-bit */
    0x00cf92000000ffffull,  /* 0x10 kernel data */
    0x00cff2000000ffffull,  /* 0x18 user data (DPL 3) */
    0x00affa000000ffffull,  /* 0x20 user code, 64-bit (DPL 3) */
};
static struct tss64 tss[MV_MAX_CPUS] __attribute__((aligned(16)));
static struct idt_gate idt[256] __attribute__((aligned(16)));
static mv_handler_t handlers[256];
uint64_t mv_user_saved_rsp[MV_MAX_CPUS];   /* used by isr.S */

extern char mv_isr_stubs[];
extern char mv_syscall_entry[];
extern char mv_ud_entry[];
volatile uint64_t mv_user_exit_fallbacks;   /* incremented by isr.S */

#define MSR_EFER   0xc0000080u
#define MSR_STAR   0xc0000081u
#define MSR_LSTAR  0xc0000082u
#define MSR_SFMASK 0xc0000084u
#define EFER_SCE   1u

static void set_gate_to(unsigned v, unsigned dpl, uint64_t a) {
    struct idt_gate g = {
        .offset0 = (uint16_t)a, .selector = MV_SEL_KCODE, .ist = 0,
        .type = (uint8_t)(0x8e | (dpl << 5)),   /* present, 64-bit interrupt gate */
        .offset1 = (uint16_t)(a >> 16), .offset2 = (uint32_t)(a >> 32), .zero = 0,
    };
    idt[v] = g;
}

static void set_gate(unsigned v, unsigned dpl) {
    /* #UD first checks for mv_run_user's SYSCALL fallback (isr.S), then takes the ordinary stub. */
    set_gate_to(v, dpl, v == 6 ? (uint64_t)(uintptr_t)mv_ud_entry : (uint64_t)(uintptr_t)(mv_isr_stubs + 16 * v));
}

void mv_set_handler(unsigned vector, mv_handler_t handler) {
    vector &= 0xff;

    handlers[vector] = handler;
    set_gate(vector, (vector == 3 || vector == 4) ? 3 : 0);
}

static const char *const exception_names[32] = {
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound range",
    "#UD invalid opcode", "#NM device not available", "#DF double fault", "coprocessor segment overrun",
    "#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
    "#PF page fault", "reserved", "#MF x87 error", "#AC alignment check", "#MC machine check",
    "#XM SIMD exception", "#VE virtualization exception", "#CP control protection",
    "reserved", "reserved", "reserved", "reserved", "reserved", "reserved",
    "#HV hypervisor injection", "#VC VMM communication", "#SX security exception", "reserved",
};

const char *mv_exception_name(unsigned vector) {
    return vector < 32 ? exception_names[vector] : "interrupt";
}

volatile uint64_t mv_user_io_emulated;

/*
 * Ring-3 port I/O fallback. mv_run_user gives ring 3 RFLAGS.IOPL = 3, so in/out are legal there; a host
 * that runs guest ring 3 natively but keeps the hardware IOPL at 0 (kvm-pvm does) raises #GP instead.
 * Emulate the non-string forms (in/out with DX or imm8, 8/16/32 bits) here and step over them.
 */
static int emulate_user_io(struct mv_regs *r) {
    const uint8_t *ip = (const uint8_t *)(uintptr_t)r->rip;
    unsigned len = 0, size = 4;
    if (ip[len] == 0x66) { size = 2; len++; }
    uint8_t op = ip[len++];
    uint16_t port = (uint16_t)r->rdx;
    switch (op) {
    case 0xe4: case 0xe5: case 0xe6: case 0xe7:
        port = ip[len++];
        break;
    case 0xec: case 0xed: case 0xee: case 0xef:
        break;
    default:
        return 0;
    }
    if ((op & 1) == 0) size = 1;
    int is_out = (op & 2) != 0;
    uint64_t mask = size == 1 ? 0xff : size == 2 ? 0xffff : 0xffffffffull;
    if (is_out) {
        if (size == 1) outb(port, (uint8_t)r->rax);
        else if (size == 2) outw(port, (uint16_t)r->rax);
        else outl(port, (uint32_t)r->rax);
    } else {
        uint64_t v = size == 1 ? inb(port) : size == 2 ? inw(port) : inl(port);
        /* 32-bit results zero-extend into RAX, as the instruction does; 8/16-bit ones merge. */
        r->rax = size == 4 ? v : (r->rax & ~mask) | v;
    }
    r->rip += len;
    mv_user_io_emulated++;
    return 1;
}

void mv_isr_dispatch(struct mv_regs *r);
void mv_isr_dispatch(struct mv_regs *r) {
    unsigned v = (unsigned)(r->vector & 0xff);
    if (v == 13 && (r->cs & 3) == 3 && r->error_code == 0 && emulate_user_io(r))
        return;
    if (handlers[v]) {
        handlers[v](r);
        return;
    }
    mv_print_lock_break();   /* the fault may have hit while this CPU held the print lock */
    mv_printf("\nFATAL: unhandled exception vector %u (%s) error=0x%lx rip=0x%lx cs=0x%lx rflags=0x%lx "
              "rsp=0x%lx cr2=0x%lx apic=%u\n",
              v, mv_exception_name(v), r->error_code, r->rip, r->cs, r->rflags, r->rsp, read_cr2(),
              mv_apic_id());
    mv_exit(99);
}

void mv_cpu_init(uint32_t apic_id) {
    unsigned i = apic_id & (MV_MAX_CPUS - 1);
    struct tss64 *t = &tss[i];
    t->rsp0 = 0;                             /* set by mv_run_user, the only way into ring 3 */
    t->iomap_base = sizeof(struct tss64);   /* no I/O bitmap: ring 3 port access relies on IOPL 3 */

    uint64_t base = (uint64_t)(uintptr_t)t, limit = sizeof(struct tss64) - 1;
    /* Writing the descriptor anew also clears its busy bit, so mv_cpu_init may run twice. */
    gdt[GDT_FIXED + 2 * i] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
                             (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
    gdt[GDT_FIXED + 2 * i + 1] = base >> 32;

    struct table_ptr g = { sizeof gdt - 1, (uint64_t)(uintptr_t)gdt };
    struct table_ptr d = { sizeof idt - 1, (uint64_t)(uintptr_t)idt };
    /* CS stays 0x08: the new GDT's 0x08 is the same 64-bit code descriptor as the boot GDT's. */
    __asm__ volatile("lgdt %0\n\t"
                     "movl %1, %%eax\n\t"
                     "movl %%eax, %%ds\n\t"
                     "movl %%eax, %%es\n\t"
                     "movl %%eax, %%ss\n\t"
                     "movl %%eax, %%fs\n\t"
                     "movl %%eax, %%gs\n\t"
                     "ltr %w2\n\t"
                     "lidt %3"
                     : : "m"(g), "i"(MV_SEL_KDATA), "r"((uint32_t)MV_SEL_TSS(i)), "m"(d) : "rax", "memory");

    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SCE);
    wrmsr(MSR_STAR, ((uint64_t)0x10 << 48) | ((uint64_t)MV_SEL_KCODE << 32));
    wrmsr(MSR_LSTAR, (uint64_t)(uintptr_t)mv_syscall_entry);
    wrmsr(MSR_SFMASK, 0x47700);   /* clear TF, IF, DF, IOPL, NT, AC on SYSCALL */
}

/* Address of this CPU's TSS.RSP0 (unaligned in the packed TSS; written by isr.S only). */
void *mv_tss_rsp0(unsigned apic_id);
void *mv_tss_rsp0(unsigned apic_id) {
    return (char *)&tss[apic_id & (MV_MAX_CPUS - 1)] + __builtin_offsetof(struct tss64, rsp0);
}

static uint64_t heap_next, heap_end;

void *mv_alloc(uint64_t size, uint64_t align) {
    if (align < 16) align = 16;
    for (;;) {
        uint64_t old = heap_next;
        uint64_t start = (old + align - 1) & ~(align - 1);
        if (start < old || start + size < start || start + size > heap_end)
            return 0;
        if (__atomic_compare_exchange_n(&heap_next, &old, start + size, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return (void *)(uintptr_t)start;
    }
}

void mv_runtime_init(const struct mv_boot_info *bi) {
    mv_boot_info = bi;
    heap_next = heap_end = (uint64_t)(uintptr_t)__image_end;
    if (bi->magic == MV_BOOT_MAGIC) {
        const struct mv_mmap_entry *e = (const struct mv_mmap_entry *)(uintptr_t)bi->mmap_addr;
        for (uint32_t k = 0; k < bi->mmap_count && k < 128; k++)
            if (e[k].type == MV_MMAP_USABLE && e[k].base <= heap_next && e[k].base + e[k].length > heap_next)
                heap_end = e[k].base + e[k].length;
    }
    for (unsigned v = 0; v < 32; v++)
        set_gate(v, (v == 3 || v == 4) ? 3 : 0);
    mv_cpu_init(mv_apic_id());
}
