// CPU SDDMM: out[b, j] = dot(lhs[b, r, :], rhs[b, column_indices[j], :]) for j in
// row r; padding positions (>= row_offsets[m]) are 0. Kernels and a plain
// launcher; no XLA types.
#ifndef JAXSPARSE_SDDMM_SDDMM_CPU_H_
#define JAXSPARSE_SDDMM_SDDMM_CPU_H_

#include <cstdint>

#include "common/parallel_cpu.h"

namespace jaxsparse {
namespace cpu {

template <typename T>
struct SddmmArgs {
  const T* lhs = nullptr;        // [Bl, m, d]
  int64_t lhs_batch_stride = 0;  // 0 (broadcast) or m * d
  const T* rhs = nullptr;        // [Br, n, d]
  int64_t rhs_batch_stride = 0;  // 0 (broadcast) or n * d
  const int32_t* row_offsets = nullptr;     // [m + 1], validated
  const int32_t* column_indices = nullptr;  // [cap], in [0, n) below row_offsets[m]
  const int32_t* row_indices = nullptr;     // [m], a permutation, longest row first
  T* out = nullptr;                         // [batch, cap]
  int64_t batch = 0;
  int64_t m = 0;
  int64_t d = 0;
  int64_t cap = 0;
};

// T is float, double, Half or BFloat16. Returns 0. The topology must have been
// validated by the caller.
template <typename T>
int SddmmCpu(const SddmmArgs<T>& args, const TaskRunner* runner);

// The tokens-major form: out[b, j] = sum_i lhs[b, i, r] * rhs[b, i, column_indices[j]]
// for j in row r, i < n (the SDDMM of lhs^T and rhs^T, the weight gradient of a
// sparse linear layer from its activations).
template <typename T>
struct SddmmTnArgs {
  const T* lhs = nullptr;        // [Bl, n, m]
  int64_t lhs_batch_stride = 0;  // 0 (broadcast) or n * m
  const T* rhs = nullptr;        // [Br, n, k]
  int64_t rhs_batch_stride = 0;  // 0 (broadcast) or n * k
  const int32_t* row_offsets = nullptr;     // [m + 1], validated
  const int32_t* column_indices = nullptr;  // [cap], in [0, k) below row_offsets[m]
  const int32_t* row_indices = nullptr;     // [m], a permutation, longest row first
  T* out = nullptr;                         // [batch, cap]
  int64_t batch = 0;
  int64_t m = 0;
  int64_t k = 0;
  int64_t n = 0;  // tokens: the contracted dim
  int64_t cap = 0;
};

// Tiles of tokens are transposed in cache (half types converted to float there
// once) and run through the SDDMM kernels with d = the tile, their sums added in
// tile order (float for half types, rounded once). Returns 0, or 1 when its scratch
// buffer could not be allocated.
template <typename T>
int SddmmTnCpu(const SddmmTnArgs<T>& args, const TaskRunner* runner);

}  // namespace cpu
}  // namespace jaxsparse

#endif  // JAXSPARSE_SDDMM_SDDMM_CPU_H_
