/* brightness: out = clamp(round(((in * factor) - 128) * contrast + 128)).
 *
 * The map depends only on the input value. It is built as an exact 256-entry table (double
 * maths, round half up) and then, when an affine fixed-point form reproduces that table for all
 * 256 inputs, the image loop evaluates (A * in + B) >> 12 in 32-bit lanes, which vectorises
 * (a table lookup per byte does not). If no such form matches, the loop uses the table. Either
 * way the output equals the table. Alpha (C == 4) is passed through unchanged.
 *
 * On AVX2 CPUs the affine form runs in 16-bit lanes (32 bytes per step, OpenCV's trick for
 * 8-bit arithmetic): with a = 256 ah + al and b = 256 bh + bl (0 <= al, bl < 256),
 *   (a v + b) >> 12 == (ah v + bh + ((al v + bl) >> 8)) >> 4
 * exactly, every term fits 16 bits when |ah v + bh| stays inside int16 (checked per call),
 * and the saturating pack to bytes is the clamp. */
#include <math.h>

#include "sc_common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define BR_AVX2_PATH 1
#else
#define BR_AVX2_PATH 0
#endif

enum { FRAC = 12 };

typedef struct {
    const uint8_t *src;
    uint8_t *dst;
    int w, c;
    int affine;   /* use a * v + b instead of the table */
    int32_t a, b; /* out = clamp((a * v + b) >> FRAC) */
    int wide16;   /* the AVX2 16-bit form applies (CPU has AVX2, terms fit int16) */
    uint8_t lut[256];
} bright_ctx;

static inline uint8_t affine_u8(int32_t a, int32_t b, int v)
{
    int32_t q = (a * v + b) >> FRAC;
    q = q > 0 ? q : 0;
    return (uint8_t)(q < 255 ? q : 255);
}

#if BR_AVX2_PATH
__attribute__((target("avx2"))) static void affine16_avx2(const uint8_t *restrict in,
                                                          uint8_t *restrict out, size_t n,
                                                          int32_t a, int32_t b)
{
    const __m256i ah = _mm256_set1_epi16((int16_t)(a >> 8)), al = _mm256_set1_epi16((int16_t)(a & 255));
    const __m256i bh = _mm256_set1_epi16((int16_t)(b >> 8)), bl = _mm256_set1_epi16((int16_t)(b & 255));
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)(in + i));
        const __m256i v0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(x));
        const __m256i v1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(x, 1));
        const __m256i t0 = _mm256_srli_epi16(_mm256_add_epi16(_mm256_mullo_epi16(v0, al), bl), 8);
        const __m256i t1 = _mm256_srli_epi16(_mm256_add_epi16(_mm256_mullo_epi16(v1, al), bl), 8);
        const __m256i q0 = _mm256_srai_epi16(
            _mm256_add_epi16(_mm256_add_epi16(_mm256_mullo_epi16(v0, ah), bh), t0), FRAC - 8);
        const __m256i q1 = _mm256_srai_epi16(
            _mm256_add_epi16(_mm256_add_epi16(_mm256_mullo_epi16(v1, ah), bh), t1), FRAC - 8);
        _mm256_storeu_si256((__m256i *)(out + i),
                            _mm256_permute4x64_epi64(_mm256_packus_epi16(q0, q1), 0xD8));
    }
    for (; i < n; i++)
        out[i] = affine_u8(a, b, in[i]);
}

/* Whether ah * v + bh + (0..255) stays inside int16 for every v (it is monotone in v). */
static int fits16(int32_t a, int32_t b)
{
    const int32_t ah = a >> 8, bh = b >> 8;
    const int32_t lo = bh + (ah < 0 ? 255 * ah : 0), hi = bh + (ah > 0 ? 255 * ah : 0) + 255;
    return a >= 0 && lo >= -32768 && hi <= 32767 && __builtin_cpu_supports("avx2");
}
#else
static int fits16(int32_t a, int32_t b) { return 0; }
#endif

SC_HOT static void bright_rows(const void *p, int y0, int y1, void *scratch)
{
    const bright_ctx *b = p;
    /* locals: byte stores may alias *b, which would block vectorising */
    const size_t w = (size_t)b->w, row = w * b->c;
    const int32_t a = b->a, off = b->b;
    const int affine = b->affine, alpha = b->c == 4;
    for (int y = y0; y < y1; y++) {
        const uint8_t *restrict in = b->src + (size_t)y * row;
        uint8_t *restrict out = b->dst + (size_t)y * row;
#if BR_AVX2_PATH
        if (b->wide16)
            affine16_avx2(in, out, row, a, off);
        else
#endif
        if (affine)
            for (size_t i = 0; i < row; i++)
                out[i] = affine_u8(a, off, in[i]);
        else
            for (size_t i = 0; i < row; i++)
                out[i] = b->lut[in[i]];
        if (alpha)
            for (size_t x = 0; x < w; x++)
                out[4 * x + 3] = in[4 * x + 3];
    }
}

/* Finds a, b with affine_u8(a, b, v) == lut[v] for every v; returns 0 when there is none near
 * the real-valued map. */
static int fit_affine(const uint8_t *lut, double slope, double offset, int32_t *a, int32_t *b)
{
    const double scale = (double)(1 << FRAC);
    const int32_t a0 = (int32_t)lround(slope * scale);
    const int32_t b0 = (int32_t)lround((offset + 0.5) * scale);
    for (int da = -2; da <= 2; da++)
        for (int db = -8; db <= 8; db++) {
            int ok = 1;
            for (int v = 0; v < 256 && ok; v++)
                ok = affine_u8(a0 + da, b0 + db, v) == lut[v];
            if (ok) {
                *a = a0 + da;
                *b = b0 + db;
                return 1;
            }
        }
    return 0;
}

int sc_brightness(const uint8_t *src, uint8_t *dst, sc_shape s, double factor, double contrast,
                  const sc_exec *ex)
{
    bright_ctx b = {.src = src, .dst = dst, .w = s.w, .c = s.c};
    for (int v = 0; v < 256; v++) {
        double o = ((double)v * factor - 128.0) * contrast + 128.0;
        o = o < 0.0 ? 0.0 : (o > 255.0 ? 255.0 : o);
        b.lut[v] = (uint8_t)floor(o + 0.5);
    }
    /* |slope| <= 256 and v <= 255 keep a * v + b inside int32 with 12 fractional bits */
    const double slope = factor * contrast, offset = 128.0 - 128.0 * contrast;
    b.affine = fabs(slope) <= 256.0 && fit_affine(b.lut, slope, offset, &b.a, &b.b);
    b.wide16 = b.affine && fits16(b.a, b.b);
    return sc_parallel_rows(ex, s.h, sc_chunk_rows(32, (size_t)s.w * s.c), bright_rows, &b, 0);
}
