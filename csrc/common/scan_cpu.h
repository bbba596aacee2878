// Scans of index arrays for the CPU handlers' topology checks. They run on every
// call, over O(nnz) entries, so they are written without early exits inside a
// block (the compiler vectorizes them) and compiled for AVX2 as well as the
// baseline, chosen when the library loads. No XLA types.
#ifndef JAXSPARSE_COMMON_SCAN_CPU_H_
#define JAXSPARSE_COMMON_SCAN_CPU_H_

#include <cstdint>

namespace jaxsparse {
namespace cpu {

// The first j in [0, n) with x[j] outside [0, hi), or -1 when there is none.
int64_t FirstOutOfRange(const int32_t* x, int64_t n, int64_t hi);

// The first r in [0, m) with x[r + 1] < x[r] (x has m + 1 entries), or -1.
int64_t FirstDecrease(const int32_t* x, int64_t m);

// Whether the column indices increase strictly within every row (rows given by
// the m + 1 validated row_offsets). Branch-free: the decreases over the whole
// array must all be at the first entry of a row.
bool ColumnsSortedInRows(const int32_t* row_offsets, const int32_t* cols, int64_t m);

}  // namespace cpu
}  // namespace jaxsparse

#endif  // JAXSPARSE_COMMON_SCAN_CPU_H_
