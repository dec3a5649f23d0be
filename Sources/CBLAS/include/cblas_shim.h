#ifndef MINIVISOR_CBLAS_SHIM_H
#define MINIVISOR_CBLAS_SHIM_H

// OpenBLAS (Debian's libopenblas0), loaded at run time by mv_blas_load(): processes without a software GPU
// never map it, and a host without it falls back to SoftGPU's own kernels. Only what SoftGPU calls.

/// Loads libopenblas.so.0 once and limits it to one thread (the caller's). 0 when loaded, -1 when not
/// (the dlerror() text is in mv_blas_error()). Thread-safe; call it before any seccomp filter is loaded,
/// since loading opens files.
int mv_blas_load(void);
/// Why mv_blas_load failed, or "" when it did not.
const char *mv_blas_error(void);
/// OpenBLAS's configuration string (version, core), or "" when not loaded.
const char *mv_blas_config(void);

/// Row-major, untransposed C[m x n] = alpha * A[m x k] * B[k x n] + beta * C (cblas_sgemm). Only after
/// mv_blas_load() returned 0.
void mv_blas_sgemm(int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb,
                   float beta, float *c, int ldc);

#endif
