#define _GNU_SOURCE
#include "cseccomp.h"
#include <seccomp.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>
#include <linux/audit.h>

struct cseccomp_filter { scmp_filter_ctx ctx; };

// System call names for the reporter, resolved once before the first filter is loaded: the handler may
// not call libseccomp (not async-signal-safe).
#define NAME_TABLE_SIZE 512
static const char *syscall_names[NAME_TABLE_SIZE];
static pthread_once_t reporter_once = PTHREAD_ONCE_INIT;
static int reporter_error;

// The calling thread's label ("vcpu0, vcpu filter"); initial-exec TLS, so the handler reads it without
// calling into the dynamic linker.
#define LABEL_SIZE 96
static __thread char thread_label[LABEL_SIZE] __attribute__((tls_model("initial-exec")));

// The terminal settings the reporter restores before exiting (cseccomp_restore_terminal_on_report).
static struct termios report_termios;
static int report_termios_fd = -1;   // read and written with __atomic builtins

static size_t append(char *buf, size_t at, size_t cap, const char *s) {
    while (*s && at + 1 < cap) buf[at++] = *s++;
    return at;
}

static size_t append_number(char *buf, size_t at, size_t cap, long n) {
    char digits[24];
    int i = 0;
    unsigned long v = n < 0 ? (unsigned long)(-n) : (unsigned long)n;
    do { digits[i++] = (char)('0' + v % 10); v /= 10; } while (v && i < 23);
    if (n < 0 && at + 1 < cap) buf[at++] = '-';
    while (i > 0 && at + 1 < cap) buf[at++] = digits[--i];
    return at;
}

// Async-signal-safe: fixed buffers, write(2) and _exit(2) only (both allowed by every filter).
static void sigsys_handler(int sig, siginfo_t *info, void *context) {
    (void)sig; (void)context;
    char line[320];
    size_t n = 0;
    int nr = info->si_syscall;
    const char *name = (nr >= 0 && nr < NAME_TABLE_SIZE && syscall_names[nr]) ? syscall_names[nr] : "unknown";
    if (info->si_arch != AUDIT_ARCH_X86_64) name = "not the x86-64 system call ABI";
    n = append(line, n, sizeof line, "minivisor: seccomp refused system call ");
    n = append_number(line, n, sizeof line, nr);
    n = append(line, n, sizeof line, " (");
    n = append(line, n, sizeof line, name);
    n = append(line, n, sizeof line, ") on thread ");
    n = append(line, n, sizeof line, thread_label[0] ? thread_label : "(unlabelled)");
    n = append(line, n, sizeof line, ": rerun with --no-seccomp and report a bug\n");
    ssize_t left = (ssize_t)n;
    const char *p = line;
    while (left > 0) {
        ssize_t w = write(2, p, (size_t)left);
        if (w <= 0) break;
        p += w;
        left -= w;
    }
    int tty = __atomic_load_n(&report_termios_fd, __ATOMIC_ACQUIRE);
    if (tty >= 0) (void)tcsetattr(tty, TCSANOW, &report_termios);   // ioctl TCSETS, allowed by every filter
    _exit(CSECCOMP_EXIT_STATUS);
}

static void install_reporter(void) {
    for (int nr = 0; nr < NAME_TABLE_SIZE; nr++) {
        syscall_names[nr] = seccomp_syscall_resolve_num_arch(SCMP_ARCH_X86_64, nr);   // malloc'd, kept
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = sigsys_handler;
    sa.sa_flags = SA_SIGINFO;
    sigfillset(&sa.sa_mask);      // nothing interrupts the report
    if (sigaction(SIGSYS, &sa, NULL) != 0) reporter_error = -errno;
}

cseccomp_filter *cseccomp_filter_new(void) {
    cseccomp_filter *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    // MINIVISOR_SECCOMP_AUDIT=1 (a developer aid, see Seccomp.swift): allow and log instead of trapping.
    const char *audit = getenv("MINIVISOR_SECCOMP_AUDIT");
    f->ctx = seccomp_init(audit && audit[0] == '1' ? SCMP_ACT_LOG : SCMP_ACT_TRAP);
    if (!f->ctx) { free(f); return NULL; }
    // Other system call ABIs (int 0x80, x32) are reported too, instead of killing the thread silently.
    (void)seccomp_attr_set(f->ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_TRAP);
    // A binary tree of system call numbers: the hot calls need not walk the whole list.
    (void)seccomp_attr_set(f->ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
    if (seccomp_rule_add(f->ctx, SCMP_ACT_ALLOW, SCMP_SYS(exit), 0) != 0 ||
        seccomp_rule_add(f->ctx, SCMP_ACT_ALLOW, SCMP_SYS(exit_group), 0) != 0 ||
        seccomp_rule_add(f->ctx, SCMP_ACT_ALLOW, SCMP_SYS(rt_sigreturn), 0) != 0) {
        cseccomp_filter_free(f);
        return NULL;
    }
    return f;
}

void cseccomp_filter_free(cseccomp_filter *f) {
    if (!f) return;
    seccomp_release(f->ctx);
    free(f);
}

int cseccomp_syscall_number(const char *name) {
    int nr = seccomp_syscall_resolve_name_arch(SCMP_ARCH_X86_64, name);
    return nr == __NR_SCMP_ERROR ? -1 : nr;
}

int cseccomp_allow(cseccomp_filter *f, int nr) {
    return seccomp_rule_add(f->ctx, SCMP_ACT_ALLOW, nr, 0);
}

int cseccomp_allow_masked(cseccomp_filter *f, int nr, unsigned arg, uint64_t mask, uint64_t value) {
    return seccomp_rule_add(f->ctx, SCMP_ACT_ALLOW, nr, 1, SCMP_CMP(arg, SCMP_CMP_MASKED_EQ, mask, value));
}

int cseccomp_allow_ioctl_on(cseccomp_filter *f, int fd, unsigned long request) {
    return seccomp_rule_add(f->ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 2, SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)fd),
                            SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, (scmp_datum_t)(request & 0xffffffffu)));
}

void cseccomp_restore_terminal_on_report(int fd, const struct termios *saved) {
    if (saved) report_termios = *saved;
    __atomic_store_n(&report_termios_fd, saved ? fd : -1, __ATOMIC_RELEASE);
}

int cseccomp_prioritize(cseccomp_filter *f, int nr) {
    return seccomp_syscall_priority(f->ctx, nr, 255);
}

int cseccomp_load(cseccomp_filter *f, const char *label) {
    pthread_once(&reporter_once, install_reporter);
    if (reporter_error != 0) return reporter_error;
    // SIGSYS must be deliverable, or the kernel kills the process without the report.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGSYS);
    int r = pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    if (r != 0) return -r;
    strncpy(thread_label, label, LABEL_SIZE - 1);
    thread_label[LABEL_SIZE - 1] = 0;
    r = seccomp_load(f->ctx);
    if (r != 0) thread_label[0] = 0;
    return r;
}

const char *cseccomp_thread_label(void) {
    return thread_label[0] ? thread_label : NULL;
}
