// CPU SpMM kernels and launcher. Each output row is computed in strips of up to
// 8 vectors kept in registers across the row's nonzeros (a broadcast value times
// a contiguous row of the dense operand per nonzero), so every output element is
// written once. Rows go in row_indices order (longest first; storage order when
// each nonzero reads at most 64 bytes of the dense operand) and are claimed in
// chunks by the threads; for wide n the columns are split in blocks so the dense
// panel being read stays in L2, and when the dense row stride is a multiple of
// 2 KiB (n = 512, 1024, 2048 ... in float32) the dense operand is first copied
// to a padded row stride, since such a panel maps onto a fraction of the cache
// sets. The strip kernels are compiled for AVX-512, AVX2+FMA and the baseline,
// and chosen at run time.
#include "spmm/spmm_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "common/half_cpu.h"
#include "common/parallel_cpu.h"
#include "common/scan_cpu.h"
#include "common/simd_cpu.h"

namespace jaxsparse {
namespace cpu {

// How SpmmItems reads the dense operand and splits the columns.
template <typename T>
struct SpmmPlan {
  const T* dense;              // the operand or its padded copy
  int64_t ldb;                 // row stride of `dense`, elements
  int64_t dense_batch_stride;  // 0 (broadcast) or k * ldb
  int64_t col_block;           // columns per work item
  int64_t num_col_blocks;
  int64_t col_begin = 0;       // SpmmItems covers columns [col_begin, n)
  bool prefetch = true;        // SpmmItems issues software prefetches of dense rows
  bool natural_order = false;  // SpmmItems takes rows 0, 1, ... instead of row_indices' order
  // k-blocked path (SpmmBlockedItems): strips of the full strip width from column 0.
  int64_t num_strips = 0;
  int64_t row_block = 0;
  int64_t num_row_blocks = 0;
  int64_t k_block = 0;
};

#define JAXSPARSE_KERNEL_FILE "spmm/spmm_cpu_kernel.inc"
#include "common/per_isa_cpu.inc"
#undef JAXSPARSE_KERNEL_FILE

namespace {

// Bytes of the dense operand's k x col_block panel that one column block reads.
constexpr int64_t kPanelBytes = 512 * 1024;
// Column blocks are multiples of the widest strip (8 AVX-512 vectors of float).
constexpr int64_t kStripMultiple = 128;
// Dense operands up to this size are copied to a padded row stride when their
// stride is cache-hostile; the copy buffer is kept per calling thread.
constexpr int64_t kMaxPackBytes = 64 << 20;
constexpr int64_t kPadBytes = 64;
// The copy pays only when each dense row is read by at least this many nonzeros.
// Measured on Zen 4 (2 threads, 512 x 512, N = 2048; benchmarks/NOTES.md change
// 23): at 10 and 24 uses per row the unpacked operand was 1.1-2.3x faster, at 46
// and 102 the copy was 1.07-1.17x faster.
constexpr int64_t kPackMinUses = 32;
// With a dense row stride that is a multiple of 4 KiB (one way of a 32 KiB 8-way or
// 48 KiB 12-way L1d), every gathered row's strip maps onto the same few L1 sets, so
// the lines prefetched a few nonzeros ahead are evicted before their use. The row
// kernels then skip the software prefetch, unless the panel they read is larger
// than kPanelBytes (no longer in L2, where the prefetch still pays). Measured on
// Zen 4 (benchmarks/NOTES.md change 48): 512 x 512 x 2048 at 4.7 %, 2 threads,
// 592-676 us without against 741-800 with; 512 x 2048 x 2048 (a 1 MiB panel) was
// faster with the prefetch.
constexpr int64_t kL1WayBytes = 4096;
// Rows whose dense-operand reads are this narrow (SpMV and a few columns) go in
// storage order, not longest first: the values and column indices then stream
// sequentially, which the hardware prefetcher follows, and there is too little work
// per row for the order's load balance to matter (the chunks are claimed
// dynamically). Measured on the Zen 3 (benchmarks/NOTES.md change 54): 1000 x 2048
// at 10 %, N = 1, 151 us longest first against 117 us in storage order on one thread;
// N = 16 1.1-1.2x; N = 64 no better.
constexpr int64_t kNaturalOrderRowBytes = 64;

template <typename T>
void RunBlockedItems(Isa isa, const SpmmArgs<T>& a, const SpmmPlan<T>& plan, int64_t begin,
                     int64_t end, Accum<T>* tile, int32_t* cursor) {
  JAXSPARSE_ISA_CALL(isa, T, SpmmBlockedItems, a, plan, begin, end, tile, cursor);
}

template <typename T>
void RunItems(Isa isa, const SpmmArgs<T>& a, const SpmmPlan<T>& plan, int64_t begin, int64_t end) {
  JAXSPARSE_ISA_CALL(isa, T, SpmmItems, a, plan, begin, end);
}

template <typename T>
void RunNtItems(Isa isa, const SpmmArgs<T>& a, int64_t tile, int64_t begin, int64_t end, T* xt,
                T* yt) {
  JAXSPARSE_ISA_CALL(isa, T, SpmmNtItems, a, tile, begin, end, xt, yt);
}

template <typename S, typename D>
void Convert(Isa isa, const S* src, D* dst, int64_t count) {
#if JAXSPARSE_HAVE_X86_SIMD
  if (isa == Isa::kAvx512) return avx512::SpmmConvert<Avx512Ops>(src, dst, count);
  if (isa == Isa::kAvx2) return avx2::SpmmConvert<Avx2Ops>(src, dst, count);
#endif
  (void)isa;
  generic::SpmmConvert<GenericOps<float>>(src, dst, count);
}

// What a ThreadScratch buffer holds; each use has its own, since one call can need
// several at once (the narrow half path runs the float launcher, which may pack).
enum ScratchSlot { kPackSlot, kTileSlot, kNarrowHalfSlot, kNtInSlot, kNtOutSlot, kNumScratchSlots };

// A scratch buffer per calling thread and slot, kept across calls. Null when the
// allocation fails.
void* ThreadScratch(ScratchSlot slot, size_t bytes) {
  static thread_local ScratchBuffer buffers[kNumScratchSlots];
  return buffers[slot].Reserve(bytes);
}

// The k-blocked path (float and double). Measured on the DLMC transformer
// matrices (Zen 4/5, 48 KiB L1d): tiles of 32-48 KiB and row blocks of 256 best;
// see benchmarks/NOTES.md.
constexpr int64_t kTileBytes = 40 * 1024;
constexpr int64_t kRowBlock = 256;
// Minimum average nonzeros of a row inside one k block. Each k block re-reads and
// re-writes the row block's output strip and copies a k_block x strip tile, so
// with few nonzeros per block that traffic, not the FMAs, sets the time: at
// m = k = 512, N = 256, nnz = 12000 (3.7 per block) the blocked path took
// 130 us against 54 us for the row-strip path (benchmarks/NOTES.md, change 4).
constexpr double kMinPerBlock = 8.0;
constexpr int64_t kMaxRowBlock = 1024;

enum class Blocked { kNotUsed, kDone, kNoMemory };

// kDone when it computed columns [0, plan->num_strips * strip width) with the
// k-blocked kernel (plan->col_begin is then where the rest starts); kNoMemory when
// a thread could not allocate its tile.
template <typename T>
Blocked SpmmBlocked(const SpmmArgs<T>& a, SpmmPlan<T>* plan, Isa isa, const TaskRunner* runner) {
  if constexpr (!std::is_same_v<T, float> && !std::is_same_v<T, double>) {
    return Blocked::kNotUsed;
  } else {
    const int64_t lanes = (std::is_same_v<T, float> && isa == Isa::kAvx512) ? 16 : 8;
    const int64_t sw = 8 * lanes;
    const int64_t strips = a.n / sw;
    if (strips == 0) return Blocked::kNotUsed;
    const int64_t nnz = a.row_offsets[a.m];
    const int64_t kc = std::max<int64_t>(8, kTileBytes / (sw * static_cast<int64_t>(sizeof(T))));
    // Average nonzeros of a row inside one k block: below a few, the tile copy and
    // the output read-modify-writes cost more than the L1 reuse gains.
    const double per_block = static_cast<double>(nnz) / a.m * std::min<int64_t>(kc, a.k) / a.k;
    if (per_block < kMinPerBlock) return Blocked::kNotUsed;
    if (!ColumnsSortedInRows(a.row_offsets, a.column_indices, a.m)) return Blocked::kNotUsed;
    plan->num_strips = strips;
    plan->k_block = kc;
    plan->row_block = std::min<int64_t>({kRowBlock, kMaxRowBlock, a.m});
    plan->num_row_blocks = (a.m + plan->row_block - 1) / plan->row_block;
    const int64_t num_items = a.batch * strips * plan->num_row_blocks;
    const double work = 2.0 * static_cast<double>(nnz) * sw * strips * a.batch;
    const SpmmPlan<T>& pl = *plan;
    std::atomic<bool> no_memory{false};
    ParallelFor(runner, num_items, work, [&](int64_t begin, int64_t end) {
      static thread_local int32_t cursor[kMaxRowBlock];
      auto* tile = static_cast<Accum<T>*>(
          ThreadScratch(kTileSlot, static_cast<size_t>(kc * sw * sizeof(Accum<T>))));
      if (tile == nullptr) {
        no_memory.store(true, std::memory_order_relaxed);
        return;
      }
      RunBlockedItems<T>(isa, a, pl, begin, end, tile, cursor);
    });
    if (no_memory.load()) return Blocked::kNoMemory;
    plan->col_begin = strips * sw;
    return Blocked::kDone;
  }
}

// Half types with fewer columns than a vector: the row kernels would finish every
// column in scalar loops (a software float16 conversion per element), so the
// values and the dense operand are converted to float once, the float kernels run
// (SpMV by gathers, narrow and masked vectors), and the result is rounded once:
// the same float accumulation as the half kernels. The buffers are O(nnz + k n +
// m n) floats per calling thread, kept across calls.
constexpr int64_t kNarrowHalfColumns = 16;

template <typename T>
int SpmmNarrowHalf(const SpmmArgs<T>& a, const TaskRunner* runner) {
  const int64_t nnz = a.row_offsets[a.m];
  const int64_t value_batches = a.values_batch_stride == 0 ? 1 : a.batch;
  const int64_t dense_batches = a.dense_batch_stride == 0 ? 1 : a.batch;
  const int64_t n_values = value_batches * nnz;
  const int64_t n_dense = dense_batches * a.k * a.n;
  const size_t total = static_cast<size_t>(n_values + n_dense + a.batch * a.m * a.n);
  auto* values = static_cast<float*>(ThreadScratch(kNarrowHalfSlot, total * sizeof(float)));
  if (values == nullptr) return 1;
  float* dense = values + n_values;
  float* out = dense + n_dense;
  const Isa isa = SelectedIsa();
  for (int64_t b = 0; b < value_batches; ++b) {
    Convert(isa, a.values + b * a.values_batch_stride, values + b * nnz, nnz);
  }
  Convert(isa, a.dense, dense, n_dense);  // [Bb, k, n], contiguous
  SpmmArgs<float> f;
  f.values = values;
  f.values_batch_stride = a.values_batch_stride == 0 ? 0 : nnz;
  f.row_offsets = a.row_offsets;
  f.column_indices = a.column_indices;
  f.row_indices = a.row_indices;
  f.dense = dense;
  f.dense_batch_stride = a.dense_batch_stride == 0 ? 0 : a.k * a.n;
  f.out = out;
  f.batch = a.batch;
  f.m = a.m;
  f.k = a.k;
  f.n = a.n;
  if (SpmmCpu<float>(f, runner) != 0) return 1;
  Convert(isa, static_cast<const float*>(out), a.out, a.batch * a.m * a.n);
  return 0;
}

}  // namespace

template <typename T>
int SpmmCpu(const SpmmArgs<T>& a, const TaskRunner* runner) {
  if (a.batch <= 0 || a.m <= 0 || a.n <= 0) return 0;
  if constexpr (sizeof(T) == 2) {
    if (a.n < kNarrowHalfColumns) return SpmmNarrowHalf(a, runner);
  }
  const int64_t elem = static_cast<int64_t>(sizeof(T));
  SpmmPlan<T> plan{a.dense, a.n, a.dense_batch_stride, a.n, 1};
  const Isa isa = SelectedIsa();
  const Blocked blocked = SpmmBlocked(a, &plan, isa, runner);
  if (blocked == Blocked::kNoMemory) return 1;
  if (blocked == Blocked::kDone) {
    if (plan.col_begin >= a.n) return 0;
    plan.col_block = a.n - plan.col_begin;  // the remaining (< one strip) columns
    plan.num_col_blocks = 1;
    const int64_t num_items = a.batch * a.m;
    const double work = 2.0 * static_cast<double>(a.row_offsets[a.m]) * plan.col_block * a.batch;
    ParallelFor(runner, num_items, work, [&](int64_t begin, int64_t end) {
      RunItems<T>(isa, a, plan, begin, end);
    });
    return 0;
  }
  const int64_t row_bytes = std::max<int64_t>(a.k, 1) * elem;
  if (row_bytes * a.n > kPanelBytes) {
    plan.col_block = std::max(kStripMultiple, kPanelBytes / row_bytes / kStripMultiple * kStripMultiple);
    plan.col_block = std::min(plan.col_block, a.n);
  }
  plan.num_col_blocks = (a.n + plan.col_block - 1) / plan.col_block;
  const int64_t nnz = a.row_offsets[a.m];
  const int64_t dense_batches = a.dense_batch_stride == 0 ? 1 : a.batch;
  const int64_t ldb_padded = a.n + kPadBytes / elem;
  const int64_t pack_bytes = dense_batches * a.k * ldb_padded * elem;
  // Copy only when it pays: blocked columns, a stride that is a multiple of 2 KiB,
  // and enough nonzeros to reuse each dense row many times.
  if (plan.num_col_blocks > 1 && (a.n * elem) % 2048 == 0 && pack_bytes <= kMaxPackBytes &&
      nnz * a.batch >= kPackMinUses * a.k * dense_batches) {
    T* packed = static_cast<T*>(ThreadScratch(kPackSlot, static_cast<size_t>(pack_bytes)));
    if (packed != nullptr) {
      const int64_t rows = dense_batches * a.k;
      ParallelFor(runner, rows, 0.5 * static_cast<double>(rows * a.n),
                  [&](int64_t begin, int64_t end) {
                    for (int64_t row = begin; row < end; ++row) {
                      const int64_t bb = row / a.k;
                      const int64_t kk = row - bb * a.k;
                      std::memcpy(packed + row * ldb_padded,
                                  a.dense + bb * a.dense_batch_stride + kk * a.n,
                                  static_cast<size_t>(a.n * elem));
                    }
                  });
      plan.dense = packed;
      plan.ldb = ldb_padded;
      plan.dense_batch_stride = a.dense_batch_stride == 0 ? 0 : a.k * ldb_padded;
    }
  }
  const int64_t panel_bytes = std::max<int64_t>(a.k, 1) * plan.col_block * elem;
  plan.prefetch = (plan.ldb * elem) % kL1WayBytes != 0 || panel_bytes > kPanelBytes;
  plan.natural_order = a.n * elem <= kNaturalOrderRowBytes;
  const int64_t num_items = a.batch * plan.num_col_blocks * a.m;
  const double work = (2.0 * static_cast<double>(nnz) + a.m) * static_cast<double>(a.n) * a.batch;
  ParallelFor(runner, num_items, work, [&](int64_t begin, int64_t end) {
    RunItems<T>(isa, a, plan, begin, end);
  });
  return 0;
}

// The tokens-major SpMM's tile: as many tokens (a multiple of 16, 16 to 128) as
// keep its transposed [k, tile] copy of x within this many bytes (L2). On the Zen 4
// of NOTES change 53, 1 and 4 MiB were 0-8 % slower.
constexpr int64_t kNtTileBytes = 256 * 1024;

template <typename T>
int SpmmNtCpu(const SpmmArgs<T>& a, const TaskRunner* runner) {
  if (a.batch <= 0 || a.m <= 0 || a.n <= 0) return 0;
  // One token (decoding): x [Bb, 1, k] and out [batch, 1, m] are laid out as SpmmCpu's
  // [Bb, k, 1] and [batch, m, 1], so its SpMV path runs as is, with the threads over
  // rows instead of one token tile on one thread (NOTES change 56).
  if (a.n == 1) return SpmmCpu(a, runner);
  const int64_t elem = static_cast<int64_t>(sizeof(T));
  int64_t tile = kNtTileBytes / (std::max<int64_t>(a.k, 1) * elem) / 16 * 16;
  tile = std::min<int64_t>(std::clamp<int64_t>(tile, 16, 128), a.n);
  const int64_t tiles = (a.n + tile - 1) / tile;
  const double nnz = static_cast<double>(a.row_offsets[a.m]);
  const double work = (2.0 * nnz + a.m + a.k) * static_cast<double>(a.n) * a.batch;
  const Isa isa = SelectedIsa();
  const size_t xt_bytes = static_cast<size_t>(std::max<int64_t>(a.k * tile * elem, 64));
  const size_t yt_bytes = static_cast<size_t>(a.m * tile * elem);
  std::atomic<bool> no_memory{false};
  ParallelFor(runner, a.batch * tiles, work, [&](int64_t begin, int64_t end) {
    auto* xt = static_cast<T*>(ThreadScratch(kNtInSlot, xt_bytes));
    auto* yt = static_cast<T*>(ThreadScratch(kNtOutSlot, yt_bytes));
    if (xt == nullptr || yt == nullptr) {
      no_memory.store(true, std::memory_order_relaxed);
      return;
    }
    RunNtItems<T>(isa, a, tile, begin, end, xt, yt);
  });
  return no_memory.load() ? 1 : 0;
}

template int SpmmCpu<float>(const SpmmArgs<float>&, const TaskRunner*);
template int SpmmCpu<double>(const SpmmArgs<double>&, const TaskRunner*);
template int SpmmCpu<Half>(const SpmmArgs<Half>&, const TaskRunner*);
template int SpmmCpu<BFloat16>(const SpmmArgs<BFloat16>&, const TaskRunner*);
template int SpmmNtCpu<float>(const SpmmArgs<float>&, const TaskRunner*);
template int SpmmNtCpu<double>(const SpmmArgs<double>&, const TaskRunner*);
template int SpmmNtCpu<Half>(const SpmmArgs<Half>&, const TaskRunner*);
template int SpmmNtCpu<BFloat16>(const SpmmArgs<BFloat16>&, const TaskRunner*);

}  // namespace cpu
}  // namespace jaxsparse
