// janus-edge host library: the kernels' math on the CPU, from the same header (tests call it through ctypes).
//
// The sampler runs in two algorithms that must give the same token:
//   algo 0 (reference) sorts the top-k set by key, as runtime/sampling.py does;
//   algo 1 runs the CUDA kernel's passes serially: radix descent over the 64-bit keys for top-k and top-p.
#include <algorithm>
#include <functional>
#include <vector>

#include "janus_edge/sampling_math.h"

namespace {

struct Params {
  int vocab, has_uncond, top_k;
  float cfg_weight, temperature;
  double top_p;
  uint64_t seed, step;
};

struct Row {            // one image: l (step 1), its top token, keys and weights (steps 2, 4)
  std::vector<float> l;
  std::vector<uint64_t> key;
  std::vector<uint32_t> w;
  int top = 0;
};

Row make_row(const float* c, const float* u, const Params& p) {
  Row r;
  r.l.resize(p.vocab);
  for (int i = 0; i < p.vocab; ++i) r.l[i] = p.has_uncond ? je::cfg_combine(c[i], u[i], p.cfg_weight) : je::sanitize(c[i]);
  uint64_t best = 0;
  r.key.resize(p.vocab);
  for (int i = 0; i < p.vocab; ++i) {
    r.key[i] = je::order_key(r.l[i], (uint32_t)i);
    best = std::max(best, r.key[i]);
  }
  r.top = (int)je::key_id(best);
  return r;
}

uint64_t kth_key_sort(const Row& r, int k) {
  std::vector<uint64_t> keys = r.key;
  std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<uint64_t>());
  return keys[k - 1];
}

uint64_t kth_key_radix(const Row& r, int k) {
  uint64_t prefix = 0;
  uint32_t krem = (uint32_t)k;
  for (int pass = 0; pass < je::kRadixPasses; ++pass) {
    uint32_t count[je::kRadixBins] = {0};
    uint64_t bin_max[je::kRadixBins] = {0};
    for (uint64_t key : r.key)
      if (je::radix_match(key, prefix, pass)) {
        int d = je::radix_digit(key, pass);
        ++count[d];
        bin_max[d] = std::max(bin_max[d], key);
      }
    int bin = je::radix_pick_count(count, pass, &krem, &prefix);
    if (je::radix_single(count, bin_max, bin, &prefix)) break;
  }
  return prefix;
}

uint64_t top_p_key_sort(const Row& r, uint64_t kth, double p) {
  std::vector<int> ids;
  uint64_t total = 0;
  for (int i = 0; i < (int)r.key.size(); ++i)
    if (r.key[i] >= kth) { ids.push_back(i); total += r.w[i]; }
  std::sort(ids.begin(), ids.end(), [&](int a, int b) { return r.key[a] > r.key[b]; });
  double limit = je::top_p_limit(p, total);
  uint64_t before = 0, thr = r.key[ids[0]];
  for (int i : ids) {
    if (!je::top_p_keep(before, limit)) break;
    thr = r.key[i];
    before += r.w[i];
  }
  return thr;
}

uint64_t top_p_key_radix(const Row& r, uint64_t kth, double p) {
  uint64_t total = 0;
  for (size_t i = 0; i < r.key.size(); ++i)
    if (r.key[i] >= kth) total += r.w[i];
  double limit = je::top_p_limit(p, total);
  uint64_t prefix = 0, above = 0;
  for (int pass = 0; pass < je::kRadixPasses; ++pass) {
    uint32_t count[je::kRadixBins] = {0};
    uint64_t mass[je::kRadixBins] = {0}, bin_max[je::kRadixBins] = {0};
    for (size_t i = 0; i < r.key.size(); ++i) {
      uint64_t key = r.key[i];
      if (key >= kth && je::radix_match(key, prefix, pass)) {
        int d = je::radix_digit(key, pass);
        ++count[d];
        mass[d] += r.w[i];
        bin_max[d] = std::max(bin_max[d], key);
      }
    }
    int bin = je::radix_pick_mass(count, mass, pass, limit, &above, &prefix);
    if (je::radix_single(count, bin_max, bin, &prefix)) break;
  }
  return prefix;
}

// steps 5-6: the smallest kept key (keep key >= it); r.w filled
uint64_t kept_threshold(const Row& r, const Params& p, int algo) {
  uint64_t thr = 0;
  if (p.top_k > 0 && p.top_k < p.vocab) thr = algo == 0 ? kth_key_sort(r, p.top_k) : kth_key_radix(r, p.top_k);
  if (p.top_p < 1.0) thr = algo == 0 ? top_p_key_sort(r, thr, p.top_p) : top_p_key_radix(r, thr, p.top_p);
  return thr;
}

int64_t sample_image(const float* c, const float* u, const Params& p, uint32_t image, int algo) {
  Row r = make_row(c, u, p);
  const float lmax = r.l[r.top];
  if (!(p.temperature > 0.0f) || p.top_k == 1 || lmax == je::neg_inf()) return r.top;   // step 3
  r.w.resize(p.vocab);
  for (int i = 0; i < p.vocab; ++i) r.w[i] = je::weight(r.l[i], lmax, p.temperature);
  const uint64_t thr = kept_threshold(r, p, algo);
  uint64_t kept = 0;
  for (int i = 0; i < p.vocab; ++i)
    if (r.key[i] >= thr) kept += r.w[i];
  if (kept == 0) return r.top;
  uint64_t t = je::draw_target(je::philox_draw(p.seed, p.step, image, 0), kept), acc = 0;   // step 7
  for (int i = 0; i < p.vocab; ++i) {
    if (r.key[i] < thr) continue;
    if (t < acc + r.w[i]) return i;
    acc += r.w[i];
  }
  return r.top;                                                                         // unreachable
}

}  // namespace

extern "C" {

int je_host_abi_version(void) { return 1; }

void je_host_philox(const uint32_t* ctr, const uint32_t* key, int rounds, uint32_t* out) {
  je::U32x4 c = {{ctr[0], ctr[1], ctr[2], ctr[3]}};
  je::U32x4 o = je::philox4x32(c, key[0], key[1], rounds);
  for (int i = 0; i < 4; ++i) out[i] = o.v[i];
}

void je_host_draws(uint64_t seed, const int64_t* steps, const uint32_t* images, int64_t n, uint32_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = je::philox_draw(seed, (uint64_t)steps[i], images[i], 0);
}

void je_host_u01(const uint32_t* r, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = je::u01(r[i]);
}

void je_host_expf(const float* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = je::expf_je(x[i]);
}

void je_host_weights(const float* l, int64_t n, float lmax, float temperature, uint32_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = je::weight(l[i], lmax, temperature);
}

void je_host_cfg_combine(const float* c, const float* u, int64_t n, float w, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = je::cfg_combine(c[i], u[i], w);
}

void je_host_order_keys(const float* l, int64_t n, uint64_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = je::order_key(l[i], (uint32_t)i);
}

// The cfg_sample kernel on the CPU. logits: [n_images * (has_uncond ? 2 : 1), vocab] float32 (dtype 0) or fp16 bits
// (dtype 1); cond rows first, then uncond rows. out: int64 [rows_per_image * n_images]; row r gets image r % n.
// Returns 0, or -1 for a bad argument (nothing written).
int je_host_cfg_sample(const void* logits, int dtype, int n_images, int vocab, int has_uncond, float cfg_weight,
                       float temperature, int top_k, double top_p, uint64_t seed, int64_t step, int64_t* out,
                       int rows_per_image, int algo) {
  if (n_images < 1 || vocab < 1 || (dtype != 0 && dtype != 1) || !(temperature >= 0.0f) || top_k < 0 ||
      !(top_p > 0.0) || step < 0 || rows_per_image < 1 || (algo != 0 && algo != 1))
    return -1;
  Params p = {vocab, has_uncond ? 1 : 0, top_k, cfg_weight, temperature, top_p, seed, (uint64_t)step};
  size_t rows = (size_t)n_images * (has_uncond ? 2 : 1);
  std::vector<float> x(rows * (size_t)vocab);
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = dtype == 0 ? ((const float*)logits)[i] : je::half_bits_to_float(((const uint16_t*)logits)[i]);
  std::vector<int64_t> tok(n_images);
  for (int img = 0; img < n_images; ++img) {
    const float* c = &x[(size_t)img * vocab];
    const float* u = has_uncond ? &x[(size_t)(n_images + img) * vocab] : c;
    tok[img] = sample_image(c, u, p, (uint32_t)img, algo);
  }
  for (int r = 0; r < rows_per_image * n_images; ++r) out[r] = tok[r % n_images];
  return 0;
}

// Steps 5-6 alone, for the tests: one row of logits (float32, no CFG; temperature > 0; a finite maximum) ->
// mask[i] = 1 for the tokens top-k and top-p keep. Returns 0, or -1 for a bad argument.
int je_host_kept(const float* logits, int vocab, float temperature, int top_k, double top_p, int algo, uint8_t* mask) {
  if (vocab < 1 || !(temperature > 0.0f) || top_k < 0 || !(top_p > 0.0) || (algo != 0 && algo != 1)) return -1;
  Params p = {vocab, 0, top_k, 1.0f, temperature, top_p, 0, 0};
  Row r = make_row(logits, logits, p);
  const float lmax = r.l[r.top];
  if (lmax == je::neg_inf()) return -1;
  r.w.resize(vocab);
  for (int i = 0; i < vocab; ++i) r.w[i] = je::weight(r.l[i], lmax, temperature);
  const uint64_t thr = kept_threshold(r, p, algo);
  for (int i = 0; i < vocab; ++i) mask[i] = r.key[i] >= thr;
  return 0;
}

// The kv_append kernel on the CPU (same index math): ntensors caches [rows, kvh, max_len, head_dim] receive
// src [rows, kvh, seq, head_dim] at pos[0] (or pos[row] with per_row). Returns 0, -1 bad argument, -2 out of range.
int je_host_kv_append(void* const* cache, const void* const* src, int ntensors, int rows, int kvh, int max_len,
                      int seq, int head_dim, int elem_bytes, const int64_t* pos, int per_row) {
  if (ntensors < 1 || rows < 1 || kvh < 1 || max_len < 1 || seq < 1 || head_dim < 1 || elem_bytes < 1) return -1;
  const uint64_t units = (uint64_t)rows * kvh * seq * head_dim;
  int skipped = 0;
  for (int t = 0; t < ntensors; ++t) {
    char* dst = (char*)cache[t];
    const char* s = (const char*)src[t];
    for (uint64_t u = 0; u < units; ++u) {
      uint64_t d;
      if (je::kv_dst(u, kvh, seq, max_len, head_dim, pos, per_row, &d))
        memcpy(dst + d * elem_bytes, s + u * elem_bytes, elem_bytes);
      else
        skipped = 1;
    }
  }
  return skipped ? -2 : 0;
}

}  // extern "C"
