// The threads of one libjanus_edge_cpu call (issue 26). A worker spins for at most SPIN_US after its part of a call,
// then sleeps on a condition variable: between two GEMM calls of a decode step ONNX Runtime runs the layer's other
// kernels on the same cores, and a worker still spinning there takes one of them (with libgomp's default spin the
// split graph's ORT kernels ran 2-3x slower in a prefill: docs/cpu-kernels.md). One call at a time; parts are static.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <pthread.h>
#include <thread>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define JE_PAUSE() _mm_pause()
#else
#define JE_PAUSE() std::this_thread::yield()
#endif

namespace je {

class Pool {
  public:
    static constexpr int SPIN_US = 20;

    // The process's pool, never destroyed (its threads sleep until the process ends). A child made by fork() has
    // none of the parent's threads: it gets a fresh pool (the parent's object is left untouched, leaked).
    static Pool& get() {
        static std::once_flag once;
        std::call_once(once, [] { pthread_atfork(nullptr, nullptr, [] { current() = nullptr; }); });
        Pool*& p = current();
        if (p == nullptr) p = new Pool;
        return *p;
    }

    // part(i) for i in [0, n); the calling thread runs part 0 and returns when all parts are done.
    void run(int n, const std::function<void(int)>& part) {
        if (n <= 1) {
            part(0);
            return;
        }
        std::lock_guard<std::mutex> call(call_mu_);
        grow(n - 1);
        {
            std::lock_guard<std::mutex> lk(mu_);
            part_ = &part;
            n_ = n;
            left_.store(n - 1, std::memory_order_relaxed);
            gen_.fetch_add(1, std::memory_order_release);
        }
        cv_.notify_all();
        part(0);
        while (left_.load(std::memory_order_acquire) != 0) JE_PAUSE();
    }

    int workers() const { return (int)threads_.size(); }

  private:
    static Pool*& current() {
        static Pool* p = nullptr;
        return p;
    }

    void grow(int workers) {  // before the call's generation is published: a new worker must not skip it
        const uint64_t now = gen_.load(std::memory_order_acquire);
        while ((int)threads_.size() < workers) {
            const int id = (int)threads_.size() + 1;
            threads_.emplace_back([this, id, now] { loop(id, now); });
        }
    }

    void loop(int id, uint64_t seen) {
        for (;;) {
            const auto t0 = std::chrono::steady_clock::now();
            for (int k = 1; gen_.load(std::memory_order_acquire) == seen; ++k) {
                JE_PAUSE();
                if (k % 64 == 0 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(SPIN_US)) {
                    std::unique_lock<std::mutex> lk(mu_);
                    cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
                    break;
                }
            }
            const std::function<void(int)>* part;
            int n;
            {  // one snapshot: run() writes all three under mu_
                std::lock_guard<std::mutex> lk(mu_);
                seen = gen_.load(std::memory_order_acquire);
                part = part_;
                n = n_;
            }
            if (id < n) {
                (*part)(id);
                left_.fetch_sub(1, std::memory_order_release);
            }
        }
    }

    std::vector<std::thread> threads_;
    std::mutex mu_, call_mu_;
    std::condition_variable cv_;
    std::atomic<uint64_t> gen_{0};
    std::atomic<int> left_{0};
    const std::function<void(int)>* part_ = nullptr;
    int n_ = 0;
};

}  // namespace je
