// janus-edge: a small CUDA emulator, so that native/src/kernels.cu itself (not a rewrite) runs on a CPU in the tests.
// Each block runs as blockDim real threads (std::thread) with a real barrier for __syncthreads and per-warp
// barriers for the shuffles; __shared__ variables are function statics (one block runs at a time). It emulates what
// kernels.cu uses and no more; it says nothing about speed, and races are not detected (compute-sanitizer on a GPU
// does that: tests/test_native_gpu.py).
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

namespace emu {
inline thread_local dim3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline unsigned long long warp_buf[1024 / 32][32];

// run kernel() for every thread of every block: blocks one after another, the threads of a block concurrently
template <class F>
void launch(dim3 grid, dim3 block, F kernel) {
  grid_dim = grid;
  block_dim = block;
  const unsigned n = block.x * block.y * block.z;
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> bar((std::ptrdiff_t)n);
      block_barrier = &bar;
      warp_barriers.clear();
      for (unsigned w = 0; w < (n + 31) / 32; ++w)
        warp_barriers.push_back(std::make_unique<std::barrier<>>((std::ptrdiff_t)std::min(32u, n - 32 * w)));
      std::vector<std::thread> ts;
      for (unsigned t = 0; t < n; ++t)
        ts.emplace_back([=] {
          thread_idx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
          block_idx = dim3{bx, by, 0};
          kernel();
        });
      for (auto& t : ts) t.join();
    }
}

template <class T>
T shfl(T v, int src_lane) {
  const unsigned lane = thread_idx.x & 31, warp = thread_idx.x >> 5;
  warp_buf[warp][lane] = (unsigned long long)v;
  warp_barriers[warp]->arrive_and_wait();
  T r = (src_lane >= 0 && src_lane < 32) ? (T)warp_buf[warp][src_lane] : v;
  warp_barriers[warp]->arrive_and_wait();
  return r;
}
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

template <class T>
T __shfl_down_sync(unsigned, T v, int o) { return emu::shfl(v, (int)(threadIdx.x & 31) + o); }
template <class T>
T __shfl_up_sync(unsigned, T v, int o) { return emu::shfl(v, (int)(threadIdx.x & 31) - o); }

inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}

inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  std::atomic_ref<unsigned long long> a(*p);
  unsigned long long old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}

using std::min;

struct __half {
  uint16_t bits;
};
inline float __half2float(__half h);  // defined after sampling_math.h (needs je::half_bits_to_float)
struct uint2 { uint32_t x, y; };
struct uint4 { uint32_t x, y, z, w; };
