// Per-thread seccomp filters for minivisor, built with libseccomp, and the SIGSYS reporter.
//
// A filter is an allow list; every other system call traps (SCMP_ACT_TRAP). The SIGSYS handler, installed
// once per process with sigaction, writes ONE line to stderr naming the thread, its filter and the refused
// system call (number and name, from a table filled before any filter is loaded), then _exit()s with
// CSECCOMP_EXIT_STATUS. Filters are loaded without TSYNC: each applies to the calling thread only (and to
// threads it creates later).
#ifndef CSECCOMP_H
#define CSECCOMP_H

#include <stdint.h>
#include <termios.h>

/// minivisor's exit status when a seccomp filter refused a system call (README "Exit status").
#define CSECCOMP_EXIT_STATUS 16

/// An allow list under construction (a libseccomp filter context with default action TRAP).
typedef struct cseccomp_filter cseccomp_filter;

/// A new filter: the default action traps (allows and logs, with MINIVISOR_SECCOMP_AUDIT=1 in the
/// environment); exit, exit_group and rt_sigreturn (which the SIGSYS handler itself needs) are already
/// allowed. NULL when libseccomp cannot allocate it.
cseccomp_filter *cseccomp_filter_new(void);
void cseccomp_filter_free(cseccomp_filter *f);

/// The x86-64 number of the system call `name`, or a negative value when libseccomp does not know it.
int cseccomp_syscall_number(const char *name);

/// Allows system call `nr` whatever its arguments. 0 or -errno.
int cseccomp_allow(cseccomp_filter *f, int nr);

/// Allows system call `nr` when (argument `arg` & `mask`) == `value` (one rule; add several for a set).
/// 0 or -errno.
int cseccomp_allow_masked(cseccomp_filter *f, int nr, unsigned arg, uint64_t mask, uint64_t value);

/// Allows ioctl(`fd`, `request`, ...) (the request's low 32 bits compared, as the kernel does). 0 or -errno.
int cseccomp_allow_ioctl_on(cseccomp_filter *f, int fd, unsigned long request);

/// Makes the reporter set terminal `fd` to `saved` (tcsetattr TCSANOW) before it exits; NULL forgets it.
/// Call before any thread that could be refused uses the terminal in another mode (the copy is published
/// with release ordering). Every filter allows ioctl(fd 0, TCSETS) for this.
void cseccomp_restore_terminal_on_report(int fd, const struct termios *saved);

/// Asks libseccomp to check system call `nr` early in the filter (for the hot ones, e.g. ioctl).
int cseccomp_prioritize(cseccomp_filter *f, int nr);

/// Installs the SIGSYS reporter (once per process), records `label` (the thread's name and filter, shown
/// by the reporter) for the calling thread, and loads `f` for the calling thread only. 0 or -errno.
int cseccomp_load(cseccomp_filter *f, const char *label);

/// The label recorded by cseccomp_load on this thread, or NULL when this thread loaded no filter.
const char *cseccomp_thread_label(void);

#endif
