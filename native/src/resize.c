/* resize: bilinear or bicubic (Keys, a = -0.75) resampling with OpenCV's pixel-centre mapping
 * src = (dst + 0.5) * in / out - 0.5 and replicate border.
 *
 * Separable and fixed point, as OpenCV's 8-bit resize: weights are rounded to 11 fractional
 * bits (each set adjusted to sum to exactly 2048, so flat areas and scale 1 stay exact);
 * the horizontal pass turns a source row into sums of u8 x int16 weight, kept as int16 with
 * 6 fractional bits, (sum + 16) >> 5 (|sum| < 2^20, so they fit; the error is 1/64 of a grey
 * level); the vertical pass blends `taps` of those rows with the int16 weights (`pmaddwd`
 * pairs) and rounds once, (sum + 2^16) >> 17.
 *
 * Order: horizontal first, on source rows, each kept in a per-thread ring of `taps` rows and
 * reused by every output row that needs it (an upscale by 2 computes each source row about
 * once per thread chunk instead of once per output row); then the vertical pass per output
 * row, contiguous over W*C, which vectorises.
 *
 * The horizontal pass has an AVX2 path (chosen at run time) for 3 and 4 channels: for two
 * output pixels at a time, one unaligned load of the source pixels each, a byte shuffle into
 * (tap, tap+1) int16 pairs per channel and `pmaddwd` with the pixel's precomputed weight
 * pairs. Pixels whose taps are clamped at the borders take the scalar path, which computes
 * the same integer sums. Every output value is the same integer arithmetic on every path and
 * thread count. */
#include <math.h>
#include <stdlib.h>

#include "sc_common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define RS_AVX2_PATH 1
#define RS_AVX2 __attribute__((target("avx2")))
#else
#define RS_AVX2_PATH 0
#endif

enum { COEF_BITS = 11, COEF_ONE = 1 << COEF_BITS, MID_SHIFT = 5,
       OUT_SHIFT = 2 * COEF_BITS - MID_SHIFT };

typedef struct {
    const uint8_t *src;
    uint8_t *dst;
    int h, w, c, oh, ow, taps;
    const int *yi;         /* taps clamped source rows per output row */
    const int16_t *wy;     /* matching fixed-point weights */
    const int *xi;         /* taps clamped source columns per output pixel (scalar path) */
    const int16_t *xw;     /* matching weights */
    const int *xfirst;     /* first (unclamped) source column per output pixel (vector path) */
    const int32_t *xpairs; /* per output pixel: taps/2 int16 weight pairs packed in int32 */
    int x_lo, x_hi;        /* output pixels [x_lo, x_hi) take the vector path */
    int avx2;
} resize_ctx;

/* Fixed-point taps for `out` positions mapped onto `in`: clamped indices, weights summing to
 * COEF_ONE, and the unclamped first index. */
static void resize_table(int in, int out, int taps, int *idx, int16_t *wt, int *first)
{
    const double scale = (double)in / out;
    const float A = -0.75f;
    for (int o = 0; o < out; o++) {
        double f = (o + 0.5) * scale - 0.5;
        int s = (int)floor(f);
        float t = (float)(f - s), w[4];
        if (taps == 2) {
            /* like OpenCV, positions outside the first/last pixel centre take that pixel */
            if (s < 0)
                s = 0, t = 0.0f;
            if (s >= in - 1)
                s = in - 1, t = 0.0f;
            w[0] = 1.0f - t;
            w[1] = t;
            first[o] = s;
        } else {
            const float t1 = t + 1.0f, u = 1.0f - t;
            w[0] = ((A * t1 - 5.0f * A) * t1 + 8.0f * A) * t1 - 4.0f * A;
            w[1] = ((A + 2.0f) * t - (A + 3.0f)) * t * t + 1.0f;
            w[2] = ((A + 2.0f) * u - (A + 3.0f)) * u * u + 1.0f;
            w[3] = 1.0f - w[0] - w[1] - w[2];
            s -= 1;
            first[o] = s;
        }
        int sum = 0, big = 0;
        for (int k = 0; k < taps; k++) {
            const float v = w[k] * COEF_ONE;
            wt[(size_t)o * taps + k] = (int16_t)(v < 0 ? v - 0.5f : v + 0.5f);
            sum += wt[(size_t)o * taps + k];
            if (wt[(size_t)o * taps + k] > wt[(size_t)o * taps + big])
                big = k;
            idx[(size_t)o * taps + k] = sc_clampi(s + k, 0, in - 1);
        }
        wt[(size_t)o * taps + big] = (int16_t)(wt[(size_t)o * taps + big] + COEF_ONE - sum);
    }
}

/* ---- horizontal pass: one source row -> ow * c int32 sums ---- */

static inline int16_t mid_round(int32_t acc)
{
    return (int16_t)((acc + (1 << (MID_SHIFT - 1))) >> MID_SHIFT);
}

static void horizontal_scalar(const resize_ctx *r, const uint8_t *restrict row,
                              int16_t *restrict out, int x0, int x1)
{
    const int c = r->c, taps = r->taps;
    for (int x = x0; x < x1; x++) {
        const int *xi = r->xi + (size_t)x * taps;
        const int16_t *xw = r->xw + (size_t)x * taps;
        for (int ch = 0; ch < c; ch++) {
            int32_t acc = 0;
            for (int k = 0; k < taps; k++)
                acc += (int32_t)xw[k] * row[(size_t)xi[k] * c + ch];
            out[(size_t)x * c + ch] = mid_round(acc);
        }
    }
}

#if RS_AVX2_PATH
/* Stores the two pixels' [c0, c1, c2, c3] of `acc` (one per lane) as int16 at out + x * c and
 * out + (x + 1) * c, in that order: for C = 3 each 8-byte store's fourth value is overwritten
 * by the next pixel's (the row buffer has spare values at the end). */
RS_AVX2 static inline void store_pair(int16_t *out, int x, int c, __m256i acc)
{
    acc = _mm256_srai_epi32(_mm256_add_epi32(acc, _mm256_set1_epi32(1 << (MID_SHIFT - 1))),
                            MID_SHIFT);
    const __m256i p = _mm256_packs_epi32(acc, acc); /* no saturation: |acc| < 2^15 here */
    _mm_storel_epi64((__m128i *)(out + (size_t)x * c), _mm256_castsi256_si128(p));
    _mm_storel_epi64((__m128i *)(out + (size_t)(x + 1) * c), _mm256_extracti128_si256(p, 1));
}

/* The 16 source bytes from output pixel x's first tap (lane 0) and x + 1's (lane 1). */
RS_AVX2 static inline __m256i load_pixels(const uint8_t *row, const int *xf, int x, int c)
{
    return _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(row + (size_t)xf[x] * c))),
        _mm_loadu_si128((const __m128i *)(row + (size_t)xf[x + 1] * c)), 1);
}

/* Two output pixels per step; each 128-bit lane computes one pixel's [c0, c1, c2, 0|c3]. */
RS_AVX2 static void horizontal_avx2(const resize_ctx *r, const uint8_t *restrict row,
                                    int16_t *restrict out)
{
    const int c = r->c, taps = r->taps, x_hi = r->x_hi;
    const int *xf = r->xfirst;
    const int32_t *xp = r->xpairs;
    /* byte indices of (tap k, tap k+1) for each channel, as int16 pairs; -1 gives 0 */
    const __m256i sa = c == 3
        ? _mm256_broadcastsi128_si256(_mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1,
                                                    -1, -1, -1, -1))
        : _mm256_broadcastsi128_si256(_mm_setr_epi8(0, -1, 4, -1, 1, -1, 5, -1, 2, -1, 6, -1,
                                                    3, -1, 7, -1));
    const __m256i sb = c == 3
        ? _mm256_broadcastsi128_si256(_mm_setr_epi8(6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1,
                                                    -1, -1, -1, -1))
        : _mm256_broadcastsi128_si256(_mm_setr_epi8(8, -1, 12, -1, 9, -1, 13, -1, 10, -1, 14,
                                                    -1, 11, -1, 15, -1));
    int x = r->x_lo;
    if (taps == 4) {
        const __m256i pa = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
        const __m256i pb = _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3);
        for (; x + 2 <= x_hi; x += 2) {
            const __m256i px = load_pixels(row, xf, x, c);
            const __m256i wp = _mm256_castsi128_si256(
                _mm_loadu_si128((const __m128i *)(xp + 2 * (size_t)x)));
            const __m256i acc = _mm256_add_epi32(
                _mm256_madd_epi16(_mm256_shuffle_epi8(px, sa), _mm256_permutevar8x32_epi32(wp, pa)),
                _mm256_madd_epi16(_mm256_shuffle_epi8(px, sb), _mm256_permutevar8x32_epi32(wp, pb)));
            store_pair(out, x, c, acc);
        }
    } else {
        const __m256i pa = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        for (; x + 2 <= x_hi; x += 2) {
            const __m256i px = load_pixels(row, xf, x, c);
            const __m256i wp = _mm256_castsi128_si256(
                _mm_loadl_epi64((const __m128i *)(xp + (size_t)x)));
            const __m256i acc =
                _mm256_madd_epi16(_mm256_shuffle_epi8(px, sa), _mm256_permutevar8x32_epi32(wp, pa));
            store_pair(out, x, c, acc);
        }
    }
    horizontal_scalar(r, row, out, x, x_hi); /* an odd pixel left over */
}

static int cpu_has_avx2(void) { return __builtin_cpu_supports("avx2"); }
#else
static int cpu_has_avx2(void) { return 0; }
#endif

static void horizontal(const resize_ctx *r, const uint8_t *row, int16_t *out)
{
#if RS_AVX2_PATH
    if (r->avx2 && r->x_hi > r->x_lo) {
        horizontal_avx2(r, row, out);
        horizontal_scalar(r, row, out, 0, r->x_lo);
        horizontal_scalar(r, row, out, r->x_hi, r->ow);
        return;
    }
#endif
    horizontal_scalar(r, row, out, 0, r->ow);
}

/* ---- vertical pass: taps int16 rows -> one uint8 output row ---- */

static inline uint8_t round_u8(int32_t v)
{
    v = (v + (1 << (OUT_SHIFT - 1))) >> OUT_SHIFT;
    v = v > 0 ? v : 0;
    return (uint8_t)(v < 255 ? v : 255);
}

static void vertical_scalar(const int16_t *const *rows, const int16_t *w, int taps,
                            uint8_t *restrict out, size_t i0, size_t n)
{
    for (size_t i = i0; i < n; i++) {
        int32_t acc = 0;
        for (int k = 0; k < taps; k++)
            acc += (int32_t)w[k] * rows[k][i];
        out[i] = round_u8(acc);
    }
}

#if RS_AVX2_PATH
/* 16 outputs as int16: rows interleaved pairwise and multiplied by (w[k], w[k+1]) pairs. */
RS_AVX2 static inline __m256i vertical16(const int16_t *const *rows, size_t i, int taps,
                                         __m256i w01, __m256i w23)
{
    const __m256i a = _mm256_loadu_si256((const __m256i *)(rows[0] + i));
    const __m256i b = _mm256_loadu_si256((const __m256i *)(rows[1] + i));
    __m256i lo = _mm256_madd_epi16(_mm256_unpacklo_epi16(a, b), w01);
    __m256i hi = _mm256_madd_epi16(_mm256_unpackhi_epi16(a, b), w01);
    if (taps == 4) {
        const __m256i c = _mm256_loadu_si256((const __m256i *)(rows[2] + i));
        const __m256i d = _mm256_loadu_si256((const __m256i *)(rows[3] + i));
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(c, d), w23));
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(c, d), w23));
    }
    const __m256i half = _mm256_set1_epi32(1 << (OUT_SHIFT - 1));
    lo = _mm256_srai_epi32(_mm256_add_epi32(lo, half), OUT_SHIFT);
    hi = _mm256_srai_epi32(_mm256_add_epi32(hi, half), OUT_SHIFT);
    return _mm256_packs_epi32(lo, hi); /* unpack and pack both work per lane: order restored */
}

RS_AVX2 static size_t vertical_avx2(const int16_t *const *rows, const int16_t *w, int taps,
                                    uint8_t *restrict out, size_t n)
{
    const __m256i w01 = _mm256_set1_epi32((int32_t)((uint32_t)(uint16_t)w[0] |
                                                    (uint32_t)(uint16_t)w[1] << 16));
    const __m256i w23 = taps == 4
        ? _mm256_set1_epi32((int32_t)((uint32_t)(uint16_t)w[2] | (uint32_t)(uint16_t)w[3] << 16))
        : _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m256i p = _mm256_packus_epi16(vertical16(rows, i, taps, w01, w23),
                                              vertical16(rows, i + 16, taps, w01, w23));
        _mm256_storeu_si256((__m256i *)(out + i), _mm256_permute4x64_epi64(p, 0xD8));
    }
    return i;
}
#endif

static void vertical(const resize_ctx *r, const int16_t *const *rows, const int16_t *w,
                     uint8_t *out, size_t n)
{
    size_t i = 0;
#if RS_AVX2_PATH
    if (r->avx2)
        i = vertical_avx2(rows, w, r->taps, out, n);
#endif
    vertical_scalar(rows, w, r->taps, out, i, n);
}

/* Scratch per thread: `taps` int16 rows of ow * c (+ spare) values. */
static size_t ring_row(const resize_ctx *r) { return ((size_t)r->ow * r->c + 16) & ~(size_t)15; }

static void resize_rows(const void *p, int y0, int y1, void *scratch)
{
    const resize_ctx *r = p;
    const int taps = r->taps;
    const size_t n = (size_t)r->w * r->c, on = (size_t)r->ow * r->c, stride = ring_row(r);
    int16_t *ring = scratch;
    int tag[4] = {-1, -1, -1, -1}; /* source row held by each ring slot */
    for (int y = y0; y < y1; y++) {
        const int *yi = r->yi + (size_t)y * taps;
        const int16_t *rows[4];
        for (int k = 0; k < taps; k++) {
            /* the taps of one output row are consecutive source rows (clamped copies are the
             * same row), so row % taps never maps two needed rows onto one slot */
            const int slot = yi[k] % taps;
            int16_t *buf = ring + (size_t)slot * stride;
            if (tag[slot] != yi[k]) {
                horizontal(r, r->src + (size_t)yi[k] * n, buf);
                tag[slot] = yi[k];
            }
            rows[k] = buf;
        }
        uint8_t *out = r->dst + (size_t)y * on;
        vertical(r, rows, r->wy + (size_t)y * taps, out, on);
    }
}

int sc_resize(const uint8_t *src, uint8_t *dst, sc_shape s, int oh, int ow, int method,
              const sc_exec *ex)
{
    if (oh < 1 || ow < 1 || method < 0 || method > 1)
        return SC_EINVAL;
    const int taps = method == 0 ? 2 : 4, c = s.c;
    const size_t nx = (size_t)ow * taps, ny = (size_t)oh * taps;
    int *xi = malloc(sizeof(int) * nx), *yi = malloc(sizeof(int) * ny);
    int16_t *xw = malloc(sizeof(int16_t) * nx), *wy16 = malloc(sizeof(int16_t) * ny);
    int32_t *xpairs = malloc(sizeof(int32_t) * nx / 2);
    int *xfirst = malloc(sizeof(int) * (size_t)ow), *yfirst = malloc(sizeof(int) * (size_t)oh);
    int rc = SC_ENOMEM;
    if (!xi || !yi || !xw || !wy16 || !xpairs || !xfirst || !yfirst)
        goto done;
    resize_table(s.w, ow, taps, xi, xw, xfirst);
    resize_table(s.h, oh, taps, yi, wy16, yfirst);
    for (size_t i = 0; i < nx / 2; i++) /* (w[2j], w[2j+1]) as one int32 for pmaddwd */
        xpairs[i] = (int32_t)((uint32_t)(uint16_t)xw[2 * i] | (uint32_t)(uint16_t)xw[2 * i + 1] << 16);
    /* the vector path needs all taps inside the row (no clamping) and a 16-byte load that
     * stays inside it; xfirst never decreases, so those pixels form one range */
    int x_lo = 0, x_hi = 0;
    if (c == 3 || c == 4) {
        while (x_lo < ow && xfirst[x_lo] < 0)
            x_lo++;
        x_hi = x_lo;
        while (x_hi < ow && xfirst[x_hi] + taps <= s.w && (size_t)xfirst[x_hi] * c + 16 <= (size_t)s.w * c)
            x_hi++;
    }
    resize_ctx r = {src, dst, s.h, s.w, c, oh, ow, taps, yi, wy16, xi, xw, xfirst, xpairs,
                    x_lo, x_hi, cpu_has_avx2()};
    /* 64+ output rows per chunk: an upscaled chunk recomputes at most taps - 1 source rows */
    rc = sc_parallel_rows(ex, oh, sc_chunk_rows(64, ((size_t)s.w + ow) * c * taps), resize_rows,
                          &r, sizeof(int16_t) * ring_row(&r) * taps);
done:
    free(xi);
    free(yi);
    free(xw);
    free(wy16);
    free(xpairs);
    free(xfirst);
    free(yfirst);
    return rc;
}
