// libjanus_edge_cpu: the int4 decode GEMM (2-8 rows x K x N) for CPUs, with int8 dot products (issue 26).
//
// Y[M, N] = A[M, K] @ W[K, N], W int4 symmetric in blocks of B along K (w in [-8, 7], one fp32 scale per block and
// column: the bundles' INT4 DequantizeLinear(axis=0, block_size=B) form), A float32 quantized here per row and block
// to int8 (symmetric, amax / 127, round half to even: what ONNX Runtime's MatMulNBits does at accuracy level 4).
// The math, fixed so every path gives the same bits (runtime/cpu_kernels.py has the numpy twin):
//   qa = clamp(rint(a * (127 / amax)), -127, 127), sa = amax / 127     (per row m, block b; amax 0 -> qa 0, sa 0)
//   d  = sum_k (w + 8) * qa - 8 * sum_k qa                          (int32, exact: |d| < 2^24)
//   y  = y + float(d) * (s_w * sa)                                   (float32, blocks in order, no fused multiply-add)
// Paths, picked at run time by CPU feature (je_cpu_best_isa): AVX-512 VNNI (vpdpbusd: u8 weights x s8 activations,
// 64 products an instruction), AVX2 (vpmaddubsw + vpmaddwd), and plain C++ (any CPU; also the reference the tests
// compare the others with). One packed layout serves all three (je_q4_pack): column tiles of 16, per tile and block
// B/8 vectors of 64 bytes, byte 4n+i of vector j = (w[8j+i][n] + 8) | (w[8j+4+i][n] + 8) << 4, so a vector's low
// nibbles are 4 consecutive k of 16 columns (one vpdpbusd against a broadcast of 4 activations) and its high nibbles
// the next 4. Tiles are contiguous: a thread streams its range of columns from memory once.
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define JE_X86 1
#endif
#include <thread>

#include "cpu_pool.h"
#ifndef JE_PREFETCH_BYTES
#define JE_PREFETCH_BYTES 2048
#endif

namespace {

constexpr int TILE = 16;   // columns per tile
constexpr int VEC = 64;    // bytes per packed vector (8 k x 16 columns of int4)
constexpr int MAX_ROWS = 8;       // rows a VNNI / plain tile call holds
constexpr int AVX2_MAX_ROWS = 4;  // an AVX2 one (16 ymm registers)
// Software prefetch distance (bytes ahead in a tile's stream): one core's hardware prefetcher alone kept the VNNI
// path at ~7.7 GB/s a core on Pro-1B's weights (2 rows), below both its in-cache rate (~18) and DRAM's.
constexpr int PREFETCH = JE_PREFETCH_BYTES;
enum Isa { SCALAR = 0, AVX2 = 1, AVX512VNNI = 2 };

int detect_isa() {
#ifdef JE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vnni"))
        return AVX512VNNI;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return AVX2;
#endif
    return SCALAR;
}

const int BEST_ISA = detect_isa();

struct QuantA {         // the activations of up to MAX_ROWS rows, quantized per block
    const int8_t* q;    // [M, K]
    const float* sa;    // [M, nb]
    const int32_t* sum; // [M, nb]
};

int32_t load4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// ---- activations -> int8 per block ---------------------------------------------------------------------------------
// One block: every path gives the same bits (|a| max is exact in any order and skips NaN; a * inv is one IEEE
// product; both conversions round half to even; NaN -> 0).
void quantize_block(const float* a, int B, int8_t* q, float* sa, int32_t* sum) {
    float amax = 0.0f;
    for (int i = 0; i < B; ++i) {
        const float v = std::fabs(a[i]);
        if (v > amax) amax = v;
    }
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    *sa = amax / 127.0f;
    int32_t s = 0;
    for (int i = 0; i < B; ++i) {
        float r = std::nearbyint(a[i] * inv);
        if (!(r == r)) r = 0.0f;  // NaN -> 0 (defined, not UB)
        r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
        q[i] = (int8_t)r;
        s += (int32_t)r;
    }
    *sum = s;
}

#ifdef JE_X86
__attribute__((target("avx512f,avx512bw"))) void quantize_block_avx512(const float* a, int B, int8_t* q, float* sa,
                                                                      int32_t* sum) {
    __m512 mx = _mm512_setzero_ps();
    for (int i = 0; i < B; i += 16)  // max_ps returns its second operand when the first is NaN: NaN is skipped
        mx = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(a + i)), mx);
    const float amax = _mm512_reduce_max_ps(mx);
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    *sa = amax / 127.0f;
    const __m512 vinv = _mm512_set1_ps(inv), hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);
    __m512i acc = _mm512_setzero_si512();
    for (int i = 0; i < B; i += 16) {
        const __m512 x = _mm512_loadu_ps(a + i);
        __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(x, vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, r, _CMP_ORD_Q), r);                              // NaN -> 0
        r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
        const __m512i v = _mm512_cvtps_epi32(r);  // exact: r is an integer in [-127, 127]
        acc = _mm512_add_epi32(acc, v);
        _mm_storeu_si128((__m128i*)(q + i), _mm512_cvtepi32_epi8(v));
    }
    *sum = _mm512_reduce_add_epi32(acc);
}
#endif

// Rows [m0, m1), per block.
void quantize_rows(const float* A, int m0, int m1, int K, int B, int8_t* q, float* sa, int32_t* sums) {
    const int nb = K / B;
#ifdef JE_X86
    const bool wide = BEST_ISA == AVX512VNNI && B % 16 == 0;
#else
    const bool wide = false;
#endif
    for (int m = m0; m < m1; ++m)
        for (int b = 0; b < nb; ++b) {
            const size_t off = (size_t)m * K + (size_t)b * B;
#ifdef JE_X86
            if (wide) {
                quantize_block_avx512(A + off, B, q + off, sa + m * nb + b, sums + m * nb + b);
                continue;
            }
#endif
            quantize_block(A + off, B, q + off, sa + m * nb + b, sums + m * nb + b);
        }
}

// ---- one tile (16 columns) x MR rows: plain C++ -------------------------------------------------------------------
void tile_scalar(int MR, const uint8_t* wt, const float* st, const QuantA& qa, int K, int B, float* Y, int ldy,
                 int ncols) {
    const int nb = K / B, vpb = B / 8;
    for (int m = 0; m < MR; ++m) {
        float y[TILE] = {0};
        for (int b = 0; b < nb; ++b) {
            int32_t d[TILE] = {0};
            const int8_t* a = qa.q + (size_t)m * K + (size_t)b * B;
            for (int j = 0; j < vpb; ++j) {
                const uint8_t* v = wt + ((size_t)b * vpb + j) * VEC;
                for (int n = 0; n < TILE; ++n)
                    for (int i = 0; i < 4; ++i) {
                        const uint8_t byte = v[4 * n + i];
                        d[n] += (int32_t)(byte & 15) * a[8 * j + i] + (int32_t)(byte >> 4) * a[8 * j + 4 + i];
                    }
            }
            const float s_a = qa.sa[m * nb + b];
            const int32_t corr = 8 * qa.sum[m * nb + b];
            for (int n = 0; n < TILE; ++n) {
                const float s = st[b * TILE + n] * s_a;
                const float f = (float)(d[n] - corr);
                const float p = f * s;
                y[n] = y[n] + p;
            }
        }
        for (int n = 0; n < ncols; ++n) Y[(size_t)m * ldy + n] = y[n];
    }
}

#ifdef JE_X86
// ---- AVX-512 VNNI ------------------------------------------------------------------------------------------------
template <int MR>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void tile_vnni(const uint8_t* wt, const float* st,
                                                                       const QuantA& qa, int K, int B, float* Y,
                                                                       int ldy, int ncols) {
    const int nb = K / B, vpb = B / 8;
    const __m512i mask = _mm512_set1_epi8(0x0F);
    __m512 y[MR];
    for (int m = 0; m < MR; ++m) y[m] = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        __m512i lo[MR], hi[MR];
        for (int m = 0; m < MR; ++m) lo[m] = hi[m] = _mm512_setzero_si512();
        const uint8_t* wb = wt + (size_t)b * vpb * VEC;
        const int8_t* ab = qa.q + (size_t)b * B;
        for (int j = 0; j < vpb; ++j) {
            _mm_prefetch((const char*)(wb + (size_t)j * VEC + PREFETCH), _MM_HINT_T0);
            const __m512i v = _mm512_loadu_si512(wb + (size_t)j * VEC);
            const __m512i wl = _mm512_and_si512(v, mask);
            const __m512i wh = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
            for (int m = 0; m < MR; ++m) {
                const int8_t* a = ab + (size_t)m * K + 8 * j;
                lo[m] = _mm512_dpbusd_epi32(lo[m], wl, _mm512_set1_epi32(load4(a)));
                hi[m] = _mm512_dpbusd_epi32(hi[m], wh, _mm512_set1_epi32(load4(a + 4)));
            }
        }
        const __m512 sw = _mm512_loadu_ps(st + b * TILE);
        for (int m = 0; m < MR; ++m) {
            const __m512i d = _mm512_sub_epi32(_mm512_add_epi32(lo[m], hi[m]),
                                               _mm512_set1_epi32(8 * qa.sum[m * nb + b]));
            const __m512 s = _mm512_mul_ps(sw, _mm512_set1_ps(qa.sa[m * nb + b]));
            y[m] = _mm512_add_ps(y[m], _mm512_mul_ps(_mm512_cvtepi32_ps(d), s));
        }
    }
    const __mmask16 keep = (__mmask16)((1u << ncols) - 1u);
    for (int m = 0; m < MR; ++m) _mm512_mask_storeu_ps(Y + (size_t)m * ldy, keep, y[m]);
}

// ---- AVX2: the same layout, a tile as two halves of 8 columns ------------------------------------------------------
template <int MR>
__attribute__((target("avx2,fma"))) void tile_avx2(const uint8_t* wt, const float* st, const QuantA& qa, int K, int B,
                                                   float* Y, int ldy, int ncols) {
    const int nb = K / B, vpb = B / 8;
    const __m256i mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 y[MR][2];
    for (int m = 0; m < MR; ++m) y[m][0] = y[m][1] = _mm256_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        __m256i acc[MR][2];
        for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_si256();
        const uint8_t* wb = wt + (size_t)b * vpb * VEC;
        const int8_t* ab = qa.q + (size_t)b * B;
        for (int j = 0; j < vpb; ++j) {
            _mm_prefetch((const char*)(wb + (size_t)j * VEC + PREFETCH), _MM_HINT_T0);
            for (int h = 0; h < 2; ++h) {
                const __m256i v = _mm256_loadu_si256((const __m256i*)(wb + (size_t)j * VEC + 32 * h));
                const __m256i wl = _mm256_and_si256(v, mask);
                const __m256i wh = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                for (int m = 0; m < MR; ++m) {
                    const int8_t* a = ab + (size_t)m * K + 8 * j;
                    const __m256i pl = _mm256_maddubs_epi16(wl, _mm256_set1_epi32(load4(a)));      // |.| <= 3810
                    const __m256i ph = _mm256_maddubs_epi16(wh, _mm256_set1_epi32(load4(a + 4)));
                    acc[m][h] = _mm256_add_epi32(acc[m][h], _mm256_madd_epi16(_mm256_add_epi16(pl, ph), ones));
                }
            }
        }
        for (int m = 0; m < MR; ++m) {
            const __m256i corr = _mm256_set1_epi32(8 * qa.sum[m * nb + b]);
            const __m256 s_a = _mm256_set1_ps(qa.sa[m * nb + b]);
            for (int h = 0; h < 2; ++h) {
                const __m256 s = _mm256_mul_ps(_mm256_loadu_ps(st + b * TILE + 8 * h), s_a);
                const __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[m][h], corr));
                y[m][h] = _mm256_add_ps(y[m][h], _mm256_mul_ps(f, s));
            }
        }
    }
    for (int m = 0; m < MR; ++m) {
        float out[TILE];
        _mm256_storeu_ps(out, y[m][0]);
        _mm256_storeu_ps(out + 8, y[m][1]);
        for (int n = 0; n < ncols; ++n) Y[(size_t)m * ldy + n] = out[n];
    }
}
#endif

using TileFn = void (*)(const uint8_t*, const float*, const QuantA&, int, int, float*, int, int);

#ifdef JE_X86
TileFn vnni_fn(int mr) {
    static const TileFn t[MAX_ROWS + 1] = {nullptr,      tile_vnni<1>, tile_vnni<2>, tile_vnni<3>, tile_vnni<4>,
                                           tile_vnni<5>, tile_vnni<6>, tile_vnni<7>, tile_vnni<8>};
    return t[mr];
}
TileFn avx2_fn(int mr) {
    static const TileFn t[AVX2_MAX_ROWS + 1] = {nullptr, tile_avx2<1>, tile_avx2<2>, tile_avx2<3>, tile_avx2<4>};
    return t[mr];
}
#endif

// All rows of one tile, in chunks the path's registers hold (the tile's weights stay in cache between chunks).
void run_tile(int isa, const uint8_t* wt, const float* st, const QuantA& qa, int M, int K, int B, float* Y, int ldy,
              int ncols) {
    const int chunk = isa == AVX2 ? AVX2_MAX_ROWS : MAX_ROWS;
    const int nb = K / B;
    for (int m0 = 0; m0 < M; m0 += chunk) {
        const int mr = M - m0 < chunk ? M - m0 : chunk;
        const QuantA part{qa.q + (size_t)m0 * K, qa.sa + m0 * nb, qa.sum + m0 * nb};
        float* y = Y + (size_t)m0 * ldy;
#ifdef JE_X86
        if (isa == AVX512VNNI) { vnni_fn(mr)(wt, st, part, K, B, y, ldy, ncols); continue; }
        if (isa == AVX2) { avx2_fn(mr)(wt, st, part, K, B, y, ldy, ncols); continue; }
#endif
        tile_scalar(mr, wt, st, part, K, B, y, ldy, ncols);
    }
}

bool valid(int K, int N, int B) {
    return K > 0 && N > 0 && B >= 8 && B % 8 == 0 && K % B == 0;
}

}  // namespace

extern "C" {

int je_cpu_abi_version() { return 1; }

// 2 = AVX-512 VNNI, 1 = AVX2, 0 = plain C++: the best path this CPU runs.
int je_cpu_best_isa() { return BEST_ISA; }

// Threads a call uses when asked for 0: the CPUs this process may run on.
int je_cpu_default_threads() {
    const unsigned n = std::thread::hardware_concurrency();
    return n ? (int)n : 1;
}

// Bytes of the packed weights and floats of the packed scales for a K x N int4 matrix in blocks of B.
int64_t je_q4_packed_bytes(int K, int N, int B) {
    if (!valid(K, N, B)) return -1;
    return (int64_t)((N + TILE - 1) / TILE) * K / 2 * TILE;
}
int64_t je_q4_packed_scales(int K, int N, int B) {
    if (!valid(K, N, B)) return -1;
    return (int64_t)((N + TILE - 1) / TILE) * (K / B) * TILE;
}

// w: int8 [K, N] with values in [-8, 7]; scale: float [K/B, N] -> packed (je_q4_packed_bytes) and packed_scale
// (je_q4_packed_scales). Columns past N (the last tile's padding) get w = 0 and scale 0. Returns 0, or -1 (bad
// sizes), -2 (a value outside [-8, 7]).
int je_q4_pack(const int8_t* w, const float* scale, int K, int N, int B, uint8_t* packed, float* packed_scale) {
    if (!valid(K, N, B)) return -1;
    const int nt = (N + TILE - 1) / TILE, nb = K / B, vpb = B / 8;
    for (int64_t i = 0, n = (int64_t)K * N; i < n; ++i)
        if (w[i] < -8 || w[i] > 7) return -2;
    for (int t = 0; t < nt; ++t)
        for (int b = 0; b < nb; ++b) {
            for (int n = 0; n < TILE; ++n) {
                const int col = t * TILE + n;
                packed_scale[((size_t)t * nb + b) * TILE + n] = col < N ? scale[(size_t)b * N + col] : 0.0f;
            }
            for (int j = 0; j < vpb; ++j) {
                uint8_t* v = packed + (((size_t)t * nb + b) * vpb + j) * VEC;
                for (int n = 0; n < TILE; ++n) {
                    const int col = t * TILE + n;
                    for (int i = 0; i < 4; ++i) {
                        const int k = b * B + 8 * j + i;
                        const int lo = col < N ? w[(size_t)k * N + col] + 8 : 8;
                        const int hi = col < N ? w[(size_t)(k + 4) * N + col] + 8 : 8;
                        v[4 * n + i] = (uint8_t)(lo | (hi << 4));
                    }
                }
            }
        }
    return 0;
}

// Y [M, N] = A [M, K] @ W. scratch: M*K int8 + 2*M*(K/B) 4-byte values (je_q4_scratch_bytes), or null (allocated
// here). isa: -1 = the best this CPU has, else one of the paths (one the CPU lacks returns -3). threads <= 0: every
// CPU (je_cpu_default_threads); the threads are cpu_pool.h's. Returns 0, or -1 (bad sizes), -3.
int64_t je_q4_scratch_bytes(int M, int K, int B) {
    if (M <= 0 || !valid(K, 1, B)) return -1;
    return (int64_t)M * K + 8 * (int64_t)M * (K / B);
}

int je_q4_gemm(const float* A, int M, int K, const uint8_t* packed, const float* packed_scale, int N, int B, float* Y,
               int threads, int isa, void* scratch) {
    if (M <= 0 || !valid(K, N, B)) return -1;
    if (isa < 0) isa = BEST_ISA;
    if (isa > BEST_ISA) return -3;
    const int nb = K / B, nt = (N + TILE - 1) / TILE;
    unsigned char* mem = (unsigned char*)scratch;
    unsigned char* owned = nullptr;
    if (!mem) mem = owned = new unsigned char[je_q4_scratch_bytes(M, K, B)];
    float* sa = (float*)mem;
    int32_t* sums = (int32_t*)(mem + 4 * (size_t)M * nb);
    int8_t* q = (int8_t*)(mem + 8 * (size_t)M * nb);
    const int nthr = std::max(1, std::min(threads > 0 ? threads : je_cpu_default_threads(), nt));
    je::Pool& pool = je::Pool::get();
    const int qthr = M >= 16 ? std::min(nthr, M) : 1;  // prefill: rows over the threads
    pool.run(qthr, [&](int i) { quantize_rows(A, M * i / qthr, M * (i + 1) / qthr, K, B, q, sa, sums); });
    const QuantA qa{q, sa, sums};
    const size_t tile_bytes = (size_t)K / 2 * TILE, tile_scales = (size_t)nb * TILE;
    pool.run(nthr, [&](int i) {  // a contiguous range of tiles per thread: one stream each
        for (int t = nt * i / nthr; t < nt * (i + 1) / nthr; ++t) {
            const int ncols = N - t * TILE < TILE ? N - t * TILE : TILE;
            run_tile(isa, packed + t * tile_bytes, packed_scale + t * tile_scales, qa, M, K, B, Y + (size_t)t * TILE,
                     N, ncols);
        }
    });
    delete[] owned;
    return 0;
}

}  // extern "C"
