#include "common/parallel_cpu.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace jaxsparse {
namespace cpu {
namespace {

class StaticPool final : public TaskRunner {
 public:
  explicit StaticPool(int num_workers) : num_workers_(num_workers) {
    for (int i = 0; i < num_workers; ++i) {
      std::thread([this] { Loop(); }).detach();
    }
  }
  int NumWorkers() const override { return num_workers_; }
  void Schedule(std::function<void()> task) const override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  const int num_workers_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  mutable std::deque<std::function<void()>> queue_;
};

// State shared by the caller and the helper tasks. Heap-allocated and owned by
// shared_ptr: a task that starts after the caller returned finds no chunk left and
// touches only this object.
struct ForState {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> completed{0};
  int64_t num_chunks = 0;
  int64_t chunk = 0;
  int64_t num_items = 0;
  // Valid while completed < num_chunks; dereferenced only after claiming a chunk.
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  std::mutex mu;
  std::condition_variable cv;
};

void RunChunks(ForState& s) {
  for (;;) {
    const int64_t c = s.next.fetch_add(1, std::memory_order_relaxed);
    if (c >= s.num_chunks) return;
    const int64_t begin = c * s.chunk;
    const int64_t end = std::min(s.num_items, begin + s.chunk);
    (*s.fn)(begin, end);
    if (s.completed.fetch_add(1, std::memory_order_acq_rel) + 1 == s.num_chunks) {
      std::lock_guard<std::mutex> lock(s.mu);
      s.cv.notify_all();
    }
  }
}

}  // namespace

const TaskRunner* DefaultTaskRunner() {
  static const TaskRunner* pool = [] {
    const unsigned hw = std::thread::hardware_concurrency();
    return new StaticPool(hw > 1 ? static_cast<int>(hw) - 1 : 0);  // never destroyed
  }();
  return pool;
}

void ParallelFor(const TaskRunner* runner, int64_t num_items, double work,
                 const std::function<void(int64_t, int64_t)>& fn, double min_work) {
  if (num_items <= 0) return;
  const int workers = runner == nullptr ? 0 : runner->NumWorkers();
  if (workers <= 0 || num_items == 1 || work < min_work) {
    fn(0, num_items);
    return;
  }
  const int64_t threads = workers + 1;
  // Many small chunks: the items are ordered longest first, so the dynamic
  // claiming balances the tail.
  const int64_t target_chunks = std::min<int64_t>(num_items, threads * 16);
  auto state = std::make_shared<ForState>();
  state->chunk = (num_items + target_chunks - 1) / target_chunks;
  state->num_chunks = (num_items + state->chunk - 1) / state->chunk;
  state->num_items = num_items;
  state->fn = &fn;
  const int64_t helpers = std::min<int64_t>(workers, state->num_chunks - 1);
  for (int64_t i = 0; i < helpers; ++i) {
    runner->Schedule([state] { RunChunks(*state); });
  }
  RunChunks(*state);
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] {
    return state->completed.load(std::memory_order_acquire) == state->num_chunks;
  });
}

}  // namespace cpu
}  // namespace jaxsparse
