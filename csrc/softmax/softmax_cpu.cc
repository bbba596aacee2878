// CPU sparse softmax and softmax gradient: one row at a time (max-subtracted,
// accumulated in float32 for the 16-bit types, a vectorized exp), rows claimed in
// chunks by the threads. Compiled for AVX-512, AVX2+FMA and the baseline, chosen
// at run time.
#include "softmax/softmax_cpu.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/half_cpu.h"
#include "common/parallel_cpu.h"
#include "common/simd_cpu.h"

namespace jaxsparse {
namespace cpu {

#define JAXSPARSE_KERNEL_FILE "softmax/softmax_cpu_kernel.inc"
#include "common/per_isa_cpu.inc"
#undef JAXSPARSE_KERNEL_FILE

namespace {

// Rough cost of one entry (an exp and a few flops), for the serial cutoff.
constexpr double kWorkPerEntry = 20.0;

template <typename T>
void ZeroPadding(T* out, int64_t batch, int64_t cap, int64_t nnz) {
  for (int64_t bb = 0; bb < batch; ++bb) {
    for (int64_t j = nnz; j < cap; ++j) out[bb * cap + j] = FromAccum<T>(Accum<T>(0));
  }
}

// double goes through GenericOps<double>, whose exp is std::exp, as the float64
// reference's.
template <typename T>
void RunItems(Isa isa, const SoftmaxArgs<T>& a, int64_t begin, int64_t end) {
  JAXSPARSE_ISA_CALL(isa, T, SoftmaxItems, a, begin, end);
}

template <typename T>
void RunGradItems(Isa isa, const SoftmaxGradArgs<T>& a, int64_t begin, int64_t end) {
  JAXSPARSE_ISA_CALL(isa, T, SoftmaxGradItems, a, begin, end);
}

}  // namespace

template <typename T>
int SoftmaxCpu(const SoftmaxArgs<T>& a, const TaskRunner* runner) {
  if (a.batch <= 0) return 0;
  const int64_t nnz = a.m > 0 ? a.row_offsets[a.m] : 0;
  ZeroPadding(a.out, a.batch, a.cap, nnz);
  if (a.m <= 0 || nnz == 0) return 0;
  const Isa isa = SelectedIsa();
  ParallelFor(runner, a.batch * a.m, kWorkPerEntry * static_cast<double>(nnz) * a.batch,
              [&](int64_t begin, int64_t end) { RunItems<T>(isa, a, begin, end); });
  return 0;
}

template <typename T>
int SoftmaxGradCpu(const SoftmaxGradArgs<T>& a, const TaskRunner* runner) {
  if (a.batch <= 0) return 0;
  const int64_t nnz = a.m > 0 ? a.row_offsets[a.m] : 0;
  ZeroPadding(a.out, a.batch, a.cap, nnz);
  if (a.m <= 0 || nnz == 0) return 0;
  const Isa isa = SelectedIsa();
  ParallelFor(runner, a.batch * a.m, 4.0 * static_cast<double>(nnz) * a.batch,
              [&](int64_t begin, int64_t end) { RunGradItems<T>(isa, a, begin, end); });
  return 0;
}

template int SoftmaxCpu<float>(const SoftmaxArgs<float>&, const TaskRunner*);
template int SoftmaxCpu<double>(const SoftmaxArgs<double>&, const TaskRunner*);
template int SoftmaxCpu<Half>(const SoftmaxArgs<Half>&, const TaskRunner*);
template int SoftmaxCpu<BFloat16>(const SoftmaxArgs<BFloat16>&, const TaskRunner*);
template int SoftmaxGradCpu<float>(const SoftmaxGradArgs<float>&, const TaskRunner*);
template int SoftmaxGradCpu<double>(const SoftmaxGradArgs<double>&, const TaskRunner*);
template int SoftmaxGradCpu<Half>(const SoftmaxGradArgs<Half>&, const TaskRunner*);
template int SoftmaxGradCpu<BFloat16>(const SoftmaxGradArgs<BFloat16>&, const TaskRunner*);

}  // namespace cpu
}  // namespace jaxsparse
