// CPU SpMM: out[b, r, :] = sum_{j in row r} values[b, j] * dense[b, column_indices[j], :]
// (CSR times row-major dense). Kernels and a plain launcher; no XLA types.
#ifndef JAXSPARSE_SPMM_SPMM_CPU_H_
#define JAXSPARSE_SPMM_SPMM_CPU_H_

#include <cstdint>

#include "common/parallel_cpu.h"

namespace jaxsparse {
namespace cpu {

template <typename T>
struct SpmmArgs {
  const T* values = nullptr;        // [Bv, cap]
  int64_t values_batch_stride = 0;  // 0 (broadcast) or cap
  const int32_t* row_offsets = nullptr;     // [m + 1], validated
  const int32_t* column_indices = nullptr;  // [cap], in [0, k) below row_offsets[m]
  const int32_t* row_indices = nullptr;     // [m], a permutation, longest row first
  const T* dense = nullptr;        // [Bb, k, n]
  int64_t dense_batch_stride = 0;  // 0 (broadcast) or k * n
  T* out = nullptr;                // [batch, m, n]
  int64_t batch = 0;
  int64_t m = 0;
  int64_t k = 0;
  int64_t n = 0;
};

// T is float, double, Half or BFloat16. Returns 0, or 1 when a scratch buffer
// could not be allocated. The topology must have been validated by the caller.
template <typename T>
int SpmmCpu(const SpmmArgs<T>& args, const TaskRunner* runner);

// The tokens-major form, x @ A^T: out[b, i, r] = sum_{j in row r} values[b, j] *
// dense[b, i, column_indices[j]], with `dense` read as [Bb, n, k] (dense_batch_stride
// 0 or n * k) and `out` written as [batch, n, m]. Same returns as SpmmCpu.
template <typename T>
int SpmmNtCpu(const SpmmArgs<T>& args, const TaskRunner* runner);

}  // namespace cpu
}  // namespace jaxsparse

#endif  // JAXSPARSE_SPMM_SPMM_CPU_H_
