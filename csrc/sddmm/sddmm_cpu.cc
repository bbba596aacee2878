// CPU SDDMM kernels and launcher: per nonzero a dot product of length d, G
// nonzeros of a row at a time so each lhs vector is loaded once per group; rows
// in row_indices order (longest first) claimed in chunks by the threads. Compiled
// for AVX-512, AVX2+FMA and the baseline, chosen at run time.
#include "sddmm/sddmm_cpu.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
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

template <typename A>
void RunTileItems(Isa isa, const SddmmArgs<A>& a, bool add, int64_t begin, int64_t end) {
  JAXSPARSE_ISA_CALL(isa, A, SddmmTileItems, a, add, begin, end);
}

template <typename A, typename T>
void RunTransposeColumns(Isa isa, const T* src, int64_t ld, int64_t nt, int64_t c0, int64_t c1,
                         A* dst) {
  JAXSPARSE_ISA_CALL(isa, A, SddmmTransposeColumns, src, ld, nt, c0, c1, dst);
}

// The tokens-major SDDMM's tiles of tokens. Each tile pays every nonzero's row
// bookkeeping and horizontal reduction once, so tiles are long: on the Zen 4 of NOTES
// change 53 (a 512 x 2048 layer at 90 %, 1024-4096 tokens) 512 tokens took 0.65-0.8x
// the time of tiles of 32 (L2-sized copies), and 1.0-1.2x less than 768. The two
// transposed copies ((m + k) x tile, kept per calling thread) stay within kTnMaxBytes.
constexpr int64_t kTnTile = 512;
constexpr int64_t kTnMaxBytes = 16 << 20;

// A scratch buffer per calling thread, kept across calls (null when it cannot grow).
void* TnScratch(size_t bytes) {
  static thread_local ScratchBuffer buffer;
  return buffer.Reserve(bytes);
}

}  // namespace

template <typename T>
int SddmmTnCpu(const SddmmTnArgs<T>& a, const TaskRunner* runner) {
  using A = Accum<T>;
  if (a.batch <= 0) return 0;
  const int64_t nnz = a.m > 0 ? a.row_offsets[a.m] : 0;
  for (int64_t bb = 0; bb < a.batch; ++bb) {  // padding positions are zero
    for (int64_t j = nnz; j < a.cap; ++j) a.out[bb * a.cap + j] = FromAccum<T>(A(0));
  }
  if (nnz == 0) return 0;
  if (a.n <= 0) {
    for (int64_t bb = 0; bb < a.batch; ++bb) {
      for (int64_t j = 0; j < nnz; ++j) a.out[bb * a.cap + j] = FromAccum<T>(A(0));
    }
    return 0;
  }
  // Tiles of about kTnTile tokens (fewer where the copies would pass kTnMaxBytes),
  // split evenly, in multiples of 16.
  const int64_t per_token = (a.m + a.k) * static_cast<int64_t>(sizeof(A));
  const int64_t target = std::clamp<int64_t>(kTnMaxBytes / per_token / 16 * 16, 16, kTnTile);
  const int64_t num_tiles = (a.n + target - 1) / target;
  const int64_t tile = std::min<int64_t>(a.n, ((a.n + num_tiles - 1) / num_tiles + 15) / 16 * 16);
  // Buffers: the transposed tiles ([m + k, tile]) and, for half types, the float sums.
  const bool own_sums = !std::is_same_v<A, T>;
  const size_t tile_elems = static_cast<size_t>((a.m + a.k) * tile);
  const size_t bytes = sizeof(A) * (tile_elems + (own_sums ? static_cast<size_t>(nnz) : 0));
  auto* buf = static_cast<A*>(TnScratch(bytes));
  if (buf == nullptr) return 1;
  A* lt = buf;
  A* rt = buf + a.m * tile;
  A* sums = own_sums ? buf + tile_elems : nullptr;
  const Isa isa = SelectedIsa();
  const int64_t col_blocks = (a.m + 7) / 8 + (a.k + 7) / 8;
  for (int64_t bb = 0; bb < a.batch; ++bb) {
    const T* lhs = a.lhs + bb * a.lhs_batch_stride;
    const T* rhs = a.rhs + bb * a.rhs_batch_stride;
    A* acc = own_sums ? sums : reinterpret_cast<A*>(a.out + bb * a.cap);
    for (int64_t i0 = 0; i0 < a.n; i0 += tile) {
      const int64_t nt = i0 + tile < a.n ? tile : a.n - i0;
      // lt[r, :] = lhs[i0:i0+nt, r], rt[c, :] = rhs[i0:i0+nt, c], 8 columns an item.
      ParallelFor(runner, col_blocks, static_cast<double>(tile_elems), [&](int64_t begin, int64_t end) {
        for (int64_t blk = begin; blk < end; ++blk) {
          const int64_t lb = (a.m + 7) / 8;
          if (blk < lb) {
            RunTransposeColumns<A>(isa, lhs + i0 * a.m, a.m, nt, blk * 8,
                                   std::min<int64_t>(a.m, blk * 8 + 8), lt);
          } else {
            const int64_t c0 = (blk - lb) * 8;
            RunTransposeColumns<A>(isa, rhs + i0 * a.k, a.k, nt, c0, std::min<int64_t>(a.k, c0 + 8), rt);
          }
        }
      });
      SddmmArgs<A> t;
      t.lhs = lt;
      t.rhs = rt;
      t.row_offsets = a.row_offsets;
      t.column_indices = a.column_indices;
      t.row_indices = a.row_indices;
      t.out = acc;
      t.batch = 1;
      t.m = a.m;
      t.d = nt;
      t.cap = a.cap;
      const bool add = i0 > 0;
      ParallelFor(runner, a.m, 2.0 * static_cast<double>(nnz) * static_cast<double>(nt + 1),
                  [&](int64_t begin, int64_t end) { RunTileItems<A>(isa, t, add, begin, end); },
                  kSddmmMinParallelWork);
    }
    if (own_sums) {
      for (int64_t j = 0; j < nnz; ++j) a.out[bb * a.cap + j] = FromAccum<T>(sums[j]);
    }
  }
  return 0;
}

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
template int SddmmTnCpu<float>(const SddmmTnArgs<float>&, const TaskRunner*);
template int SddmmTnCpu<double>(const SddmmTnArgs<double>&, const TaskRunner*);
template int SddmmTnCpu<Half>(const SddmmTnArgs<Half>&, const TaskRunner*);
template int SddmmTnCpu<BFloat16>(const SddmmTnArgs<BFloat16>&, const TaskRunner*);

}  // namespace cpu
}  // namespace jaxsparse
