#define _GNU_SOURCE
#include "native_exec.h"

#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

void native_enter(native_state *state, void *code);
extern char native_exit[];

static native_result *shared_result;
static uint64_t code_base;

static void on_exception(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *g = uc->uc_mcontext.gregs;
    native_result *r = shared_result;
    r->signal = sig;
    r->vector = (int32_t)g[REG_TRAPNO];
    r->error_code = (uint64_t)g[REG_ERR];
    r->cr2 = (uint64_t)(uintptr_t)info->si_addr;   /* the faulting address for SIGSEGV (CR2) */
    static const int order[16] = { REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI,
                                   REG_R8, REG_R9, REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15 };
    for (int i = 0; i < 16; i++) r->state.gpr[i] = (uint64_t)g[order[i]];
    r->state.rip = (uint64_t)g[REG_RIP];
    r->state.rflags = (uint64_t)g[REG_EFL];
    if (uc->uc_mcontext.fpregs) r->state.mxcsr = uc->uc_mcontext.fpregs->mxcsr;
    _exit(0);
}

void *native_region_create(size_t pages) {
    void *p = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void native_region_destroy(void *region, size_t pages) { munmap(region, pages * 4096); }

int native_run(void *region, const uint8_t *code, size_t length, const native_state *in, native_result *out) {
    if (length > 4000) return -1;
    uint8_t *page = region;
    memcpy(page, code, length);
    /* jmp *0(%rip); .quad native_exit */
    static const uint8_t jump[6] = { 0xff, 0x25, 0, 0, 0, 0 };
    memcpy(page + length, jump, sizeof jump);
    uint64_t target = (uint64_t)(uintptr_t)native_exit;
    memcpy(page + length + 6, &target, 8);
    __builtin___clear_cache((char *)page, (char *)page + length + 14);

    native_result *r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) return -1;
    memset(r, 0, sizeof *r);
    r->vector = -2;
    pid_t pid = fork();
    if (pid < 0) { munmap(r, sizeof *r); return -1; }
    if (pid == 0) {
        shared_result = r;
        code_base = (uint64_t)(uintptr_t)page;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_exception;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        int sigs[] = { SIGSEGV, SIGILL, SIGTRAP, SIGFPE, SIGBUS };
        for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
        native_state s = *in;
        native_enter(&s, page);
        s.rip = code_base + length;
        r->state = s;
        r->vector = -1;
        _exit(0);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {}
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && r->vector != -2;
    if (ok) *out = *r;
    munmap(r, sizeof *r);
    return ok ? 0 : -1;
}
