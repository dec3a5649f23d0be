/*
 * vgpu_fp.c: floating-point helpers of the vGPU library (fills, reference SAXPY/SGEMM, comparisons).
 * Built WITHOUT -mgeneral-regs-only: these functions use SSE and must only run in ring 3 (mv_run_user).
 * Interfaces pass floats as uint32_t bit patterns so integer-only code can call them.
 */
#include "vgpu/vgpu.h"

static inline float f32(uint32_t bits) {
    union { uint32_t u; float f; } v = { .u = bits };
    return v.f;
}

static inline uint32_t bits32(float f) {
    union { float f; uint32_t u; } v = { .f = f };
    return v.u;
}

void vgpu_fp_fill(uint32_t *p, uint64_t n, uint32_t mul, uint32_t add, uint32_t mod, uint32_t scale_f32) {
    float scale = f32(scale_f32);
    int32_t half = (int32_t)(mod / 2);
    uint32_t v = add % mod, step = mul % mod;
    for (uint64_t i = 0; i < n; i++) {
        p[i] = bits32((float)((int32_t)v - half) * scale);
        v += step;
        if (v >= mod) v -= mod;
    }
}

void vgpu_fp_saxpy_ref(uint32_t *y, const uint32_t *x, uint64_t n, uint32_t a_f32) {
    float a = f32(a_f32);
    for (uint64_t i = 0; i < n; i++)
        y[i] = bits32(a * f32(x[i]) + f32(y[i]));
}

void vgpu_fp_sgemm_ref(uint32_t m, uint32_t n, uint32_t k, uint32_t alpha_f32, uint32_t beta_f32,
                       const uint32_t *a, uint32_t lda, const uint32_t *b, uint32_t ldb, uint32_t *c, uint32_t ldc) {
    float alpha = f32(alpha_f32), beta = f32(beta_f32);
    for (uint32_t i = 0; i < m; i++) {
        for (uint32_t j = 0; j < n; j++) {
            float s = 0;
            for (uint32_t l = 0; l < k; l++)
                s += f32(a[(uint64_t)i * lda + l]) * f32(b[(uint64_t)l * ldb + j]);
            uint32_t *cij = &c[(uint64_t)i * ldc + j];
            /* beta = 0 overwrites C without reading it (BLAS semantics, as the GPU does). */
            *cij = bits32(beta == 0.0f ? alpha * s : alpha * s + beta * f32(*cij));
        }
    }
}

uint64_t vgpu_fp_compare(const uint32_t *got, const uint32_t *want, uint64_t n, uint32_t abs_tol_f32,
                         uint32_t rel_tol_f32, uint64_t *first) {
    float abs_tol = f32(abs_tol_f32), rel_tol = f32(rel_tol_f32);
    uint64_t bad = 0;
    *first = n;
    for (uint64_t i = 0; i < n; i++) {
        float g = f32(got[i]), w = f32(want[i]);
        float d = g - w;
        if (d < 0) d = -d;
        float aw = w < 0 ? -w : w;
        /* NaN compares false, so !(d <= tol) also catches NaN in either value. */
        if (!(d <= abs_tol + rel_tol * aw)) {
            if (bad == 0) *first = i;
            bad++;
        }
    }
    return bad;
}

int64_t vgpu_fp_milli(uint32_t f32_bits) {
    float f = f32(f32_bits);
    if (!(f == f)) return INT64_MIN;
    if (f > 9e15f) return INT64_MAX;
    if (f < -9e15f) return INT64_MIN + 1;
    return (int64_t)(f * 1000.0f);
}
