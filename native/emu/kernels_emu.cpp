// janus-edge: native/src/kernels.cu compiled for the CPU under the small emulator in cuda_emu.h, with launchers that
// mirror the real ones (same grid, block and kernel arguments). tests/test_native_host.py runs the kernels' own code
// here against the host library, so block reductions, scans, radix passes and the draw walk run somewhere without a
// GPU. Test-only: the runtime never loads this library.
#define JE_CUDA_EMULATION 1
#include "cuda_emu.h"
#include "../src/kernels.cu"

inline float __half2float(__half h) { return je::half_bits_to_float(h.bits); }

namespace {
template <typename V>
void emu_kv(const KvPtrs& p, int n, uint64_t units, int kvh, int seq, int max_len, int row_units, const int64_t* pos,
            int per_row) {
  const int threads = 256;
  uint64_t blocks = (units + threads - 1) / threads;
  dim3 grid{(unsigned)(blocks < 4096 ? blocks : 4096), (unsigned)n, 1};
  emu::launch(grid, dim3{threads, 1, 1}, [&] {
    kv_append_kernel<V>(p, units, kvh, seq, max_len, row_units, pos, per_row);
  });
}
}  // namespace

extern "C" {

int je_emu_abi_version(void) { return 1; }

int je_emu_kv_append(void* const* cache, const void* const* src, int ntensors, int rows, int kvh, int max_len,
                     int seq, int head_dim, int elem_bytes, const int64_t* pos, int per_row) {
  if (ntensors < 1 || ntensors > kMaxKv || rows < 1 || kvh < 1 || max_len < 1 || seq < 1 || head_dim < 1 ||
      elem_bytes < 1 || !pos)
    return -1;
  const int row_bytes = head_dim * elem_bytes;
  const int vec = pick_vec(cache, src, ntensors, row_bytes);
  const int row_units = row_bytes / vec;
  const uint64_t units = (uint64_t)rows * kvh * seq * row_units;
  KvPtrs p;
  for (int t = 0; t < ntensors; ++t) { p.dst[t] = (char*)cache[t]; p.src[t] = (const char*)src[t]; }
  switch (vec) {
    case 16: emu_kv<uint4>(p, ntensors, units, kvh, seq, max_len, row_units, pos, per_row); break;
    case 8: emu_kv<uint2>(p, ntensors, units, kvh, seq, max_len, row_units, pos, per_row); break;
    case 4: emu_kv<uint32_t>(p, ntensors, units, kvh, seq, max_len, row_units, pos, per_row); break;
    case 2: emu_kv<uint16_t>(p, ntensors, units, kvh, seq, max_len, row_units, pos, per_row); break;
    default: emu_kv<uint8_t>(p, ntensors, units, kvh, seq, max_len, row_units, pos, per_row); break;
  }
  return vec;  // > 0: the copy unit used (the tests check that every width runs)
}

int je_emu_cfg_sample(const void* logits, int dtype, int n_images, int vocab, int has_uncond, float cfg_weight,
                      float temperature, int top_k, double top_p, uint64_t seed, const int64_t* step, int64_t* out,
                      int rows_per_image) {
  if (n_images < 1 || vocab < 1 || (dtype != 0 && dtype != 1) || !(temperature >= 0.0f) || top_k < 0 ||
      !(top_p > 0.0) || rows_per_image < 1 || !logits || !step || !out)
    return -1;
  const int hu = has_uncond ? 1 : 0;
  emu::launch(dim3{(unsigned)n_images, 1, 1}, dim3{kThreads, 1, 1}, [&] {
    if (dtype == 0)
      cfg_sample_kernel<float>((const float*)logits, n_images, vocab, hu, cfg_weight, temperature, top_k, top_p,
                               seed, step, out, rows_per_image);
    else
      cfg_sample_kernel<__half>((const __half*)logits, n_images, vocab, hu, cfg_weight, temperature, top_k, top_p,
                                seed, step, out, rows_per_image);
  });
  return 0;
}

int je_emu_nonfinite(const void* x, int dtype, int64_t n, unsigned long long* flag) {
  if (!x || !flag || n < 1 || (dtype != 0 && dtype != 1)) return -1;
  emu::launch(dim3{finite_blocks((uint64_t)n), 1, 1}, dim3{kFiniteThreads, 1, 1}, [&] {
    if (dtype == 0)
      nonfinite_kernel<uint32_t, 0x7f800000u, 0x007fffffu>((const uint32_t*)x, (uint64_t)n, flag);
    else
      nonfinite_kernel<uint16_t, (uint16_t)0x7c00u, (uint16_t)0x03ffu>((const uint16_t*)x, (uint64_t)n, flag);
  });
  return 0;
}

}  // extern "C"
