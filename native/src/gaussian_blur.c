/* gaussian_blur: separable Gaussian with replicate border.
 *
 * Per output row: a vertical pass over the 2r+1 source rows (folded pairwise, the kernel is
 * symmetric) writes one float row into the middle of a replicate-padded buffer, then a
 * horizontal pass over that buffer produces the output row. Both passes treat the row as one
 * contiguous W*C array (a tap j pixels away is j*C floats away), so there are no per-channel
 * loops and no clamped indices in the hot loops; the border costs 2r copied pixels per row.
 * Each thread keeps its row buffer in sc_parallel_rows' scratch.
 *
 * Two implementations of the row passes:
 *  - AVX2+FMA (x86-64, chosen at run time when the CPU has it): blocks of 32 (vertical) and
 *    8 (horizontal) floats whose accumulators stay in registers across all taps, so each tap
 *    costs loads and one FMA instead of a load/modify/store of the whole row;
 *  - portable: tap-major loops over the row that any compiler vectorises.
 * Both compute the same sums in the same tap order per element.
 *
 * The same row machinery serves sharpen (unsharp mask fused into the output loop) and the float
 * Gaussian used by deblur. */
#include <math.h>
#include <stdlib.h>

#include "sc_common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SC_HAVE_AVX2_PATH 1
#define SC_AVX2 __attribute__((target("avx2,fma")))
#else
#define SC_HAVE_AVX2_PATH 0
#endif

void sc_gaussian_weights(float *k, int radius, double sigma)
{
    /* summed and divided in double so the float weights add up to 1 within rounding. The
     * centre weight is exactly 1 before normalising: for a sigma so small that 2 sigma^2
     * underflows to 0, exp(-0/0) would be NaN, while the limit is the identity kernel. */
    const double two_s2 = 2.0 * sigma * sigma;
    double sum = 0.0;
    for (int i = -radius; i <= radius; i++)
        sum += i == 0 ? 1.0 : exp(-(double)i * i / two_s2);
    for (int i = -radius; i <= radius; i++)
        k[i + radius] = (float)((i == 0 ? 1.0 : exp(-(double)i * i / two_s2)) / sum);
}

typedef struct {
    const void *src; /* uint8_t or float rows */
    void *dst;
    int h, w, c, r;
    const float *k; /* 2r+1 weights */
    float amount;   /* sharpen strength */
    int sharpen;    /* u8 only: out = in + amount * (in - blur) */
    int avx2;       /* use the AVX2+FMA row passes */
    int epilogue;   /* f32 only: sc_f32_epilogue */
    const uint8_t *obs;
    float eps;
} blur_ctx;

/* Scratch per thread: one row of (W + 2r) * C floats replicate-padded by r pixels, then an
 * accumulator row of W * C floats (portable path and float epilogues). */
static size_t blur_scratch(int w, int c, int r)
{
    return ((size_t)(w + 2 * r) * c + (size_t)w * c) * sizeof(float);
}

/* Copies the edge pixels of the row at pad + r*C into the r-pixel margins on both sides. */
static inline void replicate_margins(float *pad, int w, int c, int r)
{
    const float *first = pad + (size_t)r * c, *last = pad + (size_t)(r + w - 1) * c;
    for (int j = 0; j < r; j++)
        for (int ch = 0; ch < c; ch++) {
            pad[(size_t)j * c + ch] = first[ch];
            pad[(size_t)(r + w + j) * c + ch] = last[ch];
        }
}

/* Pointers to source rows y-r .. y+r with the border replicated (rows[r] is row y). */
static inline void source_rows(const uint8_t **rows, const uint8_t *src, int y, int h, size_t stride,
                               int r)
{
    for (int j = -r; j <= r; j++)
        rows[j + r] = src + (size_t)sc_clampi(y + j, 0, h - 1) * stride;
}

/* ---- portable path ---- */

SC_HOT static void vertical_u8(const uint8_t *const *mid, float *restrict row, size_t n, int r,
                               const float *restrict kc)
{
    const uint8_t *restrict centre = mid[0];
    const float k0 = kc[0];
    for (size_t i = 0; i < n; i++)
        row[i] = k0 * (float)centre[i];
    for (int j = 1; j <= r; j++) {
        const uint8_t *restrict up = mid[-j], *restrict dn = mid[j];
        const float kj = kc[j];
        for (size_t i = 0; i < n; i++)
            row[i] += kj * (float)(up[i] + dn[i]);
    }
}

SC_HOT static void vertical_f32(const float *const *mid, float *restrict row, size_t n, int r,
                                const float *restrict kc)
{
    const float *restrict centre = mid[0];
    const float k0 = kc[0];
    for (size_t i = 0; i < n; i++)
        row[i] = k0 * centre[i];
    for (int j = 1; j <= r; j++) {
        const float *restrict up = mid[-j], *restrict dn = mid[j];
        const float kj = kc[j];
        for (size_t i = 0; i < n; i++)
            row[i] += kj * (up[i] + dn[i]);
    }
}

/* acc[i] = sum_j k[j] * row[i + j*C] over the padded row (row points at its first pixel). */
SC_HOT static void horizontal(const float *restrict row, float *restrict acc, size_t n, int c,
                              int r, const float *restrict kc)
{
    const float k0 = kc[0];
    for (size_t i = 0; i < n; i++)
        acc[i] = k0 * row[i];
    for (int j = 1; j <= r; j++) {
        const float kj = kc[j];
        const float *restrict lo = row - (size_t)j * c, *restrict hi = row + (size_t)j * c;
        for (size_t i = 0; i < n; i++)
            acc[i] += kj * (lo[i] + hi[i]);
    }
}

SC_HOT static void store_u8(const float *restrict acc, const uint8_t *restrict centre,
                            uint8_t *restrict out, size_t n, int sharpen, float amount)
{
    const float a1 = 1.0f + amount;
    if (sharpen)
        for (size_t i = 0; i < n; i++)
            out[i] = sc_clamp_u8f(a1 * (float)centre[i] - amount * acc[i]);
    else
        for (size_t i = 0; i < n; i++)
            out[i] = sc_clamp_u8f(acc[i]);
}

/* ---- AVX2 + FMA path ---- */
#if SC_HAVE_AVX2_PATH

SC_AVX2 static inline __m256 avx2_load_u8(const uint8_t *p)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

SC_AVX2 static inline __m256 avx2_load_u8_pair(const uint8_t *a, const uint8_t *b)
{
    const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)a));
    const __m256i y = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b));
    return _mm256_cvtepi32_ps(_mm256_add_epi32(x, y));
}

/* Clamps to 0..255, rounds half up (as sc_clamp_u8f) and stores 8 bytes. */
SC_AVX2 static inline void avx2_store_u8(uint8_t *p, __m256 v)
{
    v = _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(255.0f));
    const __m256i q = _mm256_cvttps_epi32(_mm256_add_ps(v, _mm256_set1_ps(0.5f)));
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64((__m128i *)p, _mm_packus_epi16(w, w));
}

SC_AVX2 static void vertical_u8_avx2(const uint8_t *const *mid, float *restrict row, size_t n,
                                     int r, const float *restrict kc)
{
    size_t i = 0;
    const __m256 k0 = _mm256_set1_ps(kc[0]);
    for (; i + 32 <= n; i += 32) {
        const uint8_t *c = mid[0] + i;
        __m256 a0 = _mm256_mul_ps(k0, avx2_load_u8(c));
        __m256 a1 = _mm256_mul_ps(k0, avx2_load_u8(c + 8));
        __m256 a2 = _mm256_mul_ps(k0, avx2_load_u8(c + 16));
        __m256 a3 = _mm256_mul_ps(k0, avx2_load_u8(c + 24));
        for (int j = 1; j <= r; j++) {
            const __m256 kj = _mm256_set1_ps(kc[j]);
            const uint8_t *up = mid[-j] + i, *dn = mid[j] + i;
            a0 = _mm256_fmadd_ps(kj, avx2_load_u8_pair(up, dn), a0);
            a1 = _mm256_fmadd_ps(kj, avx2_load_u8_pair(up + 8, dn + 8), a1);
            a2 = _mm256_fmadd_ps(kj, avx2_load_u8_pair(up + 16, dn + 16), a2);
            a3 = _mm256_fmadd_ps(kj, avx2_load_u8_pair(up + 24, dn + 24), a3);
        }
        _mm256_storeu_ps(row + i, a0);
        _mm256_storeu_ps(row + i + 8, a1);
        _mm256_storeu_ps(row + i + 16, a2);
        _mm256_storeu_ps(row + i + 24, a3);
    }
    for (; i < n; i++) {
        float a = kc[0] * (float)mid[0][i];
        for (int j = 1; j <= r; j++)
            a = fmaf(kc[j], (float)(mid[-j][i] + mid[j][i]), a);
        row[i] = a;
    }
}

SC_AVX2 static void vertical_f32_avx2(const float *const *mid, float *restrict row, size_t n,
                                      int r, const float *restrict kc)
{
    size_t i = 0;
    const __m256 k0 = _mm256_set1_ps(kc[0]);
    for (; i + 32 <= n; i += 32) {
        const float *c = mid[0] + i;
        __m256 a0 = _mm256_mul_ps(k0, _mm256_loadu_ps(c));
        __m256 a1 = _mm256_mul_ps(k0, _mm256_loadu_ps(c + 8));
        __m256 a2 = _mm256_mul_ps(k0, _mm256_loadu_ps(c + 16));
        __m256 a3 = _mm256_mul_ps(k0, _mm256_loadu_ps(c + 24));
        for (int j = 1; j <= r; j++) {
            const __m256 kj = _mm256_set1_ps(kc[j]);
            const float *up = mid[-j] + i, *dn = mid[j] + i;
            a0 = _mm256_fmadd_ps(kj, _mm256_add_ps(_mm256_loadu_ps(up), _mm256_loadu_ps(dn)), a0);
            a1 = _mm256_fmadd_ps(kj, _mm256_add_ps(_mm256_loadu_ps(up + 8), _mm256_loadu_ps(dn + 8)), a1);
            a2 = _mm256_fmadd_ps(kj, _mm256_add_ps(_mm256_loadu_ps(up + 16), _mm256_loadu_ps(dn + 16)), a2);
            a3 = _mm256_fmadd_ps(kj, _mm256_add_ps(_mm256_loadu_ps(up + 24), _mm256_loadu_ps(dn + 24)), a3);
        }
        _mm256_storeu_ps(row + i, a0);
        _mm256_storeu_ps(row + i + 8, a1);
        _mm256_storeu_ps(row + i + 16, a2);
        _mm256_storeu_ps(row + i + 24, a3);
    }
    for (; i < n; i++) {
        float a = kc[0] * mid[0][i];
        for (int j = 1; j <= r; j++)
            a = fmaf(kc[j], mid[-j][i] + mid[j][i], a);
        row[i] = a;
    }
}

/* Horizontal sum for the 8 outputs at row + i. */
SC_AVX2 static inline __m256 avx2_horizontal8(const float *row, size_t i, int c, int r,
                                              const float *kc)
{
    __m256 a = _mm256_mul_ps(_mm256_set1_ps(kc[0]), _mm256_loadu_ps(row + i));
    for (int j = 1; j <= r; j++) {
        const size_t o = (size_t)j * c;
        a = _mm256_fmadd_ps(_mm256_set1_ps(kc[j]),
                            _mm256_add_ps(_mm256_loadu_ps(row + i - o), _mm256_loadu_ps(row + i + o)), a);
    }
    return a;
}

static inline float horizontal1(const float *row, size_t i, int c, int r, const float *kc)
{
    float a = kc[0] * row[i];
    for (int j = 1; j <= r; j++)
        a = fmaf(kc[j], row[i - (size_t)j * c] + row[i + (size_t)j * c], a);
    return a;
}

SC_AVX2 static void output_u8_avx2(const float *row, const uint8_t *restrict centre,
                                   uint8_t *restrict out, size_t n, int c, int r, const float *kc,
                                   int sharpen, float amount)
{
    size_t i = 0;
    const float a1 = 1.0f + amount;
    if (sharpen) {
        const __m256 va = _mm256_set1_ps(amount), va1 = _mm256_set1_ps(a1);
        for (; i + 8 <= n; i += 8)
            avx2_store_u8(out + i, _mm256_fmsub_ps(va1, avx2_load_u8(centre + i),
                                                   _mm256_mul_ps(va, avx2_horizontal8(row, i, c, r, kc))));
        for (; i < n; i++)
            out[i] = sc_clamp_u8f(fmaf(a1, (float)centre[i], -(amount * horizontal1(row, i, c, r, kc))));
    } else {
        for (; i + 8 <= n; i += 8)
            avx2_store_u8(out + i, avx2_horizontal8(row, i, c, r, kc));
        for (; i < n; i++)
            out[i] = sc_clamp_u8f(horizontal1(row, i, c, r, kc));
    }
}

SC_AVX2 static void output_f32_avx2(const float *row, float *restrict out, size_t n, int c, int r,
                                    const float *kc)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, avx2_horizontal8(row, i, c, r, kc));
    for (; i < n; i++)
        out[i] = horizontal1(row, i, c, r, kc);
}

static int cpu_has_avx2_fma(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static int cpu_has_avx2_fma(void) { return 0; }
#endif

/* ---- row drivers ---- */

static void blur_rows_u8(const void *p, int y0, int y1, void *scratch)
{
    const blur_ctx *b = p;
    const int c = b->c, r = b->r;
    const size_t n = (size_t)b->w * c;
    const float *kc = b->k + r;
    float *pad = scratch;
    float *row = pad + (size_t)r * c;
    float *acc = pad + (size_t)(b->w + 2 * r) * c;
    const uint8_t *rows[2 * SC_MAX_RADIUS + 1];
    for (int y = y0; y < y1; y++) {
        source_rows(rows, b->src, y, b->h, n, r);
        const uint8_t *centre = rows[r];
        uint8_t *out = (uint8_t *)b->dst + (size_t)y * n;
#if SC_HAVE_AVX2_PATH
        if (b->avx2) {
            vertical_u8_avx2(rows + r, row, n, r, kc);
            replicate_margins(pad, b->w, c, r);
            output_u8_avx2(row, centre, out, n, c, r, kc, b->sharpen, b->amount);
            continue;
        }
#endif
        vertical_u8(rows + r, row, n, r, kc);
        replicate_margins(pad, b->w, c, r);
        horizontal(row, acc, n, c, r, kc);
        store_u8(acc, centre, out, n, b->sharpen, b->amount);
    }
}

/* What the float Gaussian does with each blurred row g (see sc_common.h). Runs on a row that
 * is still in L1, which saves deblur two passes over whole float images per iteration. */
SC_HOT static void f32_epilogue(const blur_ctx *b, const float *restrict g, float *restrict out,
                                size_t y, size_t n)
{
    if (b->epilogue == SC_F32_RL_RATIO) {
        const uint8_t *restrict d = b->obs + y * n;
        const float eps = b->eps;
        for (size_t i = 0; i < n; i++)
            out[i] = (float)d[i] / (g[i] > eps ? g[i] : eps);
    } else {
        for (size_t i = 0; i < n; i++)
            out[i] *= g[i];
    }
}

static void blur_rows_f32(const void *p, int y0, int y1, void *scratch)
{
    const blur_ctx *b = p;
    const int c = b->c, r = b->r;
    const size_t n = (size_t)b->w * c;
    const float *kc = b->k + r;
    float *pad = scratch;
    float *row = pad + (size_t)r * c;
    float *acc = pad + (size_t)(b->w + 2 * r) * c;
    const float *rows[2 * SC_MAX_RADIUS + 1];
    for (int y = y0; y < y1; y++) {
        for (int j = -r; j <= r; j++)
            rows[j + r] = (const float *)b->src + (size_t)sc_clampi(y + j, 0, b->h - 1) * n;
        float *out = (float *)b->dst + (size_t)y * n;
        float *g = b->epilogue == SC_F32_STORE ? out : acc;
#if SC_HAVE_AVX2_PATH
        if (b->avx2) {
            vertical_f32_avx2(rows + r, row, n, r, kc);
            replicate_margins(pad, b->w, c, r);
            output_f32_avx2(row, g, n, c, r, kc);
        } else
#endif
        {
            vertical_f32(rows + r, row, n, r, kc);
            replicate_margins(pad, b->w, c, r);
            horizontal(row, g, n, c, r, kc);
        }
        if (b->epilogue != SC_F32_STORE)
            f32_epilogue(b, g, out, (size_t)y, n);
    }
}

int sc_gaussian_f32(const float *src, float *dst, sc_shape s, const float *k, int radius,
                    int epilogue, const uint8_t *obs, float eps, const sc_exec *ex)
{
    if (radius < 1 || radius > SC_MAX_RADIUS)
        return SC_EINVAL;
    blur_ctx b = {src, dst, s.h, s.w, s.c, radius, k, 0.0f, 0, cpu_has_avx2_fma(),
                  epilogue, obs, eps};
    return sc_parallel_rows(ex, s.h, sc_chunk_rows(8, (size_t)s.w * s.c * (2 * radius + 1)),
                            blur_rows_f32, &b, blur_scratch(s.w, s.c, radius));
}

/* u8 -> u8 Gaussian; with `sharpen` the output is clamp(in + amount * (in - blur)). */
int sc_gaussian_u8(const uint8_t *src, uint8_t *dst, sc_shape s, double sigma, int radius,
                   int sharpen, double amount, const sc_exec *ex)
{
    if (radius < 1 || radius > SC_MAX_RADIUS || !(sigma > 0.0))
        return SC_EINVAL;
    float *k = malloc(sizeof(float) * (size_t)(2 * radius + 1));
    if (k == NULL)
        return SC_ENOMEM;
    sc_gaussian_weights(k, radius, sigma);
    blur_ctx b = {src, dst, s.h, s.w, s.c, radius, k, (float)amount, sharpen, cpu_has_avx2_fma(),
                  SC_F32_STORE, NULL, 0.0f};
    int rc = sc_parallel_rows(ex, s.h, sc_chunk_rows(8, (size_t)s.w * s.c * (2 * radius + 1)),
                              blur_rows_u8, &b, blur_scratch(s.w, s.c, radius));
    free(k);
    return rc;
}

int sc_gaussian_blur(const uint8_t *src, uint8_t *dst, sc_shape s, double sigma, int radius,
                     const sc_exec *ex)
{
    return sc_gaussian_u8(src, dst, s, sigma, radius, 0, 0.0, ex);
}
