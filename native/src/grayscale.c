/* grayscale: ITU-R BT.601 luma, Y = 0.299 R + 0.587 G + 0.114 B.
 *
 * Fixed point with 15 fractional bits and round-half-up: the weights 9798 + 19235 + 3735 = 2^15
 * are the ones OpenCV 5's cvtColor(RGB2GRAY) uses, so results are bit-identical to it. Output has
 * one channel; alpha (C == 4) is dropped; a one-channel input is copied. */
#include <string.h>

#include "sc_common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define GRAY_AVX2_PATH 1
#else
#define GRAY_AVX2_PATH 0
#endif

enum { R_W = 9798, G_W = 19235, B_W = 3735, SHIFT = 15 };

typedef struct {
    const uint8_t *src;
    uint8_t *dst;
    int w, c;
    int avx2; /* use gray_row_avx2 */
} gray_ctx;

/* The weights split as w = 256 * hi + lo so every product and sum fits 16 bits (twice the lanes
 * of 32-bit math). Exact: (256 A + B) >> 15 == (A + (B >> 8)) >> 7 for A, B >= 0; the rounding
 * term 1 << 14 = 64 * 256 moves into A, and lo weights sum to 256 so B <= 255 * 256. */
enum { R_HI = R_W >> 8, G_HI = G_W >> 8, B_HI = B_W >> 8 };
enum { R_LO = R_W & 255, G_LO = G_W & 255, B_LO = B_W & 255 };

static inline uint8_t luma_u8(unsigned r, unsigned g, unsigned b)
{
    const uint16_t hi = (uint16_t)(r * R_HI + g * G_HI + b * B_HI + (1 << (SHIFT - 9)));
    const uint16_t lo = (uint16_t)(r * R_LO + g * G_LO + b * B_LO);
    return (uint8_t)((uint16_t)(hi + (lo >> 8)) >> (SHIFT - 8));
}

#if GRAY_AVX2_PATH
/* 8 pixels: each 128-bit lane holds 4 pixels starting at its own load; the bytes are shuffled
 * into int16 pairs (r, g) and (b, 0) and pmaddwd forms 9798 r + 19235 g + 3735 b exactly. */
__attribute__((target("avx2"))) static inline __m256i luma8(const uint8_t *lo, const uint8_t *hi,
                                                             __m256i srg, __m256i sb,
                                                             __m256i wrg, __m256i wb)
{
    const __m256i px = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)lo)),
        _mm_loadu_si128((const __m128i *)hi), 1);
    const __m256i sum = _mm256_add_epi32(_mm256_madd_epi16(_mm256_shuffle_epi8(px, srg), wrg),
                                         _mm256_madd_epi16(_mm256_shuffle_epi8(px, sb), wb));
    return _mm256_srli_epi32(_mm256_add_epi32(sum, _mm256_set1_epi32(1 << (SHIFT - 1))), SHIFT);
}

/* Pixels [0, returned) of one row with C = cs (3 or 4); the rest is left to the scalar loop. */
__attribute__((target("avx2"))) static size_t gray_row_avx2(const uint8_t *in, uint8_t *out,
                                                            size_t w, int cs)
{
    const __m256i srg = cs == 3
        ? _mm256_broadcastsi128_si256(_mm_setr_epi8(0, -1, 1, -1, 3, -1, 4, -1, 6, -1, 7, -1, 9,
                                                    -1, 10, -1))
        : _mm256_broadcastsi128_si256(_mm_setr_epi8(0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12,
                                                    -1, 13, -1));
    const __m256i sb = cs == 3
        ? _mm256_broadcastsi128_si256(_mm_setr_epi8(2, -1, -1, -1, 5, -1, -1, -1, 8, -1, -1, -1,
                                                    11, -1, -1, -1))
        : _mm256_broadcastsi128_si256(_mm_setr_epi8(2, -1, -1, -1, 6, -1, -1, -1, 10, -1, -1, -1,
                                                    14, -1, -1, -1));
    const __m256i wrg = _mm256_set1_epi32(R_W | G_W << 16), wb = _mm256_set1_epi32(B_W);
    const size_t step = 4 * (size_t)cs; /* bytes per 4 pixels */
    size_t x = 0;
    /* 32 pixels per step; the last 16-byte load of a step ends at byte 28 * cs + 16 */
    for (; (x + 28) * cs + 16 <= w * cs && x + 32 <= w; x += 32) {
        const uint8_t *p = in + x * cs;
        const __m256i a = luma8(p, p + step, srg, sb, wrg, wb);
        const __m256i b = luma8(p + 2 * step, p + 3 * step, srg, sb, wrg, wb);
        const __m256i c = luma8(p + 4 * step, p + 5 * step, srg, sb, wrg, wb);
        const __m256i d = luma8(p + 6 * step, p + 7 * step, srg, sb, wrg, wb);
        /* packs work per 128-bit lane: a, b, c, d hold pixels (0-3 | 4-7), ... in lane order */
        const __m256i ab = _mm256_packus_epi32(a, b), cd = _mm256_packus_epi32(c, d);
        const __m256i bytes = _mm256_packus_epi16(ab, cd);
        /* lane 0: a0 b0 c0 d0, lane 1: a1 b1 c1 d1 (4 pixels each) -> a0 a1 b0 b1 c0 c1 d0 d1 */
        _mm256_storeu_si256((__m256i *)(out + x),
                            _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6,
                                                                                 3, 7)));
    }
    return x;
}
#endif

/* One row with C = cs; inlined with a literal cs so the scalar tail's strided loads vectorise. */
static inline __attribute__((always_inline)) void gray_row(const gray_ctx *g, int y, int cs)
{
    const size_t w = (size_t)g->w; /* a local: uint8_t stores may alias *g and block vectorising */
    const uint8_t *restrict in = g->src + (size_t)y * w * cs;
    uint8_t *restrict out = g->dst + (size_t)y * w;
    size_t x = 0;
#if GRAY_AVX2_PATH
    if (g->avx2)
        x = gray_row_avx2(in, out, w, cs);
#endif
    for (; x < w; x++)
        out[x] = luma_u8(in[cs * x], in[cs * x + 1], in[cs * x + 2]);
}

SC_HOT static void gray_rows(const void *p, int y0, int y1, void *scratch)
{
    const gray_ctx *g = p;
    for (int y = y0; y < y1; y++) {
        if (g->c == 3)
            gray_row(g, y, 3);
        else
            gray_row(g, y, 4);
    }
}

int sc_grayscale(const uint8_t *src, uint8_t *dst, sc_shape s, const sc_exec *ex)
{
    if (s.c == 1)
        return sc_identity(src, dst, s, ex);
#if GRAY_AVX2_PATH
    gray_ctx g = {src, dst, s.w, s.c, __builtin_cpu_supports("avx2")};
#else
    gray_ctx g = {src, dst, s.w, s.c, 0};
#endif
    return sc_parallel_rows(ex, s.h, sc_chunk_rows(32, (size_t)s.w * s.c),
                            gray_rows, &g, 0);
}
