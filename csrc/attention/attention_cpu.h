// CPU fused sparse attention (flash-style: the probabilities are never stored).
//
// Forward, per batch entry b and query row r with stored keys J(r) (minus the
// keys c > r when causal):
//   s_c = q[r] . k[c],  lse[r] = log sum_c exp(s_c),
//   out[r] = sum_c exp(s_c - lse[r]) v[c]
// (an empty row gives out = 0 and lse = -inf). An optional `keep` mask over the
// stored entries drops those where it is 0, as causal drops c > r. An optional
// dropout mask multiplies the probabilities after the softmax by drop_scale where
// it is nonzero and by 0 where it is 0 (the backward uses the same mask).
// Backward, given lse, dout and delta[r] = dout[r] . out[r] - dlse[r]:
//   p_rc = exp(q[r] . k[c] - lse[r]),  ds_rc = p_rc (dout[r] . v[c] - delta[r]),
//   dq[r] = sum_c ds_rc k[c]          (pass 1, over rows)
//   dk[c] = sum_r ds_rc q[r],  dv[c] = sum_r p_rc dout[r]
//                                     (pass 2, over columns of the transposed
//                                      topology: no atomics, no scatter)
// The logits are recomputed in each pass; memory is O(rows x head dim).
// Kernels and plain launchers; no XLA types.
#ifndef JAXSPARSE_ATTENTION_ATTENTION_CPU_H_
#define JAXSPARSE_ATTENTION_ATTENTION_CPU_H_

#include <cstdint>

#include "common/half_cpu.h"
#include "common/parallel_cpu.h"

namespace jaxsparse {
namespace cpu {

// The topology of a [m, n] pattern (validated by the caller).
struct AttnTopology {
  const int32_t* row_offsets = nullptr;     // [m + 1]
  const int32_t* column_indices = nullptr;  // [cap], in [0, n) below row_offsets[m]
  const int32_t* row_indices = nullptr;     // [m], a permutation, longest row first
  int64_t m = 0;
  int64_t n = 0;
  bool causal = false;  // also drop the stored entries with column > row
};

template <typename T>
struct AttnFwdArgs {
  AttnTopology topo;
  const T* q = nullptr;  // [Bq, m, d]
  const T* k = nullptr;  // [Bk, n, d]
  const T* v = nullptr;  // [Bv, n, dv]
  int64_t q_stride = 0, k_stride = 0, v_stride = 0;  // batch strides: 0 or one entry
  const uint8_t* keep = nullptr;  // [Bk, cap] (0: entry masked out) or null: all kept
  int64_t keep_stride = 0;
  const uint8_t* drop = nullptr;  // [Bd, cap] dropout (0: dropped) or null: no dropout
  int64_t drop_stride = 0;
  double drop_scale = 1.0;        // the kept entries' multiplier, 1 / keep probability
  T* out = nullptr;            // [batch, m, dv]
  Accum<T>* lse = nullptr;     // [batch, m]
  int64_t batch = 0;
  int64_t d = 0;
  int64_t dv = 0;
};

template <typename T>
struct AttnBwdArgs {
  AttnTopology topo;     // rows: queries
  AttnTopology t_topo;   // its transpose: rows are keys, column_indices are query rows
  const T* q = nullptr;  // [Bq, m, d]
  const T* k = nullptr;  // [Bk, n, d]
  const T* v = nullptr;  // [Bv, n, dv]
  const Accum<T>* lse = nullptr;    // [Bl, m]
  const Accum<T>* delta = nullptr;  // [Bd, m]
  const T* dout = nullptr;          // [Bg, m, dv]
  const uint8_t* keep = nullptr;    // [Bk, cap] or null, in the stored (row-major) order
  int64_t keep_stride = 0;
  const uint8_t* drop = nullptr;    // [Bd, cap] or null, stored order
  int64_t drop_stride = 0;
  double drop_scale = 1.0;
  const int32_t* t_perm = nullptr;  // [cap]: transposed position -> stored position
  int64_t q_stride = 0, k_stride = 0, v_stride = 0, lse_stride = 0, delta_stride = 0,
          dout_stride = 0;
  T* dq = nullptr;  // [batch, m, d]
  T* dk = nullptr;  // [batch, n, d]
  T* dv_out = nullptr;  // [batch, n, dv]
  int64_t batch = 0;
  int64_t d = 0;
  int64_t dv = 0;
};

// T is float, double, Half or BFloat16. Return 0.
template <typename T>
int AttentionFwdCpu(const AttnFwdArgs<T>& args, const TaskRunner* runner);
template <typename T>
int AttentionBwdCpu(const AttnBwdArgs<T>& args, const TaskRunner* runner);

}  // namespace cpu
}  // namespace jaxsparse

#endif  // JAXSPARSE_ATTENTION_ATTENTION_CPU_H_
