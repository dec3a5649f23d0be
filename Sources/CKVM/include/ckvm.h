// C shim for the typed KVM layer: the _IO/_IOR/_IOW request numbers, which do not import into
// Swift, plus small accessors for struct kvm_run's anonymous unions and signal plumbing for
// kicking vCPU threads out of KVM_RUN.
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <stdint.h>
#include <stddef.h>

// ---- ioctl request numbers ----
#define CKVM_REQ(name) static const unsigned long CKVM_##name = name;
CKVM_REQ(KVM_GET_API_VERSION)
CKVM_REQ(KVM_CREATE_VM)
CKVM_REQ(KVM_CHECK_EXTENSION)
CKVM_REQ(KVM_GET_VCPU_MMAP_SIZE)
CKVM_REQ(KVM_GET_SUPPORTED_CPUID)
CKVM_REQ(KVM_GET_MSR_INDEX_LIST)
CKVM_REQ(KVM_SET_USER_MEMORY_REGION)
CKVM_REQ(KVM_SET_TSS_ADDR)
CKVM_REQ(KVM_SET_IDENTITY_MAP_ADDR)
CKVM_REQ(KVM_CREATE_IRQCHIP)
CKVM_REQ(KVM_CREATE_PIT2)
CKVM_REQ(KVM_IRQ_LINE)
CKVM_REQ(KVM_IRQ_LINE_STATUS)
CKVM_REQ(KVM_SIGNAL_MSI)
CKVM_REQ(KVM_IOEVENTFD)
CKVM_REQ(KVM_IRQFD)
CKVM_REQ(KVM_SET_GSI_ROUTING)
CKVM_REQ(KVM_CREATE_VCPU)
CKVM_REQ(KVM_RUN)
CKVM_REQ(KVM_GET_REGS)
CKVM_REQ(KVM_SET_REGS)
CKVM_REQ(KVM_GET_SREGS)
CKVM_REQ(KVM_SET_SREGS)
CKVM_REQ(KVM_GET_FPU)
CKVM_REQ(KVM_SET_FPU)
CKVM_REQ(KVM_GET_XSAVE)
CKVM_REQ(KVM_SET_XSAVE)
CKVM_REQ(KVM_GET_MSRS)
CKVM_REQ(KVM_SET_MSRS)
CKVM_REQ(KVM_SET_CPUID2)
CKVM_REQ(KVM_GET_LAPIC)
CKVM_REQ(KVM_SET_LAPIC)
CKVM_REQ(KVM_GET_MP_STATE)
CKVM_REQ(KVM_SET_MP_STATE)
CKVM_REQ(KVM_GET_VCPU_EVENTS)
CKVM_REQ(KVM_SET_VCPU_EVENTS)
CKVM_REQ(KVM_TRANSLATE)
CKVM_REQ(KVM_SET_GUEST_DEBUG)
CKVM_REQ(KVM_GET_STATS_FD)
#undef CKVM_REQ

// ioctl wrappers (the variadic libc ioctl does not import).
int ckvm_ioctl(int fd, unsigned long request, void *arg);
int ckvm_ioctl_int(int fd, unsigned long request, unsigned long arg);

// ---- struct kvm_run accessors ----
static inline uint32_t ckvm_run_exit_reason(const struct kvm_run *r) { return r->exit_reason; }
static inline void ckvm_run_set_immediate_exit(struct kvm_run *r, uint8_t v) { r->immediate_exit = v; }
static inline uint8_t ckvm_run_if_flag(const struct kvm_run *r) { return r->if_flag; }

// KVM_EXIT_IO: direction (0 in, 1 out), size, port, count, data offset from the start of kvm_run.
static inline void ckvm_run_io(const struct kvm_run *r, uint8_t *dir, uint8_t *size, uint16_t *port,
                               uint32_t *count, uint64_t *offset) {
    *dir = r->io.direction; *size = r->io.size; *port = r->io.port;
    *count = r->io.count; *offset = r->io.data_offset;
}
// KVM_EXIT_MMIO
static inline uint64_t ckvm_run_mmio_addr(const struct kvm_run *r) { return r->mmio.phys_addr; }
static inline uint32_t ckvm_run_mmio_len(const struct kvm_run *r) { return r->mmio.len; }
static inline uint8_t ckvm_run_mmio_is_write(const struct kvm_run *r) { return r->mmio.is_write; }
static inline uint8_t *ckvm_run_mmio_data(struct kvm_run *r) { return r->mmio.data; }
// KVM_EXIT_FAIL_ENTRY
static inline uint64_t ckvm_run_fail_entry_reason(const struct kvm_run *r) {
    return r->fail_entry.hardware_entry_failure_reason;
}
static inline uint32_t ckvm_run_fail_entry_cpu(const struct kvm_run *r) { return r->fail_entry.cpu; }
// KVM_EXIT_INTERNAL_ERROR
static inline uint32_t ckvm_run_internal_suberror(const struct kvm_run *r) { return r->internal.suberror; }
static inline uint32_t ckvm_run_internal_ndata(const struct kvm_run *r) { return r->internal.ndata; }
static inline uint64_t ckvm_run_internal_data(const struct kvm_run *r, uint32_t i) {
    return i < 16 ? r->internal.data[i] : 0;
}
// KVM_EXIT_EMULATION_FAILURE extra data (suberror 1 with KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
static inline uint64_t ckvm_run_emulation_flags(const struct kvm_run *r) { return r->emulation_failure.flags; }
static inline uint8_t ckvm_run_emulation_insn_size(const struct kvm_run *r) { return r->emulation_failure.insn_size; }
static inline const uint8_t *ckvm_run_emulation_insn_bytes(const struct kvm_run *r) { return r->emulation_failure.insn_bytes; }
// KVM_EXIT_SYSTEM_EVENT
static inline uint32_t ckvm_run_system_event_type(const struct kvm_run *r) { return r->system_event.type; }
// KVM_EXIT_DEBUG / exception
static inline uint32_t ckvm_run_ex_exception(const struct kvm_run *r) { return r->ex.exception; }
static inline uint32_t ckvm_run_ex_error_code(const struct kvm_run *r) { return r->ex.error_code; }
// KVM_EXIT_DEBUG (x86): the exception (1 = #DB, 3 = #BP), the linear PC, DR6 and DR7.
static inline uint32_t ckvm_run_debug_exception(const struct kvm_run *r) { return r->debug.arch.exception; }
static inline uint64_t ckvm_run_debug_pc(const struct kvm_run *r) { return r->debug.arch.pc; }
static inline uint64_t ckvm_run_debug_dr6(const struct kvm_run *r) { return r->debug.arch.dr6; }
static inline uint64_t ckvm_run_debug_dr7(const struct kvm_run *r) { return r->debug.arch.dr7; }

// ---- binary statistics (KVM_GET_STATS_FD) ----
// Finds the statistic `name` in the stats file `fd`: its byte offset from the start of the file, or -1.
long ckvm_stats_offset(int fd, const char *name);

// ---- kvm_cpuid2 / kvm_msrs helpers (flexible array members) ----
struct kvm_cpuid2 *ckvm_cpuid2_alloc(uint32_t nent);
struct kvm_cpuid_entry2 *ckvm_cpuid2_entries(struct kvm_cpuid2 *c);
struct kvm_msrs *ckvm_msrs_alloc(uint32_t nmsrs);
struct kvm_msr_entry *ckvm_msrs_entries(struct kvm_msrs *m);
struct kvm_msr_list *ckvm_msr_list_alloc(uint32_t n);
uint32_t *ckvm_msr_list_indices(struct kvm_msr_list *l);
struct kvm_irq_routing *ckvm_irq_routing_alloc(uint32_t n);
struct kvm_irq_routing_entry *ckvm_irq_routing_entries(struct kvm_irq_routing *r);

// Accessors for the union inside kvm_irq_routing_entry.
static inline void ckvm_routing_set_irqchip(struct kvm_irq_routing_entry *e, uint32_t gsi, uint32_t chip, uint32_t pin) {
    e->gsi = gsi; e->type = KVM_IRQ_ROUTING_IRQCHIP; e->flags = 0; e->u.irqchip.irqchip = chip; e->u.irqchip.pin = pin;
}
static inline void ckvm_routing_set_msi(struct kvm_irq_routing_entry *e, uint32_t gsi, uint32_t lo, uint32_t hi, uint32_t data) {
    e->gsi = gsi; e->type = KVM_IRQ_ROUTING_MSI; e->flags = 0;
    e->u.msi.address_lo = lo; e->u.msi.address_hi = hi; e->u.msi.data = data;
}

// Accessors for kvm_vcpu_events' exception part.
static inline void ckvm_events_inject_exception(struct kvm_vcpu_events *e, uint8_t nr, int has_error, uint32_t error) {
    e->exception.injected = 1; e->exception.nr = nr;
    e->exception.has_error_code = has_error ? 1 : 0; e->exception.error_code = error;
    e->flags = 0;
}

// ---- kicking vCPU threads ----
// Installs a no-op handler (without SA_RESTART) for `sig`, so pthread_kill(tid, sig) makes a
// blocking KVM_RUN return EINTR. Returns 0 or -errno.
int ckvm_install_kick_handler(int sig);
int ckvm_kick_signal(void);
// Unblocks `sig` in the calling thread (threads inherit their creator's mask, and libdispatch workers
// block everything). Returns 0 or an errno value.
int ckvm_unblock_signal(int sig);
// Names the calling thread (at most 15 characters are kept).
void ckvm_set_thread_name(const char *name);

// memfd_create(2) with MFD_CLOEXEC; -1 and errno on failure.
int ckvm_memfd(const char *name);

// eventfd(2) with EFD_CLOEXEC and optional EFD_SEMAPHORE / EFD_NONBLOCK.
int ckvm_eventfd(int semaphore, int nonblock);

// ---- thread placement (ThreadPlacement) ----
// Pins the calling thread to `cpu`; 0 or -errno.
int ckvm_pin_thread(int cpu);
// The CPUs the calling thread may run on, into `out` (at most `max`); their count, or -errno.
int ckvm_thread_cpus(int *out, int max);
// Lets the calling thread run on the CPUs `cpus[0..<n]`; 0 or -errno.
int ckvm_set_thread_cpus(const int *cpus, int n);
// The CPU the calling thread runs on now, or -1.
int ckvm_current_cpu(void);

#endif
