// Parallel-for over work items for the CPU kernels. No XLA types: the FFI
// handler adapts XLA's intra-op thread pool to `TaskRunner`
// (see ffi_cpu_helpers.h); `DefaultTaskRunner()` is a lazily created process-wide
// pool used when no other is available.
#ifndef JAXSPARSE_COMMON_PARALLEL_CPU_H_
#define JAXSPARSE_COMMON_PARALLEL_CPU_H_

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>

namespace jaxsparse {
namespace cpu {

// Something that runs tasks on other threads.
class TaskRunner {
 public:
  virtual ~TaskRunner() = default;
  // How many threads besides the caller may run scheduled tasks concurrently.
  virtual int NumWorkers() const = 0;
  // Runs `task` eventually, on some thread (possibly the caller, inline).
  virtual void Schedule(std::function<void()> task) const = 0;
};

// A process-wide pool with hardware_concurrency() - 1 workers, created on first use
// and never destroyed.
const TaskRunner* DefaultTaskRunner();

// Below this many FLOPs (or equivalent work) a call runs on the caller alone.
constexpr double kMinParallelWork = 65536.0;

// Calls fn(begin, end) on disjoint ranges covering [0, num_items), in increasing
// chunks claimed from an atomic counter by the caller and up to NumWorkers() helper
// tasks. Returns when every chunk has completed. `work` is the estimated cost of the
// whole call (FLOPs); small calls and runner == nullptr run serially. fn must not throw.
// `min_work` replaces kMinParallelWork for callers that measured their own cutoff.
void ParallelFor(const TaskRunner* runner, int64_t num_items, double work,
                 const std::function<void(int64_t, int64_t)>& fn,
                 double min_work = kMinParallelWork);

// A 64-byte aligned scratch buffer, grown on demand and kept until destroyed: held
// `static thread_local` by a kernel, steady-state calls neither allocate nor
// page-fault. Reserve returns null when the allocation fails.
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { std::free(data_); }
  void* Reserve(size_t bytes) {
    if (bytes_ < bytes) {
      std::free(data_);
      const size_t rounded = (bytes + 63) / 64 * 64;
      data_ = std::aligned_alloc(64, rounded);
      bytes_ = data_ != nullptr ? rounded : 0;
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace cpu
}  // namespace jaxsparse

#endif  // JAXSPARSE_COMMON_PARALLEL_CPU_H_
