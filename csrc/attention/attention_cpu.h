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

// One dense operand of the attention: per batch entry b a matrix whose row i starts
// at data + offsets[b] + i * ld (elements; the row's entries are contiguous). A
// contiguous [B, rows, cols] array has offsets b * rows * cols (0 for every b when
// broadcast) and ld = cols; an array laid out [rows, heads, cols] per batch entry
// (the [batch, seq, heads, head_dim] of the attention API) has ld = heads * cols.
template <typename T>
struct AttnRows {
  T* data = nullptr;
  const int64_t* offsets = nullptr;  // [batch]
  int64_t ld = 0;
  T* Batch(int64_t b) const { return data + offsets[b]; }
  T* Row(int64_t b, int64_t i) const { return data + offsets[b] + i * ld; }
};

template <typename T>
struct AttnFwdArgs {
  AttnTopology topo;
  // Dense operands in rows (AttnRows): q [m, d], k [n, d], v [n, dv] and out
  // [m, dv] of each batch entry.
  AttnRows<const T> q, k, v;
  const uint8_t* keep = nullptr;  // [Bk, cap] (0: entry masked out) or null: all kept
  int64_t keep_stride = 0;
  const uint8_t* drop = nullptr;  // [Bd, cap] dropout (0: dropped) or null: no dropout
  int64_t drop_stride = 0;
  double drop_scale = 1.0;        // the kept entries' multiplier, 1 / keep probability
  AttnRows<T> out;
  Accum<T>* lse = nullptr;     // [batch, m]
  int64_t batch = 0;
  int64_t batch_inner = 1;     // the row kernels' item order (AttnItemAt)
  int64_t d = 0;
  int64_t dv = 0;
};

template <typename T>
struct AttnBwdArgs {
  AttnTopology topo;     // rows: queries
  AttnTopology t_topo;   // its transpose: rows are keys, column_indices are query rows
  AttnRows<const T> q, k, v;       // [m, d], [n, d], [n, dv] per batch entry
  const Accum<T>* lse = nullptr;    // [Bl, m]
  const Accum<T>* delta = nullptr;  // [Bd, m]
  AttnRows<const T> dout;           // [m, dv]
  const uint8_t* keep = nullptr;    // [Bk, cap] or null, in the stored (row-major) order
  int64_t keep_stride = 0;
  const uint8_t* drop = nullptr;    // [Bd, cap] or null, stored order
  int64_t drop_stride = 0;
  double drop_scale = 1.0;
  const int32_t* t_perm = nullptr;  // [cap]: transposed position -> stored position
  int64_t lse_stride = 0, delta_stride = 0;  // batch strides: 0 or one entry
  AttnRows<T> dq, dk, dv_out;  // [m, d], [n, d], [n, dv] per batch entry
  int64_t batch = 0;
  int64_t batch_inner = 1;     // the row kernels' item order (AttnItemAt)
  int64_t d = 0;
  int64_t dv = 0;
  // [batch, nnz, 2] or null: the register-blocked row kernels' pass 1 stores each
  // entry's two weights (p times the dropout multiplier, and ds) at
  // [bb][stored position], and their pass 2 reads them instead of recomputing the
  // logits (set by the launcher only where it fits in cache: AttnBwdWeightsBytes).
  Accum<T>* weights = nullptr;
};

// The gather kernels' plan for a topology (the band kernels with each block's columns
// gathered): per block of L rows the sorted union of its rows' columns, in which each
// row's columns are a contiguous run. Built per call by the launcher (attention_cpu.cc).
struct AttnGatherPlan {
  const int32_t* block_start = nullptr;    // [blocks]: block b's union starts at
  const int32_t* cols = nullptr;           //   cols + block_start[b] (a block whose union
                                           //   equals the previous one's shares it)
  const int32_t* row_first = nullptr;      // [m]: the index in its block's union of the
                                           //   row's first column (0 for an empty row)
  int64_t max_cols = 0;                    // the longest union
};

// Item `item` of the row kernels' (batch entry, row position) space over m row
// positions. The flat batch entries are [outer, inner] with `inner` of them
// interleaving their rows (the heads of the API's [batch, seq, heads, d]): items run
// over outer entries, then row positions, then inner entries, so that consecutive
// items read neighbouring rows (NOTES change 45). inner = 1: batch entry, then row.
inline void AttnItemAt(int64_t item, int64_t m, int64_t inner, int64_t* bb, int64_t* pos) {
  const int64_t per = m * inner;
  const int64_t outer = item / per;
  const int64_t rest = item - outer * per;
  *pos = rest / inner;
  *bb = outer * inner + (rest - *pos * inner);
}

// T is float, double, Half or BFloat16. Return 0.
template <typename T>
int AttentionFwdCpu(const AttnFwdArgs<T>& args, const TaskRunner* runner);
template <typename T>
int AttentionBwdCpu(const AttnBwdArgs<T>& args, const TaskRunner* runner);

}  // namespace cpu
}  // namespace jaxsparse

#endif  // JAXSPARSE_ATTENTION_ATTENTION_CPU_H_
