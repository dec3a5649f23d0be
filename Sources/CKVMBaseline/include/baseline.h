// The physical limit for the benchmarks: a minimal C KVM loop that runs the same guest bytes as
// minivisor does and handles its exits with as little work as possible.
#ifndef MV_BASELINE_H
#define MV_BASELINE_H
#include <stdint.h>
#include <stddef.h>

struct mv_baseline_result {
    double seconds;          // wall time of the KVM_RUN loop (first entry to the final exit)
    double cpu_seconds;      // CPU time of the process over the same loop (CLOCK_PROCESS_CPUTIME_ID)
    uint64_t exits;          // userspace exits handled
    int error;               // 0, or errno of the failing call
    char message[160];       // what failed
};

// Creates a VM like minivisor's (in-kernel irqchip, PIT2, `mem_bytes` of RAM at 0), copies `code` to
// 1 MiB, and runs it in 32-bit flat protected mode from `entry`. Port writes and MMIO accesses are
// acknowledged and counted; a write to port 0xf4 ends the run. If `ioeventfd_addr` is non-zero, a 4-byte
// MMIO ioeventfd is registered there first. Returns 0 on success.
int mv_baseline_run(const uint8_t *code, size_t len, uint64_t entry, uint64_t mem_bytes,
                    uint64_t ioeventfd_addr, struct mv_baseline_result *result);
// The host's floor for a VM's life: open /dev/kvm, create a VM with an in-kernel irqchip, register
// `mem_bytes` of RAM, create one vCPU, close everything. Returns milliseconds, or a negative value.
double mv_baseline_vm_lifecycle_ms(uint64_t mem_bytes);
// Pins the calling thread to the CPU it runs on now (threads it creates afterwards, such as minivisor's
// vCPU threads, inherit the pin), so that both sides of a comparison run on one CPU. Returns that CPU, or
// -1 if the affinity could not be set (the measurement then runs unpinned).
int mv_baseline_pin_here(void);
// Gives the calling thread back the CPUs it had before mv_baseline_pin_here.
void mv_baseline_unpin(void);
#endif
