// janus-edge: the per-element math of the native kernels, once, for the GPU (nvcc) and the host (g++).
//
// Every function here is pure and uses only IEEE-754 float32 +, -, *, / (correctly rounded, never fused: the host
// library is built with -ffp-contract=off, device code uses the __f*_rn intrinsics, which nvcc never contracts),
// integer arithmetic and exact conversions. So the host library, the CUDA kernels and the numpy twin
// (runtime/sampling.py, runtime/philox.py) compute the same bits. The sampling definition is written out in
// runtime/sampling.py's docstring; the comments here name the step each function implements.
#pragma once

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define JE_HD __host__ __device__ __forceinline__
#else
#define JE_HD inline
#endif

namespace je {

// ---- float ops that are never fused ------------------------------------------------------------------------------
#ifdef __CUDA_ARCH__
JE_HD float fadd(float a, float b) { return __fadd_rn(a, b); }
JE_HD float fsub(float a, float b) { return __fsub_rn(a, b); }
JE_HD float fmul(float a, float b) { return __fmul_rn(a, b); }
JE_HD float fdiv(float a, float b) { return __fdiv_rn(a, b); }
JE_HD uint32_t f2u(float x) { return __float_as_uint(x); }
JE_HD float u2f(uint32_t u) { return __uint_as_float(u); }
JE_HD double u64_to_f64(uint64_t x) { return __ull2double_rn(x); }
#else
JE_HD float fadd(float a, float b) { return a + b; }
JE_HD float fsub(float a, float b) { return a - b; }
JE_HD float fmul(float a, float b) { return a * b; }
JE_HD float fdiv(float a, float b) { return a / b; }
JE_HD uint32_t f2u(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
JE_HD float u2f(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }
JE_HD double u64_to_f64(uint64_t x) { return (double)x; }  // exact: the sums passed here stay below 2**53
#endif

JE_HD float neg_inf() { return u2f(0xFF800000u); }

// fp16 bits -> float (exact; used by the host library; the kernels use __half2float, which is the same function)
JE_HD float half_bits_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  if (exp == 0x1F) return u2f(sign | 0x7F800000u | (man << 13));         // inf / nan
  if (exp == 0) {
    if (man == 0) return u2f(sign);                                        // +-0
    int e = -1;                                                            // subnormal: normalise
    do { man <<= 1; ++e; } while (!(man & 0x400u));
    return u2f(sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FFu) << 13));
  }
  return u2f(sign | ((exp + 127 - 15) << 23) | (man << 13));
}

// ---- Philox4x32-10 (Random123: Salmon, Moraes, Dror, Shaw, SC'11) --------------------------------------------------
struct U32x4 { uint32_t v[4]; };

JE_HD U32x4 philox4x32(U32x4 c, uint32_t k0, uint32_t k1, int rounds = 10) {
  for (int r = 0; r < rounds; ++r) {
    if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    uint64_t p0 = (uint64_t)0xD2511F53u * c.v[0], p1 = (uint64_t)0xCD9E8D57u * c.v[2];
    U32x4 o = {{(uint32_t)(p1 >> 32) ^ c.v[1] ^ k0, (uint32_t)p1, (uint32_t)(p0 >> 32) ^ c.v[3] ^ k1, (uint32_t)p0}};
    c = o;
  }
  return c;
}

// The draw for (seed, step, image, draw): key (seed lo, seed hi), counter (step lo, step hi, image, draw), word 0.
JE_HD uint32_t philox_draw(uint64_t seed, uint64_t step, uint32_t image, uint32_t draw) {
  U32x4 c = {{(uint32_t)step, (uint32_t)(step >> 32), image, draw}};
  return philox4x32(c, (uint32_t)seed, (uint32_t)(seed >> 32)).v[0];
}

// uint32 -> uniform float in [0, 1): top 24 bits * 2**-24 (exact)
JE_HD float u01(uint32_t r) { return (float)(r >> 8) * 5.9604644775390625e-8f; }

// ---- step 1: logits -> l ------------------------------------------------------------------------------------------
JE_HD float sanitize(float x) { return x != x ? neg_inf() : (x > FLT_MAX ? FLT_MAX : x); }

// u + w * (c - u), inputs and result sanitized
JE_HD float cfg_combine(float c, float u, float w) {
  c = sanitize(c); u = sanitize(u);
  return sanitize(fadd(u, fmul(w, fsub(c, u))));
}

// ---- step 2: the order. Larger key = earlier: value descending, then lower token id. ------------------------------
JE_HD uint32_t order_bits(float l) {
  uint32_t b = f2u(l);
  if (b == 0x80000000u) b = 0;                   // -0 == +0
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

JE_HD uint64_t order_key(float l, uint32_t id) {
  return ((uint64_t)order_bits(l) << 32) | (uint64_t)(0xFFFFFFFFu - id);
}

JE_HD uint32_t key_id(uint64_t key) { return 0xFFFFFFFFu - (uint32_t)key; }

// ---- step 4: weights ----------------------------------------------------------------------------------------------
// exp(x) for x <= 0 (Cephes expf's reduction and polynomial), float32 ops only; 0 below -64.
JE_HD float expf_je(float x) {
  if (!(x > -64.0f)) return 0.0f;
  float n = floorf(fadd(fmul(x, 1.44269504088896341f), 0.5f));
  float r = fsub(x, fmul(n, 0.693359375f));
  r = fsub(r, fmul(n, -2.12194440e-4f));
  float p = 1.9875691500e-4f;
  p = fadd(fmul(p, r), 1.3981999507e-3f);
  p = fadd(fmul(p, r), 8.3334519073e-3f);
  p = fadd(fmul(p, r), 4.1665795894e-2f);
  p = fadd(fmul(p, r), 1.6666665459e-1f);
  p = fadd(fmul(p, r), 5.0000001201e-1f);
  float e = fadd(fadd(fmul(fmul(p, r), r), r), 1.0f);
  return fmul(e, u2f((uint32_t)((int)n + 127) << 23));
}

const uint32_t kWeightOne = 0x80000000u;         // the top token's weight, 2**31

// floor(exp((l - l_max) / T) * 2**31), at most 2**31 (T > 0, l_max finite, l sanitized)
JE_HD uint32_t weight(float l, float l_max, float temperature) {
  float e = expf_je(fdiv(fsub(l, l_max), temperature));
  float s = fmul(e, 2147483648.0f);
  uint32_t w = (uint32_t)s;                      // truncation (s >= 0)
  return w > kWeightOne ? kWeightOne : w;
}

// ---- step 6: top-p -------------------------------------------------------------------------------------------------
// limit = p * W (W: the top-k set's total weight, < 2**53 so exact); token kept iff its weight-before < limit
JE_HD double top_p_limit(double p, uint64_t total) { return p * u64_to_f64(total); }
JE_HD bool top_p_keep(uint64_t before, double limit) { return u64_to_f64(before) < limit; }

// ---- step 7: the draw ----------------------------------------------------------------------------------------------
// floor(r * total / 2**32) for total < 2**48, in pieces that fit uint64
JE_HD uint64_t draw_target(uint32_t r, uint64_t total) {
  return (uint64_t)r * (total >> 32) + (((uint64_t)r * (total & 0xFFFFFFFFu)) >> 32);
}

// ---- radix descent over 64-bit order keys, 8 bits a pass (the kernel's selection; the host library emulates it) ----
const int kRadixBins = 256;
const int kRadixPasses = 8;

JE_HD int radix_shift(int pass) { return 56 - 8 * pass; }
JE_HD int radix_digit(uint64_t key, int pass) { return (int)((key >> radix_shift(pass)) & 0xFFu); }
// does `key` carry the digits chosen so far (passes 0 .. pass-1)?
JE_HD bool radix_match(uint64_t key, uint64_t prefix, int pass) {
  return pass == 0 || (key >> (64 - 8 * pass)) == (prefix >> (64 - 8 * pass));
}

// top-k: the bin holding the krem-th largest key (1-based) among the counted ones; krem and the prefix advance.
// Returns the bin.
JE_HD int radix_pick_count(const uint32_t* count, int pass, uint32_t* krem, uint64_t* prefix) {
  uint32_t acc = 0;
  for (int b = kRadixBins - 1; b >= 0; --b) {
    if (acc + count[b] >= *krem) {
      *krem -= acc;
      *prefix |= (uint64_t)b << radix_shift(pass);
      return b;
    }
    acc += count[b];
  }
  return 0;                                      // unreachable: krem <= the number counted
}

// top-p: the lowest non-empty bin whose mass-above (above + mass of higher bins) is still < limit. Returns the bin.
JE_HD int radix_pick_mass(const uint32_t* count, const uint64_t* mass, int pass, double limit, uint64_t* above,
                          uint64_t* prefix) {
  uint64_t s = *above, best_above = *above;
  int best = -1;
  for (int b = kRadixBins - 1; b >= 0; --b) {
    if (!count[b]) continue;
    if (!top_p_keep(s, limit)) break;
    best = b;
    best_above = s;
    s += mass[b];
  }
  if (best < 0) best = 0;                        // unreachable: the top key always qualifies (limit > 0)
  *above = best_above;
  *prefix |= (uint64_t)best << radix_shift(pass);
  return best;
}

// Early exit: when the chosen bin holds a single key, that key (the bin's maximum) is the answer; the later passes
// would only spell it out digit by digit.
JE_HD bool radix_single(const uint32_t* count, const uint64_t* bin_max, int bin, uint64_t* prefix) {
  if (count[bin] != 1) return false;
  *prefix = bin_max[bin];
  return true;
}

// ---- kv_append: one 'unit' (vec bytes) of one layer's new K or V -> its destination in the cache, in units -------
// src [rows, kvh, seq, row_units] (unit index = source offset), dst [rows, kvh, max_len, row_units] at position
// pos + s, pos = pos_ptr[row] (per_row) or pos_ptr[0]. Returns false (write nothing) when pos + seq is out of range.
JE_HD bool kv_dst(uint64_t unit, uint32_t kvh, uint32_t seq, uint32_t max_len, uint32_t row_units,
                  const int64_t* pos_ptr, int per_row, uint64_t* dst) {
  uint64_t c = unit % row_units, t = unit / row_units;
  uint64_t s = t % seq, rh = t / seq;            // rh = row * kvh + head
  int64_t pos = pos_ptr[per_row ? rh / kvh : 0];
  if (pos < 0 || pos + (int64_t)seq > (int64_t)max_len) return false;
  *dst = (rh * max_len + (uint64_t)pos + s) * row_units + c;
  return true;
}

}  // namespace je
