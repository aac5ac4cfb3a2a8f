// janus-edge CUDA kernels: kv_append (all layers in one launch) and cfg_sample (CFG + temperature + top-k + top-p +
// one Philox draw per image, on the device). Per-element math: include/janus_edge/sampling_math.h (shared with the
// host library and mirrored by runtime/sampling.py). Everything reads its moving parts (positions, step counter) from
// device memory, so a captured CUDA graph replays unchanged; the library allocates nothing.
#ifndef JE_CUDA_EMULATION  // native/emu/ compiles this very file for the CPU (tests), with its own launchers
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include "janus_edge/sampling_math.h"

namespace {

// ---- kv_append ------------------------------------------------------------------------------------------------------
constexpr int kMaxKv = 128;                      // tensors per launch (2 per layer); the pointer tables ride in params
struct KvPtrs {
  char* dst[kMaxKv];
  const char* src[kMaxKv];
};

template <typename V>
__global__ void kv_append_kernel(KvPtrs p, uint64_t units, uint32_t kvh, uint32_t seq, uint32_t max_len,
                                 uint32_t row_units, const int64_t* pos, int per_row) {
  const V* src = reinterpret_cast<const V*>(p.src[blockIdx.y]);
  V* dst = reinterpret_cast<V*>(p.dst[blockIdx.y]);
  for (uint64_t u = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; u < units; u += (uint64_t)gridDim.x * blockDim.x) {
    uint64_t d;
    if (je::kv_dst(u, kvh, seq, max_len, row_units, pos, per_row, &d)) dst[d] = src[u];
  }
}

// the widest copy unit (16, 8, 4, 2 or 1 bytes) that divides a row and every pointer's alignment
inline int pick_vec(void* const* cache, const void* const* src, int n, int row_bytes) {
  int vec = 16;
  for (; vec > 1; vec >>= 1) {
    bool ok = row_bytes % vec == 0;
    for (int t = 0; ok && t < n; ++t) ok = (uintptr_t)cache[t] % vec == 0 && (uintptr_t)src[t] % vec == 0;
    if (ok) break;
  }
  return vec;
}

// ---- block-wide helpers (kThreads threads, warps of 32) -------------------------------------------------------------
constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

__device__ uint64_t block_max(uint64_t v, unsigned long long* red) {
  for (int o = 16; o; o >>= 1) {
    uint64_t x = __shfl_down_sync(0xFFFFFFFFu, (unsigned long long)v, o);
    v = x > v ? x : v;
  }
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint64_t m = red[0];
    for (int i = 1; i < kWarps; ++i) m = red[i] > m ? red[i] : m;
    red[kWarps] = m;
  }
  __syncthreads();
  uint64_t m = red[kWarps];
  __syncthreads();                               // red is reused by the next call
  return m;
}

__device__ uint64_t block_sum(uint64_t v, unsigned long long* red) {
  for (int o = 16; o; o >>= 1) v += __shfl_down_sync(0xFFFFFFFFu, (unsigned long long)v, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint64_t s = 0;
    for (int i = 0; i < kWarps; ++i) s += red[i];
    red[kWarps] = s;
  }
  __syncthreads();
  uint64_t s = red[kWarps];
  __syncthreads();
  return s;
}

// exclusive prefix sum over the threads, in thread order
__device__ uint64_t block_exclusive_scan(uint64_t v, unsigned long long* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint64_t inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    uint64_t x = __shfl_up_sync(0xFFFFFFFFu, (unsigned long long)inc, o);
    if (lane >= o) inc += x;
  }
  if (lane == 31) red[warp] = inc;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint64_t s = 0;
    for (int i = 0; i < kWarps; ++i) { uint64_t t = red[i]; red[i] = s; s += t; }
  }
  __syncthreads();
  uint64_t ex = red[warp] + inc - v;
  __syncthreads();
  return ex;
}

// ---- cfg_sample -----------------------------------------------------------------------------------------------------
__device__ __forceinline__ float ld(const float* p, int i) { return p[i]; }
__device__ __forceinline__ float ld(const __half* p, int i) { return __half2float(p[i]); }

template <typename T>
struct RowView {                                  // one image's logits, step 1 on the fly (re-read from L2 each pass)
  const T* c;
  const T* u;
  int has_uncond;
  float w;
  __device__ float l(int i) const { return has_uncond ? je::cfg_combine(ld(c, i), ld(u, i), w) : je::sanitize(ld(c, i)); }
};

struct Shared {
  uint32_t count[je::kRadixBins];
  unsigned long long mass[je::kRadixBins];
  unsigned long long bin_max[je::kRadixBins];    // the largest key per bin (early exit on a single-key bin)
  unsigned long long red[kWarps + 1];
  unsigned long long prefix, above;
  uint32_t krem;
  int done;
  long long token;
};

// Each pass counts (and for top-p weighs) the candidate keys per 8-bit digit; thread 0 picks the digit; a bin
// holding a single key ends the descent early (that key is the answer).
template <typename T>
__device__ uint64_t select_top_k(const RowView<T>& row, int V, int k, Shared& sh) {
  if (threadIdx.x == 0) { sh.prefix = 0; sh.krem = (uint32_t)k; sh.done = 0; }
  for (int pass = 0; pass < je::kRadixPasses; ++pass) {
    for (int b = threadIdx.x; b < je::kRadixBins; b += kThreads) { sh.count[b] = 0; sh.bin_max[b] = 0; }
    __syncthreads();
    const uint64_t prefix = sh.prefix;
    for (int i = threadIdx.x; i < V; i += kThreads) {
      uint64_t key = je::order_key(row.l(i), (uint32_t)i);
      if (je::radix_match(key, prefix, pass)) {
        int d = je::radix_digit(key, pass);
        atomicAdd(&sh.count[d], 1u);
        atomicMax(&sh.bin_max[d], (unsigned long long)key);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t pf = sh.prefix;
      int bin = je::radix_pick_count(sh.count, pass, &sh.krem, &pf);
      sh.done = je::radix_single(sh.count, reinterpret_cast<const uint64_t*>(sh.bin_max), bin, &pf);
      sh.prefix = pf;
    }
    __syncthreads();
    if (sh.done) break;                          // uniform: every thread reads the same flag
  }
  return sh.prefix;
}

template <typename T>
__device__ uint64_t select_top_p(const RowView<T>& row, int V, uint64_t kth, float lmax, float temp, double p,
                                 Shared& sh) {
  uint64_t local = 0;
  for (int i = threadIdx.x; i < V; i += kThreads) {
    float l = row.l(i);
    if (je::order_key(l, (uint32_t)i) >= kth) local += je::weight(l, lmax, temp);
  }
  const double limit = je::top_p_limit(p, block_sum(local, sh.red));
  if (threadIdx.x == 0) { sh.prefix = 0; sh.above = 0; sh.done = 0; }
  for (int pass = 0; pass < je::kRadixPasses; ++pass) {
    for (int b = threadIdx.x; b < je::kRadixBins; b += kThreads) { sh.count[b] = 0; sh.mass[b] = 0; sh.bin_max[b] = 0; }
    __syncthreads();
    const uint64_t prefix = sh.prefix;
    for (int i = threadIdx.x; i < V; i += kThreads) {
      float l = row.l(i);
      uint64_t key = je::order_key(l, (uint32_t)i);
      if (key >= kth && je::radix_match(key, prefix, pass)) {
        int d = je::radix_digit(key, pass);
        atomicAdd(&sh.count[d], 1u);
        atomicAdd(&sh.mass[d], (unsigned long long)je::weight(l, lmax, temp));
        atomicMax(&sh.bin_max[d], (unsigned long long)key);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t pf = sh.prefix, ab = sh.above;
      int bin = je::radix_pick_mass(sh.count, reinterpret_cast<const uint64_t*>(sh.mass), pass, limit, &ab, &pf);
      sh.done = je::radix_single(sh.count, reinterpret_cast<const uint64_t*>(sh.bin_max), bin, &pf);
      sh.prefix = pf;
      sh.above = ab;
    }
    __syncthreads();
    if (sh.done) break;
  }
  return sh.prefix;
}

// One block per image. logits: [n (+ n uncond), V]; out: int64 [rows_per_image * n], row r <- image r % n.
template <typename T>
__global__ void __launch_bounds__(kThreads)
cfg_sample_kernel(const T* logits, int n, int V, int has_uncond, float w, float temp, int top_k, double top_p,
                  uint64_t seed, const int64_t* step_ptr, int64_t* out, int rows_per_image) {
  __shared__ Shared sh;
  const int img = blockIdx.x;
  RowView<T> row{logits + (size_t)img * V, logits + (size_t)(has_uncond ? n + img : img) * V, has_uncond, w};

  uint64_t best = 0;                                                        // steps 1-3: the top token
  for (int i = threadIdx.x; i < V; i += kThreads) {
    uint64_t key = je::order_key(row.l(i), (uint32_t)i);
    best = key > best ? key : best;
  }
  best = block_max(best, sh.red);
  const int top = (int)je::key_id(best);
  const float lmax = row.l(top);
  long long token = top;
  if (temp > 0.0f && top_k != 1 && lmax != je::neg_inf()) {
    uint64_t thr = 0;                                                       // steps 5-6: keep key >= thr
    if (top_k > 0 && top_k < V) thr = select_top_k(row, V, top_k, sh);
    if (top_p < 1.0) thr = select_top_p(row, V, thr, lmax, temp, top_p, sh);
    // step 7: in token-id order; each thread owns a contiguous chunk
    const int chunk = (V + kThreads - 1) / kThreads, lo = threadIdx.x * chunk, hi = min(V, lo + chunk);
    uint64_t local = 0;
    for (int i = lo; i < hi; ++i) {
      float l = row.l(i);
      if (je::order_key(l, (uint32_t)i) >= thr) local += je::weight(l, lmax, temp);
    }
    const uint64_t kept = block_sum(local, sh.red);
    const uint64_t ex = block_exclusive_scan(local, sh.red);
    if (threadIdx.x == 0) sh.token = top;
    __syncthreads();
    if (kept > 0) {
      const uint64_t t = je::draw_target(je::philox_draw(seed, (uint64_t)*step_ptr, (uint32_t)img, 0), kept);
      if (local > 0 && ex <= t && t < ex + local) {
        uint64_t acc = ex;
        for (int i = lo; i < hi; ++i) {
          float l = row.l(i);
          if (je::order_key(l, (uint32_t)i) < thr) continue;
          uint32_t wi = je::weight(l, lmax, temp);
          if (t < acc + wi) { sh.token = i; break; }
          acc += wi;
        }
      }
    }
    __syncthreads();
    token = sh.token;
  }
  for (int r = threadIdx.x; r < rows_per_image; r += kThreads) out[(size_t)r * n + img] = token;
}

__global__ void add_i64_kernel(int64_t* p, int n, int64_t delta) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] += delta;
}

__global__ void broadcast_i64_kernel(int64_t* dst, int n, const int64_t* src, int64_t offset) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = *src + offset;
}

// ---- finite check of logits the device sampler reads (the host never sees them): *flag = max(*flag, worst),
// worst 2 = a NaN, 1 = an inf (no NaN), 0 = all finite. Classified by bits (exponent all ones), so float32 and
// float16 need no conversion and fast-math cannot fold the test away.
template <typename U, U kExp, U kMan>
__global__ void nonfinite_kernel(const U* x, uint64_t n, unsigned long long* flag) {
  unsigned long long worst = 0;
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
    const U b = x[i];
    if ((b & kExp) == kExp) {
      const unsigned long long k = (b & kMan) ? 2ull : 1ull;
      if (k > worst) worst = k;
    }
  }
  if (worst) atomicMax(flag, worst);
}
constexpr int kFiniteThreads = 256;
inline unsigned finite_blocks(uint64_t n) {
  uint64_t b = (n + kFiniteThreads - 1) / kFiniteThreads;
  return (unsigned)(b < 1024 ? (b ? b : 1) : 1024);
}

}  // namespace

#ifndef JE_CUDA_EMULATION
namespace {
template <typename V>
cudaError_t launch_kv(const KvPtrs& p, int n, uint64_t units, int kvh, int seq, int max_len, int row_units,
                      const int64_t* pos, int per_row, cudaStream_t stream) {
  const int threads = 256;
  uint64_t blocks = (units + threads - 1) / threads;
  dim3 grid((unsigned)(blocks < 4096 ? blocks : 4096), (unsigned)n);
  kv_append_kernel<V><<<grid, threads, 0, stream>>>(p, units, kvh, seq, max_len, row_units, pos, per_row);
  return cudaGetLastError();
}

}  // namespace

extern "C" {

int je_cuda_abi_version(void) { return 1; }

// All ntensors (K and V of every layer: cache[t] [rows, kvh, max_len, head_dim], src[t] [rows, kvh, seq, head_dim])
// in one launch per 128 tensors. pos: device int64, [1] or [rows] (per_row). Returns a cudaError_t (0 = success),
// or -1 for a bad argument. Out-of-range positions write nothing.
int je_cuda_kv_append(void* const* cache, const void* const* src, int ntensors, int rows, int kvh, int max_len,
                      int seq, int head_dim, int elem_bytes, const int64_t* pos, int per_row, void* stream) {
  if (ntensors < 1 || rows < 1 || kvh < 1 || max_len < 1 || seq < 1 || head_dim < 1 || elem_bytes < 1 || !pos)
    return -1;
  const int row_bytes = head_dim * elem_bytes;
  const int vec = pick_vec(cache, src, ntensors, row_bytes);
  const int row_units = row_bytes / vec;
  const uint64_t units = (uint64_t)rows * kvh * seq * row_units;
  cudaStream_t s = (cudaStream_t)stream;
  for (int t0 = 0; t0 < ntensors; t0 += kMaxKv) {
    KvPtrs p;
    const int n = ntensors - t0 < kMaxKv ? ntensors - t0 : kMaxKv;
    for (int t = 0; t < n; ++t) { p.dst[t] = (char*)cache[t0 + t]; p.src[t] = (const char*)src[t0 + t]; }
    cudaError_t e;
    switch (vec) {
      case 16: e = launch_kv<uint4>(p, n, units, kvh, seq, max_len, row_units, pos, per_row, s); break;
      case 8: e = launch_kv<uint2>(p, n, units, kvh, seq, max_len, row_units, pos, per_row, s); break;
      case 4: e = launch_kv<uint32_t>(p, n, units, kvh, seq, max_len, row_units, pos, per_row, s); break;
      case 2: e = launch_kv<uint16_t>(p, n, units, kvh, seq, max_len, row_units, pos, per_row, s); break;
      default: e = launch_kv<uint8_t>(p, n, units, kvh, seq, max_len, row_units, pos, per_row, s); break;
    }
    if (e != cudaSuccess) return (int)e;
  }
  return 0;
}

// The sampler: see runtime/sampling.py for the definition. dtype 0 = float32 logits, 1 = float16. step: device int64.
int je_cuda_cfg_sample(const void* logits, int dtype, int n_images, int vocab, int has_uncond, float cfg_weight,
                       float temperature, int top_k, double top_p, uint64_t seed, const int64_t* step, int64_t* out,
                       int rows_per_image, void* stream) {
  if (n_images < 1 || vocab < 1 || (dtype != 0 && dtype != 1) || !(temperature >= 0.0f) || top_k < 0 ||
      !(top_p > 0.0) || rows_per_image < 1 || !logits || !step || !out)
    return -1;
  cudaStream_t s = (cudaStream_t)stream;
  if (dtype == 0)
    cfg_sample_kernel<float><<<n_images, kThreads, 0, s>>>((const float*)logits, n_images, vocab, has_uncond ? 1 : 0,
        cfg_weight, temperature, top_k, top_p, seed, step, out, rows_per_image);
  else
    cfg_sample_kernel<__half><<<n_images, kThreads, 0, s>>>((const __half*)logits, n_images, vocab,
        has_uncond ? 1 : 0, cfg_weight, temperature, top_k, top_p, seed, step, out, rows_per_image);
  return (int)cudaGetLastError();
}

// *flag = max(*flag, 2 if x[0..n) holds a NaN, 1 if an inf); dtype 0 = float32, 1 = float16. The flag is device
// memory the caller zeroes once per request and reads once at its end (the device-sampling path's NaN check).
int je_cuda_nonfinite(const void* x, int dtype, int64_t n, unsigned long long* flag, void* stream) {
  if (!x || !flag || n < 1 || (dtype != 0 && dtype != 1)) return -1;
  cudaStream_t s = (cudaStream_t)stream;
  if (dtype == 0)
    nonfinite_kernel<uint32_t, 0x7f800000u, 0x007fffffu><<<finite_blocks(n), kFiniteThreads, 0, s>>>(
        (const uint32_t*)x, (uint64_t)n, flag);
  else
    nonfinite_kernel<uint16_t, (uint16_t)0x7c00u, (uint16_t)0x03ffu><<<finite_blocks(n), kFiniteThreads, 0, s>>>(
        (const uint16_t*)x, (uint64_t)n, flag);
  return (int)cudaGetLastError();
}

// p[0..n) += delta (advance a step counter or a position inside a captured graph)
int je_cuda_add_i64(int64_t* p, int n, int64_t delta, void* stream) {
  if (!p || n < 1) return -1;
  add_i64_kernel<<<(n + 255) / 256, 256, 0, (cudaStream_t)stream>>>(p, n, delta);
  return (int)cudaGetLastError();
}

// dst[0..n) = *src + offset (e.g. the lm's position_ids from the device position)
int je_cuda_broadcast_i64(int64_t* dst, int n, const int64_t* src, int64_t offset, void* stream) {
  if (!dst || !src || n < 1) return -1;
  broadcast_i64_kernel<<<(n + 255) / 256, 256, 0, (cudaStream_t)stream>>>(dst, n, src, offset);
  return (int)cudaGetLastError();
}

}  // extern "C"
#endif  // JE_CUDA_EMULATION
