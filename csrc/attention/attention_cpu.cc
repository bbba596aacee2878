// CPU fused sparse attention launchers: rows (and, for the backward's second pass,
// key columns) in longest-first order, claimed in chunks by the threads. Compiled
// for AVX-512, AVX2+FMA and the baseline, chosen at run time.
#include "attention/attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
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

template <typename T>
void FwdBandItems(const AttnFwdArgs<T>& a, int64_t max_span, const AttnGatherPlan* g,
                  int64_t begin, int64_t end) {
  JAXSPARSE_ISA_CALL(SelectedIsa(), T, AttnFwdBand, a, max_span, g, begin, end);
}
template <typename T>
void BwdRowBandItems(const AttnBwdArgs<T>& a, int64_t max_span, const AttnGatherPlan* g,
                     int64_t chunk_blocks, int64_t phase, int64_t begin, int64_t end) {
  JAXSPARSE_ISA_CALL(SelectedIsa(), T, AttnBwdRowsBand, a, max_span, g, chunk_blocks, phase,
                     begin, end);
}
template <typename T>
void BwdColBandItems(const AttnBwdArgs<T>& a, int64_t max_span, const AttnGatherPlan* g,
                     int64_t begin, int64_t end) {
  JAXSPARSE_ISA_CALL(SelectedIsa(), T, AttnBwdColsBand, a, max_span, g, begin, end);
}

// The band kernels take a topology when their tiles (blocks of lanes rows by the
// block's span of columns) hold at most this many positions per stored entry: each
// position costs about a third of an entry of the row kernels (benchmarks/NOTES.md,
// change 39).
constexpr double kAttnBandMaxArea = 1.5;

// The band kernels' block height (the float lanes of the selected instruction set),
// or 0 where there are none (the baseline ISA, other element types) or
// JAXSPARSE_CPU_ATTN_BAND=0 turns them off (read per call, for A/B comparisons).
template <typename T>
int64_t AttnBandLanes() {
  if (!std::is_same_v<T, float>) return 0;
  const char* env = std::getenv("JAXSPARSE_CPU_ATTN_BAND");
  if (env != nullptr && std::strcmp(env, "0") == 0) return 0;
  switch (SelectedIsa()) {
    case Isa::kAvx512: return 16;
    case Isa::kAvx2: return 8;
    default: return 0;
  }
}

// The longest span [first stored column, last stored column] over the blocks of
// `lanes` consecutive rows of t (rows with no entry ignored), and the sum of the
// blocks' lanes x span.
void AttnBlockSpans(const AttnTopology& t, int64_t lanes, int64_t* longest, double* area) {
  *longest = 0;
  *area = 0;
  for (int64_t r0 = 0; r0 < t.m; r0 += lanes) {
    int64_t first = std::numeric_limits<int64_t>::max(), last = -1;
    for (int64_t r = r0; r < t.m && r < r0 + lanes; ++r) {
      const int32_t j0 = t.row_offsets[r], j1 = t.row_offsets[r + 1];
      if (j1 <= j0) continue;
      first = t.column_indices[j0] < first ? t.column_indices[j0] : first;
      last = t.column_indices[j1 - 1] > last ? t.column_indices[j1 - 1] : last;
    }
    if (last < first) continue;
    *longest = last - first + 1 > *longest ? last - first + 1 : *longest;
    *area += static_cast<double>(lanes) * static_cast<double>(last - first + 1);
  }
}

// The longest span of AttnBlockSpans (the two-pass backward's key blocks).
int64_t AttnLongestSpan(const AttnTopology& t, int64_t lanes) {
  int64_t longest = 0;
  double area = 0;
  AttnBlockSpans(t, lanes, &longest, &area);
  return longest;
}

// The single-pass band backward's chunk length in blocks of `lanes` rows: the fewest
// blocks such that no key has query rows in two chunks two apart (chunks i and i + 2
// then write disjoint rows of dk and dv, so each of the two phases runs its chunks in
// parallel). One chunk of all the rows where no length does (full causal). Needs
// AttnBandSpan(t, lanes) > 0: lo and hi do not decrease from row to row.
int64_t AttnBandChunkBlocks(const AttnTopology& t, int64_t lanes) {
  const int64_t blocks = (t.m + lanes - 1) / lanes;
  const int32_t nnz = t.row_offsets[t.m];
  // With empty rows only before the first stored row and after the last (AttnBandSpan),
  // the entry at row_offsets[r] is the first of the next row that stores one (lo of
  // row r or, for an empty row, of the nearest stored row after it; none after the
  // last stored row), and the one before row_offsets[r + 1] the last of the nearest
  // stored row at or before r: the bounds the test below needs.
  auto lo = [&](int64_t r) {
    return t.row_offsets[r] < nnz ? static_cast<int64_t>(t.column_indices[t.row_offsets[r]])
                                  : std::numeric_limits<int64_t>::max();
  };
  auto hi = [&](int64_t r) {
    return t.row_offsets[r + 1] > 0
               ? static_cast<int64_t>(t.column_indices[t.row_offsets[r + 1] - 1])
               : int64_t{-1};
  };
  for (int64_t cb = 1; 2 * cb < blocks; cb *= 2) {
    bool disjoint = true;
    for (int64_t c = 0; disjoint && (c + 2) * cb < blocks; ++c) {
      // the last row of chunk c against the first row of chunk c + 2
      disjoint = hi(std::min((c + 1) * cb * lanes, t.m) - 1) < lo((c + 2) * cb * lanes);
    }
    if (disjoint) return cb;
  }
  return blocks;
}

// Whether the band backward runs in one pass (dq, dk and dv from each block of rows)
// rather than two (dq by blocks of rows, then dk and dv by blocks of keys): when its
// phases have at least two items per thread. JAXSPARSE_CPU_ATTN_BAND_BWD=1 or 2 forces
// one or two passes (read per call; for tests and A/B runs).
bool AttnBandOnePass(int64_t batch, int64_t blocks, int64_t chunk_blocks,
                     const TaskRunner* runner) {
  const char* env = std::getenv("JAXSPARSE_CPU_ATTN_BAND_BWD");
  if (env != nullptr && std::strcmp(env, "1") == 0) return true;
  if (env != nullptr && std::strcmp(env, "2") == 0) return false;
  const int64_t chunks = (blocks + chunk_blocks - 1) / chunk_blocks;
  const int64_t threads = 1 + (runner != nullptr ? runner->NumWorkers() : 0);
  return batch * (chunks / 2) >= 2 * threads || (chunks == 1 && batch >= 2 * threads);
}

// The band kernels' tile height (the longest block span) for the row topology t, or 0
// where they do not take it (the forward and the backward decide alike from t): they
// take it when every row stores a contiguous range of columns, the rows that store
// none all come before the first row that stores one or after the last (so each key's
// query rows stay a contiguous range: the two-pass backward's key blocks need it), the
// ranges' first and last columns do not decrease from row to row, and the tiles are
// dense enough. O(nnz).
int64_t AttnBandSpan(const AttnTopology& t, int64_t lanes) {
  if (lanes <= 0 || t.m <= 0 || t.row_offsets[t.m] <= 0) return 0;
  int64_t prev_lo = -1, prev_hi = -1;
  int32_t bad = 0;
  bool ended = false;  // an empty row after a stored one: no row may store one again
  for (int64_t r = 0; r < t.m; ++r) {
    const int32_t j0 = t.row_offsets[r], j1 = t.row_offsets[r + 1];
    if (j1 <= j0) {
      ended = prev_hi >= 0;
      continue;
    }
    if (ended) return 0;
    const int32_t lo = t.column_indices[j0];
    const int64_t hi = static_cast<int64_t>(lo) + (j1 - j0) - 1;
    if (lo < prev_lo || hi < prev_hi) return 0;
    for (int32_t j = j0; j < j1; ++j) bad |= t.column_indices[j] ^ (lo + (j - j0));
    prev_lo = lo;
    prev_hi = hi;
  }
  if (bad != 0) return 0;
  int64_t longest = 0;
  double area = 0;
  AttnBlockSpans(t, lanes, &longest, &area);
  return area <= kAttnBandMaxArea * static_cast<double>(t.row_offsets[t.m]) ? longest : 0;
}

// The gather kernels' plan (AttnGatherPlan) and its storage.
struct AttnGather {
  std::vector<int32_t> block_start, cols, row_first;
  AttnGatherPlan plan;
};

// Builds in *out the gather kernels' plan for t and returns true where they take it:
// in every block of `lanes` rows each row's columns are a contiguous run of the
// block's sorted union of columns, and the tiles (lanes x union) hold at most
// kAttnBandMaxArea positions per stored entry. JAXSPARSE_CPU_ATTN_GATHER=0 turns them
// off (read per call, for A/B runs and tests). O(nnz) plus sorting each union.
bool AttnGatherBuild(const AttnTopology& t, int64_t lanes, AttnGather* out) {
  if (lanes <= 0 || t.m <= 0 || t.n <= 0 || t.row_offsets[t.m] <= 0) return false;
  const char* env = std::getenv("JAXSPARSE_CPU_ATTN_GATHER");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  const double limit = kAttnBandMaxArea * static_cast<double>(t.row_offsets[t.m]);
  const int64_t blocks = (t.m + lanes - 1) / lanes;
  std::vector<int32_t> stamp(static_cast<size_t>(t.n), -1), index(static_cast<size_t>(t.n), 0);
  out->block_start.assign(static_cast<size_t>(blocks), 0);
  out->cols.clear();
  size_t prev_start = 0, prev_count = 0;
  out->row_first.assign(static_cast<size_t>(t.m), 0);
  double area = 0;
  int64_t longest = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * lanes, r1 = std::min(r0 + lanes, t.m);
    const size_t start = out->cols.size();
    for (int32_t j = t.row_offsets[r0]; j < t.row_offsets[r1]; ++j) {
      const int32_t c = t.column_indices[j];
      if (stamp[c] != b) {
        stamp[c] = static_cast<int32_t>(b);
        out->cols.push_back(c);
      }
    }
    std::sort(out->cols.begin() + static_cast<std::ptrdiff_t>(start), out->cols.end());
    const int64_t count = static_cast<int64_t>(out->cols.size() - start);
    area += static_cast<double>(lanes) * static_cast<double>(count);
    if (area > limit) return false;
    for (int64_t i = 0; i < count; ++i) index[out->cols[start + i]] = static_cast<int32_t>(i);
    for (int64_t r = r0; r < r1; ++r) {
      const int32_t j0 = t.row_offsets[r], j1 = t.row_offsets[r + 1];
      if (j1 <= j0) continue;
      const int32_t first = index[t.column_indices[j0]];
      for (int32_t j = j0 + 1; j < j1; ++j) {
        if (index[t.column_indices[j]] != first + (j - j0)) return false;
      }
      out->row_first[r] = first;
    }
    longest = std::max(longest, count);
    const auto begin = out->cols.begin();
    if (b > 0 && static_cast<size_t>(count) == prev_count &&
        std::equal(begin + static_cast<std::ptrdiff_t>(start), out->cols.end(),
                   begin + static_cast<std::ptrdiff_t>(prev_start))) {
      out->cols.resize(start);  // the previous block's union: share it
    } else {
      prev_start = start;
      prev_count = static_cast<size_t>(count);
    }
    out->block_start[b] = static_cast<int32_t>(prev_start);
  }
  out->plan.block_start = out->block_start.data();
  out->plan.cols = out->cols.data();
  out->plan.row_first = out->row_first.data();
  out->plan.max_cols = longest;
  return true;
}

constexpr double kAttnBwdWeightsBytes = 4.0 * 1024 * 1024;

// Zeros dk and dv (the single-pass backward accumulates into them in place).
template <typename T>
void ZeroKeyGrads(const AttnBwdArgs<T>& a) {
  for (int64_t bb = 0; bb < a.batch; ++bb) {
    for (int64_t c = 0; c < a.t_topo.m; ++c) {
      std::memset(a.dk.Row(bb, c), 0, sizeof(T) * a.d);
      std::memset(a.dv_out.Row(bb, c), 0, sizeof(T) * a.dv);
    }
  }
}

// The most bytes of per-entry weights the row kernels' backward stores for its
// pass 2 (NOTES change 52): gains were measured up to 3 MiB; at 10 MiB (d = 64) it
// lost 8 %, and at 16 MiB per head (change 36) recomputing was clearly cheaper. JAXSPARSE_CPU_ATTN_BWD_WEIGHTS=<bytes> sets it
// (0: never), read per call for A/B runs and tests.
double AttnBwdWeightsBytes() {
  const char* env = std::getenv("JAXSPARSE_CPU_ATTN_BWD_WEIGHTS");
  if (env != nullptr && env[0] != '\0') return std::strtod(env, nullptr);
  return kAttnBwdWeightsBytes;
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
  const double nnz = static_cast<double>(a.topo.row_offsets[a.topo.m]);
  const double work = 2.0 * nnz * static_cast<double>(a.d + a.dv + 8) * a.batch;
  const int64_t lanes = AttnBandLanes<T>();
  if (const int64_t span = AttnBandSpan(a.topo, lanes); span > 0) {
    const int64_t blocks = (a.topo.m + lanes - 1) / lanes;
    ParallelFor(runner, a.batch * blocks, work,
                [&](int64_t begin, int64_t end) { FwdBandItems<T>(a, span, nullptr, begin, end); });
    return 0;
  }
  if (AttnGather gather; AttnGatherBuild(a.topo, lanes, &gather)) {
    const int64_t blocks = (a.topo.m + lanes - 1) / lanes;
    ParallelFor(runner, a.batch * blocks, work, [&](int64_t begin, int64_t end) {
      FwdBandItems<T>(a, gather.plan.max_cols, &gather.plan, begin, end);
    });
    return 0;
  }
  const int64_t max_row = MaxRowLength(a.topo);
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
  const int64_t lanes = AttnBandLanes<T>();
  if (const int64_t span = AttnBandSpan(a.topo, lanes); span > 0) {
    const int64_t blocks = (a.topo.m + lanes - 1) / lanes;
    const int64_t chunk_blocks = AttnBandChunkBlocks(a.topo, lanes);
    if (a.t_topo.m > 0 && AttnBandOnePass(a.batch, blocks, chunk_blocks, runner)) {
      ZeroKeyGrads(a);
      const int64_t chunks = (blocks + chunk_blocks - 1) / chunk_blocks;
      for (int64_t phase = 0; phase < 2 && phase < chunks; ++phase) {
        const int64_t items = a.batch * ((chunks - phase + 1) / 2);
        ParallelFor(runner, items, (row_work + col_work) * items / (a.batch * chunks),
                    [&](int64_t begin, int64_t end) {
                      BwdRowBandItems<T>(a, span, nullptr, chunk_blocks, phase, begin, end);
                    });
      }
      return 0;
    }
    ParallelFor(runner, a.batch * blocks, row_work, [&](int64_t begin, int64_t end) {
      BwdRowBandItems<T>(a, span, nullptr, 0, 0, begin, end);
    });
    if (a.t_topo.m > 0) {
      const int64_t key_span = AttnLongestSpan(a.t_topo, lanes);
      ParallelFor(runner, a.batch * ((a.t_topo.m + lanes - 1) / lanes), col_work,
                  [&](int64_t begin, int64_t end) {
                    BwdColBandItems<T>(a, key_span, nullptr, begin, end);
                  });
    }
    return 0;
  }
  // The gather kernels where the forward took them (the same decision, from a.topo):
  // in one pass where each thread gets two batch entries (their dk, dv rows are
  // disjoint), else two passes, pass 2 on them too where the transpose qualifies, else
  // on the row kernels.
  if (AttnGather gather; a.topo.m > 0 && AttnGatherBuild(a.topo, lanes, &gather)) {
    const int64_t blocks = (a.topo.m + lanes - 1) / lanes;
    if (a.t_topo.m > 0 && AttnBandOnePass(a.batch, blocks, blocks, runner)) {
      ZeroKeyGrads(a);
      ParallelFor(runner, a.batch, row_work + col_work, [&](int64_t begin, int64_t end) {
        BwdRowBandItems<T>(a, gather.plan.max_cols, &gather.plan, blocks, 0, begin, end);
      });
      return 0;
    }
    ParallelFor(runner, a.batch * blocks, row_work, [&](int64_t begin, int64_t end) {
      BwdRowBandItems<T>(a, gather.plan.max_cols, &gather.plan, 0, 0, begin, end);
    });
    if (AttnGather t_gather; a.t_topo.m > 0 && AttnGatherBuild(a.t_topo, lanes, &t_gather)) {
      ParallelFor(runner, a.batch * ((a.t_topo.m + lanes - 1) / lanes), col_work,
                  [&](int64_t begin, int64_t end) {
                    BwdColBandItems<T>(a, t_gather.plan.max_cols, &t_gather.plan, begin, end);
                  });
    } else if (a.t_topo.m > 0) {
      ParallelFor(runner, a.batch * a.t_topo.m, col_work,
                  [&](int64_t begin, int64_t end) { BwdColItems<T>(a, begin, end); });
    }
    return 0;
  }
  // The row kernels. Where both passes have rows and the entries' weights fit
  // AttnBwdWeightsBytes, pass 1 stores them for pass 2 (the register-blocked kernels;
  // the others recompute).
  AttnBwdArgs<T> b = a;
  std::unique_ptr<Accum<T>[]> weights;
  const double weights_bytes = 2.0 * sizeof(Accum<T>) * nnz * static_cast<double>(a.batch);
  if (a.topo.m > 0 && a.t_topo.m > 0 && nnz > 0 && weights_bytes <= AttnBwdWeightsBytes()) {
    weights.reset(new Accum<T>[static_cast<size_t>(weights_bytes / sizeof(Accum<T>))]);
    b.weights = weights.get();
  }
  if (b.topo.m > 0) {
    ParallelFor(runner, b.batch * b.topo.m, row_work,
                [&](int64_t begin, int64_t end) { BwdRowItems<T>(b, begin, end); });
  }
  if (b.t_topo.m > 0) {
    ParallelFor(runner, b.batch * b.t_topo.m, b.weights != nullptr ? col_work / 2 : col_work,
                [&](int64_t begin, int64_t end) { BwdColItems<T>(b, begin, end); });
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
