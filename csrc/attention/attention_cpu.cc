// CPU fused sparse attention launchers: rows (and, for the backward's second pass,
// key columns) in longest-first order, claimed in chunks by the threads. Compiled
// for AVX-512, AVX2+FMA and the baseline, chosen at run time.
#include "attention/attention_cpu.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/half_cpu.h"
#include "common/parallel_cpu.h"
#include "common/simd_cpu.h"

namespace jaxsparse {
namespace cpu {

#define JAXSPARSE_KERNEL_FILE "attention/attention_cpu_kernel.inc"
#include "common/per_isa_cpu.inc"
#undef JAXSPARSE_KERNEL_FILE

namespace {

template <typename T>
void FwdItems(const AttnFwdArgs<T>& a, int64_t max_row, int64_t begin, int64_t end) {
  JAXSPARSE_ISA_CALL(SelectedIsa(), T, AttnFwd, a, max_row, begin, end);
}
template <typename T>
void BwdRowItems(const AttnBwdArgs<T>& a, int64_t begin, int64_t end) {
  JAXSPARSE_ISA_CALL(SelectedIsa(), T, AttnBwdRows, a, begin, end);
}
template <typename T>
void BwdColItems(const AttnBwdArgs<T>& a, int64_t begin, int64_t end) {
  JAXSPARSE_ISA_CALL(SelectedIsa(), T, AttnBwdCols, a, begin, end);
}

int64_t MaxRowLength(const AttnTopology& t) {
  int64_t longest = 0;
  for (int64_t r = 0; r < t.m; ++r) {
    const int64_t len = t.row_offsets[r + 1] - t.row_offsets[r];
    longest = len > longest ? len : longest;
  }
  return longest;
}

}  // namespace

template <typename T>
int AttentionFwdCpu(const AttnFwdArgs<T>& a, const TaskRunner* runner) {
  if (a.batch <= 0 || a.topo.m <= 0) return 0;
  const int64_t max_row = MaxRowLength(a.topo);
  const double nnz = static_cast<double>(a.topo.row_offsets[a.topo.m]);
  const double work = 2.0 * nnz * static_cast<double>(a.d + a.dv + 8) * a.batch;
  ParallelFor(runner, a.batch * a.topo.m, work,
              [&](int64_t begin, int64_t end) { FwdItems<T>(a, max_row, begin, end); });
  return 0;
}

template <typename T>
int AttentionBwdCpu(const AttnBwdArgs<T>& a, const TaskRunner* runner) {
  if (a.batch <= 0) return 0;
  const double nnz = a.topo.m > 0 ? static_cast<double>(a.topo.row_offsets[a.topo.m]) : 0.0;
  const double row_work = 2.0 * nnz * static_cast<double>(2 * a.d + a.dv + 4) * a.batch;
  const double col_work = 2.0 * nnz * static_cast<double>(2 * a.d + 2 * a.dv + 4) * a.batch;
  if (a.topo.m > 0) {
    ParallelFor(runner, a.batch * a.topo.m, row_work,
                [&](int64_t begin, int64_t end) { BwdRowItems<T>(a, begin, end); });
  }
  if (a.t_topo.m > 0) {
    ParallelFor(runner, a.batch * a.t_topo.m, col_work,
                [&](int64_t begin, int64_t end) { BwdColItems<T>(a, begin, end); });
  }
  return 0;
}

template int AttentionFwdCpu<float>(const AttnFwdArgs<float>&, const TaskRunner*);
template int AttentionFwdCpu<double>(const AttnFwdArgs<double>&, const TaskRunner*);
template int AttentionFwdCpu<Half>(const AttnFwdArgs<Half>&, const TaskRunner*);
template int AttentionFwdCpu<BFloat16>(const AttnFwdArgs<BFloat16>&, const TaskRunner*);
template int AttentionBwdCpu<float>(const AttnBwdArgs<float>&, const TaskRunner*);
template int AttentionBwdCpu<double>(const AttnBwdArgs<double>&, const TaskRunner*);
template int AttentionBwdCpu<Half>(const AttnBwdArgs<Half>&, const TaskRunner*);
template int AttentionBwdCpu<BFloat16>(const AttnBwdArgs<BFloat16>&, const TaskRunner*);

}  // namespace cpu
}  // namespace jaxsparse
