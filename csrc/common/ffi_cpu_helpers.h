// Helpers shared by the CPU FFI handlers: the adapter from XLA's intra-op thread
// pool to jaxsparse::cpu::TaskRunner, the batch-broadcast rule, the CSR topology
// checks (which read the index arrays, so CPU only) and the dtype dispatch macro.
// No kernels here.
#ifndef JAXSPARSE_COMMON_FFI_CPU_HELPERS_H_
#define JAXSPARSE_COMMON_FFI_CPU_HELPERS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/ffi_helpers.h"
#include "common/half_cpu.h"
#include "common/parallel_cpu.h"
#include "common/scan_cpu.h"
#include "xla/ffi/api/ffi.h"

namespace jaxsparse {

// Runs tasks on XLA's intra-op pool when the execution context has one, else on
// the process-wide pool. Lives for the duration of one handler call.
class FfiTaskRunner final : public cpu::TaskRunner {
 public:
  explicit FfiTaskRunner(ffi::ThreadPool pool) : pool_(pool) {
    const int64_t threads = pool_.num_threads();
    use_xla_ = threads > 0;
    // The calling thread works too: threads - 1 helpers keep one task per core.
    workers_ = use_xla_ ? static_cast<int>(threads - 1) : cpu::DefaultTaskRunner()->NumWorkers();
  }
  int NumWorkers() const override { return workers_; }
  void Schedule(std::function<void()> task) const override {
    if (use_xla_) {
      pool_.Schedule(std::move(task));
    } else {
      cpu::DefaultTaskRunner()->Schedule(std::move(task));
    }
  }

 private:
  mutable ffi::ThreadPool pool_;
  bool use_xla_ = false;
  int workers_ = 0;
};

// Batch rule: an operand's leading dim is 1 (broadcast, stride 0) or `batch`.
// Sets *stride to 0 or `per_batch` (elements per batch entry).
inline ffi::Error BatchStride(int64_t dim, int64_t batch, int64_t per_batch, const char* what,
                              int64_t* stride) {
  if (dim == 1) {
    *stride = 0;
  } else if (dim == batch) {
    *stride = per_batch;
  } else {
    return InvalidArgument(std::string(what) + " has leading (batch) dim " + std::to_string(dim) +
                           "; expected 1 or the result's batch " + std::to_string(batch));
  }
  return ffi::Error::Success();
}

inline ffi::Error CheckDim(int64_t got, int64_t want, const std::string& what) {
  if (got != want) {
    return InvalidArgument(what + " is " + std::to_string(got) + ", expected " +
                           std::to_string(want));
  }
  return ffi::Error::Success();
}

// row_offsets[0] == 0, non-decreasing, row_offsets[m] <= cap.
inline ffi::Error CheckRowOffsets(const int32_t* row_offsets, int64_t m, int64_t cap,
                                  const char* op) {
  if (row_offsets[0] != 0) {
    return InvalidArgument(std::string(op) + ": row_offsets[0] must be 0, got " +
                           std::to_string(row_offsets[0]));
  }
  const int64_t r = cpu::FirstDecrease(row_offsets, m);
  if (r >= 0) {
    return InvalidArgument(std::string(op) + ": row_offsets must be non-decreasing, but row_offsets[" +
                           std::to_string(r + 1) + "] = " + std::to_string(row_offsets[r + 1]) +
                           " < row_offsets[" + std::to_string(r) + "] = " +
                           std::to_string(row_offsets[r]));
  }
  if (row_offsets[m] > cap) {
    return InvalidArgument(std::string(op) + ": row_offsets[m] = " + std::to_string(row_offsets[m]) +
                           " exceeds the capacity " + std::to_string(cap) +
                           " of column_indices / values");
  }
  return ffi::Error::Success();
}

// column_indices[j] in [0, ncols) for j < nnz (entries past nnz are padding).
inline ffi::Error CheckColumnIndices(const int32_t* column_indices, int64_t nnz, int64_t ncols,
                                     const char* op, const char* ncols_name) {
  const int64_t j = cpu::FirstOutOfRange(column_indices, nnz, ncols);
  if (j >= 0) {
    return InvalidArgument(std::string(op) + ": column_indices[" + std::to_string(j) + "] = " +
                           std::to_string(column_indices[j]) + " is out of range [0, " +
                           std::to_string(ncols) + ") (" + ncols_name + ")");
  }
  return ffi::Error::Success();
}

// row_indices is a permutation of 0..m-1 (so every output row is written once).
inline ffi::Error CheckRowIndices(const int32_t* row_indices, int64_t m, const char* op) {
  std::vector<unsigned char> seen(static_cast<size_t>(m), 0);
  for (int64_t p = 0; p < m; ++p) {
    const int32_t r = row_indices[p];
    if (r < 0 || r >= m) {
      return InvalidArgument(std::string(op) + ": row_indices[" + std::to_string(p) + "] = " +
                             std::to_string(r) + " is out of range [0, " + std::to_string(m) + ")");
    }
    if (seen[r]) {
      return InvalidArgument(std::string(op) + ": row_indices is not a permutation (row " +
                             std::to_string(r) + " appears twice)");
    }
    seen[r] = 1;
  }
  return ffi::Error::Success();
}

inline ffi::Error UnsupportedDtype(ffi::DataType dtype, const char* op, const char* what) {
  return InvalidArgument(std::string(op) + ": " + what + " has unsupported dtype " +
                         DataTypeName(dtype) + " (XLA_FFI_DataType " +
                         std::to_string(static_cast<int>(dtype)) +
                         "); expected float32, float64, float16 or bfloat16");
}

inline ffi::Error CheckSameDtype(ffi::DataType got, ffi::DataType want, const char* op,
                                 const char* what) {
  if (got != want) {
    return InvalidArgument(std::string(op) + ": " + what + " has dtype " + DataTypeName(got) +
                           " but the result has dtype " + DataTypeName(want));
  }
  return ffi::Error::Success();
}

}  // namespace jaxsparse

// Runs the statements (...) with the C++ element type bound to T for the CPU dtypes; any other
// dtype returns an InvalidArgument naming it.
#define JAXSPARSE_CPU_DISPATCH(DTYPE, OP, WHAT, T, ...)                    \
  switch (DTYPE) {                                                         \
    case ::xla::ffi::DataType::F32: {                                      \
      using T = float;                                                     \
      __VA_ARGS__;                                                         \
      break;                                                               \
    }                                                                      \
    case ::xla::ffi::DataType::F64: {                                      \
      using T = double;                                                    \
      __VA_ARGS__;                                                         \
      break;                                                               \
    }                                                                      \
    case ::xla::ffi::DataType::F16: {                                      \
      using T = ::jaxsparse::cpu::Half;                                    \
      __VA_ARGS__;                                                         \
      break;                                                               \
    }                                                                      \
    case ::xla::ffi::DataType::BF16: {                                     \
      using T = ::jaxsparse::cpu::BFloat16;                                \
      __VA_ARGS__;                                                         \
      break;                                                               \
    }                                                                      \
    default:                                                               \
      return ::jaxsparse::UnsupportedDtype(DTYPE, OP, WHAT);               \
  }

#endif  // JAXSPARSE_COMMON_FFI_CPU_HELPERS_H_
