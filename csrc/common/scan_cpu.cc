// See scan_cpu.h. Each scan ORs a branch-free predicate over blocks of kBlock
// entries and looks for the exact position only inside a block that failed.
#include "common/scan_cpu.h"

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define JAXSPARSE_SCAN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define JAXSPARSE_SCAN_CLONES
#endif

namespace jaxsparse {
namespace cpu {
namespace {
constexpr int64_t kBlock = 4096;
}  // namespace

JAXSPARSE_SCAN_CLONES
int64_t FirstOutOfRange(const int32_t* x, int64_t n, int64_t hi) {
  // As unsigned, negative values are >= 2^31, so a limit of at most 2^31 catches them.
  const uint32_t limit = static_cast<uint32_t>(hi < 0 ? 0 : (hi > (int64_t{1} << 31) ? (int64_t{1} << 31) : hi));
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = b + kBlock < n ? b + kBlock : n;
    uint32_t bad = 0;
    for (int64_t j = b; j < e; ++j) bad |= static_cast<uint32_t>(static_cast<uint32_t>(x[j]) >= limit);
    if (bad != 0) {
      for (int64_t j = b; j < e; ++j) {
        if (static_cast<uint32_t>(x[j]) >= limit) return j;
      }
    }
  }
  return -1;
}

JAXSPARSE_SCAN_CLONES
int64_t FirstDecrease(const int32_t* x, int64_t m) {
  for (int64_t b = 0; b < m; b += kBlock) {
    const int64_t e = b + kBlock < m ? b + kBlock : m;
    uint32_t bad = 0;
    for (int64_t r = b; r < e; ++r) bad |= static_cast<uint32_t>(x[r + 1] < x[r]);
    if (bad != 0) {
      for (int64_t r = b; r < e; ++r) {
        if (x[r + 1] < x[r]) return r;
      }
    }
  }
  return -1;
}

JAXSPARSE_SCAN_CLONES
bool ColumnsSortedInRows(const int32_t* row_offsets, const int32_t* cols, int64_t m) {
  const int64_t nnz = m > 0 ? row_offsets[m] : 0;
  int64_t all = 0;  // j in [1, nnz) with cols[j] <= cols[j - 1]
  for (int64_t j = 1; j < nnz; ++j) all += cols[j] <= cols[j - 1];
  int64_t at_starts = 0;  // those of them at the first entry of a nonempty row
  for (int64_t r = 0; r < m; ++r) {
    const int32_t s = row_offsets[r];
    if (s > 0 && s < row_offsets[r + 1]) at_starts += cols[s] <= cols[s - 1];
  }
  return all == at_starts;
}

}  // namespace cpu
}  // namespace jaxsparse
