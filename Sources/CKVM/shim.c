#define _GNU_SOURCE
#include "ckvm.h"
#include <sys/ioctl.h>
#include <stdlib.h>
#include <signal.h>
#include <errno.h>
#include <string.h>
#include <pthread.h>
#include <sys/eventfd.h>

#include <sys/mman.h>
int ckvm_memfd(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

int ckvm_eventfd(int semaphore, int nonblock) {
    int flags = EFD_CLOEXEC;
    if (semaphore) flags |= EFD_SEMAPHORE;
    if (nonblock) flags |= EFD_NONBLOCK;
    return eventfd(0, flags);
}

int ckvm_ioctl(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }
int ckvm_ioctl_int(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }

struct kvm_cpuid2 *ckvm_cpuid2_alloc(uint32_t nent) {
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + nent * sizeof(struct kvm_cpuid_entry2));
    if (c) c->nent = nent;
    return c;
}
struct kvm_cpuid_entry2 *ckvm_cpuid2_entries(struct kvm_cpuid2 *c) { return c->entries; }

struct kvm_msrs *ckvm_msrs_alloc(uint32_t n) {
    struct kvm_msrs *m = calloc(1, sizeof(*m) + n * sizeof(struct kvm_msr_entry));
    if (m) m->nmsrs = n;
    return m;
}
struct kvm_msr_entry *ckvm_msrs_entries(struct kvm_msrs *m) { return m->entries; }

struct kvm_msr_list *ckvm_msr_list_alloc(uint32_t n) {
    struct kvm_msr_list *l = calloc(1, sizeof(*l) + n * sizeof(uint32_t));
    if (l) l->nmsrs = n;
    return l;
}
uint32_t *ckvm_msr_list_indices(struct kvm_msr_list *l) { return l->indices; }

struct kvm_irq_routing *ckvm_irq_routing_alloc(uint32_t n) {
    struct kvm_irq_routing *r = calloc(1, sizeof(*r) + n * sizeof(struct kvm_irq_routing_entry));
    if (r) r->nr = n;
    return r;
}
struct kvm_irq_routing_entry *ckvm_irq_routing_entries(struct kvm_irq_routing *r) { return r->entries; }

static void kick_handler(int sig) { (void)sig; }

int ckvm_kick_signal(void) { return SIGRTMIN + 1; }

int ckvm_unblock_signal(int sig) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

int ckvm_install_kick_handler(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kick_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    if (sigaction(sig, &sa, NULL) != 0) return -errno;
    return 0;
}

#include <pthread.h>
void ckvm_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, 15);
    buf[15] = 0;
    pthread_setname_np(pthread_self(), buf);
}

#include <unistd.h>
long ckvm_stats_offset(int fd, const char *name) {
    struct kvm_stats_header h;
    if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) return -1;
    size_t each = sizeof(struct kvm_stats_desc) + h.name_size;
    struct kvm_stats_desc *d = malloc(each);
    if (!d) return -1;
    long found = -1;
    for (uint32_t i = 0; i < h.num_desc && found < 0; i++) {
        if (pread(fd, d, each, h.desc_offset + i * each) != (ssize_t)each) break;
        if (strncmp(d->name, name, h.name_size) == 0 && d->size >= 1) found = (long)h.data_offset + d->offset;
    }
    free(d);
    return found;
}

#include <sched.h>
#include <errno.h>
int ckvm_pin_thread(int cpu) {
    return ckvm_set_thread_cpus(&cpu, 1);
}

int ckvm_thread_cpus(int *out, int max) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) < 0) return -errno;
    int n = 0;
    for (int c = 0; c < CPU_SETSIZE && n < max; c++)
        if (CPU_ISSET(c, &set)) out[n++] = c;
    return n;
}

int ckvm_set_thread_cpus(const int *cpus, int n) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < n; i++)
        if (cpus[i] >= 0 && cpus[i] < CPU_SETSIZE) CPU_SET(cpus[i], &set);
    return sched_setaffinity(0, sizeof set, &set) < 0 ? -errno : 0;
}

int ckvm_current_cpu(void) { return sched_getcpu(); }
