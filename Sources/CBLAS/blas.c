#include "cblas_shim.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

// CBLAS enum values (cblas.h): CblasRowMajor = 101, CblasNoTrans = 111.
enum { ROW_MAJOR = 101, NO_TRANS = 111 };

typedef void (*sgemm_fn)(int order, int transa, int transb, int m, int n, int k, float alpha, const float *a, int lda,
                         const float *b, int ldb, float beta, float *c, int ldc);
typedef void (*set_threads_fn)(int);
typedef int (*shutdown_fn)(void);
typedef char *(*config_fn)(void);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static sgemm_fn sgemm;
static config_fn config;
static const char *error = "";

static void load(void) {
    void *h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!h) { const char *e = dlerror(); error = e ? e : "dlopen failed"; return; }
    set_threads_fn set_threads = (set_threads_fn)dlsym(h, "openblas_set_num_threads");
    sgemm_fn f = (sgemm_fn)dlsym(h, "cblas_sgemm");
    if (!set_threads || !f) { error = "libopenblas.so.0 lacks openblas_set_num_threads or cblas_sgemm"; return; }
    // One thread: each engine computes on its own thread, and OpenBLAS must not start threads (or hand work
    // to the one it started when loaded) that the seccomp filters do not expect.
    set_threads(1);
    // The pthread build starts its worker threads when it is loaded (here, on the thread creating the GPU,
    // which has no seccomp filter yet). With one thread they would only sleep, unfiltered, for the life of
    // the process: stop them (the call OpenBLAS itself makes before fork). Single-threaded calls do not
    // restart them.
    shutdown_fn shutdown = (shutdown_fn)dlsym(h, "blas_thread_shutdown_");
    if (shutdown) shutdown();
    config = (config_fn)dlsym(h, "openblas_get_config");
    sgemm = f;
}

int mv_blas_load(void) {
    pthread_once(&once, load);
    return sgemm ? 0 : -1;
}

const char *mv_blas_error(void) { return error; }

const char *mv_blas_config(void) { return sgemm && config ? config() : ""; }

void mv_blas_sgemm(int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb,
                   float beta, float *c, int ldc) {
    sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
