// CPU SDDMM kernels and launcher: per nonzero a dot product of length d, G
// nonzeros of a row at a time so each lhs vector is loaded once per group; rows
// in row_indices order (longest first) claimed in chunks by the threads. Compiled
// for AVX-512, AVX2+FMA and the baseline, chosen at run time.
#include "sddmm/sddmm_cpu.h"

#include <cstdint>
#include <type_traits>

#include "common/half_cpu.h"
#include "common/parallel_cpu.h"
#include "common/simd_cpu.h"

namespace jaxsparse {
namespace cpu {

#define JAXSPARSE_KERNEL_FILE "sddmm/sddmm_cpu_kernel.inc"
#include "common/per_isa_cpu.inc"
#undef JAXSPARSE_KERNEL_FILE

namespace {

// Below this many FLOPs an SDDMM runs on the caller alone. Called one at a time on a
// Zen 5 (benchmarks/NOTES.md, change 8) a helper thread paid from ~5k nonzeros at
// d = 64 (0.68 MFLOP: 20 us serial, 15.5 us parallel); inside a jitted loop on the
// Intel machine of change 35 it cost up to 2x below ~15k nonzeros (5,242 nonzeros:
// 47 us serial, 93 us parallel) and paid from ~30k (3.8 MFLOP).
constexpr double kSddmmMinParallelWork = 2.0e6;

template <typename T>
void RunItems(Isa isa, const SddmmArgs<T>& a, int64_t begin, int64_t end) {
  JAXSPARSE_ISA_CALL(isa, T, SddmmItemsByD, a, begin, end);
}

}  // namespace

template <typename T>
int SddmmCpu(const SddmmArgs<T>& a, const TaskRunner* runner) {
  if (a.batch <= 0) return 0;
  const int64_t nnz = a.m > 0 ? a.row_offsets[a.m] : 0;
  for (int64_t bb = 0; bb < a.batch; ++bb) {  // padding positions are zero
    for (int64_t j = nnz; j < a.cap; ++j) a.out[bb * a.cap + j] = FromAccum<T>(Accum<T>(0));
  }
  if (a.m <= 0 || nnz == 0) return 0;
  const double work = 2.0 * static_cast<double>(nnz) * static_cast<double>(a.d + 1) * a.batch;
  const Isa isa = SelectedIsa();
  ParallelFor(runner, a.batch * a.m, work,
              [&](int64_t begin, int64_t end) { RunItems<T>(isa, a, begin, end); },
              kSddmmMinParallelWork);
  return 0;
}

template int SddmmCpu<float>(const SddmmArgs<float>&, const TaskRunner*);
template int SddmmCpu<double>(const SddmmArgs<double>&, const TaskRunner*);
template int SddmmCpu<Half>(const SddmmArgs<Half>&, const TaskRunner*);
template int SddmmCpu<BFloat16>(const SddmmArgs<BFloat16>&, const TaskRunner*);

}  // namespace cpu
}  // namespace jaxsparse
