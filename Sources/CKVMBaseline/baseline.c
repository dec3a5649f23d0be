#define _GNU_SOURCE
#include "baseline.h"
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int fail(struct mv_baseline_result *r, const char *what) {
    r->error = errno ? errno : EINVAL;
    snprintf(r->message, sizeof r->message, "%s: %s", what, strerror(r->error));
    return -1;
}

int mv_baseline_run(const uint8_t *code, size_t len, uint64_t entry, uint64_t mem_bytes,
                    uint64_t ioeventfd_addr, struct mv_baseline_result *r) {
    memset(r, 0, sizeof *r);
    int kvm = -1, vm = -1, vcpu = -1, efd = -1, rc = -1;
    void *mem = MAP_FAILED;
    struct kvm_run *run = MAP_FAILED;
    int run_size = 0;

    if ((kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0) { fail(r, "open /dev/kvm"); goto out; }
    if ((vm = ioctl(kvm, KVM_CREATE_VM, 0)) < 0) { fail(r, "KVM_CREATE_VM"); goto out; }
    uint64_t idmap = 0xfffbc000;
    if (ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0) { fail(r, "KVM_SET_IDENTITY_MAP_ADDR"); goto out; }
    if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL) < 0) { fail(r, "KVM_SET_TSS_ADDR"); goto out; }
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) { fail(r, "KVM_CREATE_IRQCHIP"); goto out; }
    struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
    if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0) { fail(r, "KVM_CREATE_PIT2"); goto out; }
    mem = mmap(NULL, mem_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) { fail(r, "mmap guest memory"); goto out; }
    if (0x100000 + len > mem_bytes) { errno = EINVAL; fail(r, "code does not fit"); goto out; }
    memcpy((uint8_t *)mem + 0x100000, code, len);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = mem_bytes, .userspace_addr = (uint64_t)mem };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) { fail(r, "KVM_SET_USER_MEMORY_REGION"); goto out; }
    if (ioeventfd_addr) {
        if ((efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) { fail(r, "eventfd"); goto out; }
        struct kvm_ioeventfd io = { .addr = ioeventfd_addr, .len = 4, .fd = efd };
        if (ioctl(vm, KVM_IOEVENTFD, &io) < 0) { fail(r, "KVM_IOEVENTFD"); goto out; }
    }
    if ((vcpu = ioctl(vm, KVM_CREATE_VCPU, 0)) < 0) { fail(r, "KVM_CREATE_VCPU"); goto out; }
    if ((run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)) <= 0) { fail(r, "KVM_GET_VCPU_MMAP_SIZE"); goto out; }
    run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) { fail(r, "mmap kvm_run"); goto out; }

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) { fail(r, "KVM_GET_SREGS"); goto out; }
    struct kvm_segment seg = { .base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 3, .present = 1,
                               .db = 1, .s = 1, .g = 1 };
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg;
    seg.selector = 0x18; seg.type = 0xb;
    sregs.cs = seg;
    sregs.cr0 = 0x11;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) { fail(r, "KVM_SET_SREGS"); goto out; }
    struct kvm_regs regs = { .rip = entry, .rflags = 2 };
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) { fail(r, "KVM_SET_REGS"); goto out; }

    struct timespec t0, t1, c0, c1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR) continue;
            fail(r, "KVM_RUN");
            goto out;
        }
        r->exits++;
        if (run->exit_reason == KVM_EXIT_IO) {
            if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == 0xf4) break;
            if (run->io.direction == KVM_EXIT_IO_IN) memset((uint8_t *)run + run->io.data_offset, 0xff, run->io.size);
        } else if (run->exit_reason == KVM_EXIT_MMIO) {
            if (!run->mmio.is_write) memset(run->mmio.data, 0xff, run->mmio.len);
        } else {
            errno = EINVAL;
            snprintf(r->message, sizeof r->message, "unexpected exit reason %u", run->exit_reason);
            r->error = EINVAL;
            goto out;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    r->seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    r->cpu_seconds = (double)(c1.tv_sec - c0.tv_sec) + (double)(c1.tv_nsec - c0.tv_nsec) / 1e9;
    rc = 0;
out:
    if (run != MAP_FAILED) munmap(run, run_size);
    if (vcpu >= 0) close(vcpu);
    if (efd >= 0) close(efd);
    if (vm >= 0) close(vm);
    if (kvm >= 0) close(kvm);
    if (mem != MAP_FAILED) munmap(mem, mem_bytes);
    return rc;
}

double mv_baseline_vm_lifecycle_ms(uint64_t mem_bytes) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) return -1;
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) { close(kvm); return -1; }
    uint64_t idmap = 0xfffbc000;
    ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &idmap);
    ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL);
    ioctl(vm, KVM_CREATE_IRQCHIP, 0);
    void *mem = mmap(NULL, mem_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem != MAP_FAILED) {
        struct kvm_userspace_memory_region region = {
            .slot = 0, .guest_phys_addr = 0, .memory_size = mem_bytes, .userspace_addr = (uint64_t)mem };
        ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region);
    }
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu >= 0) close(vcpu);
    close(vm);
    close(kvm);
    if (mem != MAP_FAILED) munmap(mem, mem_bytes);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
}

static __thread cpu_set_t saved_affinity;
static __thread int affinity_saved;

int mv_baseline_pin_here(void) {
    int cpu = sched_getcpu();
    if (cpu < 0) return -1;
    if (!affinity_saved) {
        if (sched_getaffinity(0, sizeof saved_affinity, &saved_affinity) < 0) return -1;
        affinity_saved = 1;
    }
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return sched_setaffinity(0, sizeof one, &one) < 0 ? -1 : cpu;
}

void mv_baseline_unpin(void) {
    if (!affinity_saved) return;
    sched_setaffinity(0, sizeof saved_affinity, &saved_affinity);
    affinity_saved = 0;
}
