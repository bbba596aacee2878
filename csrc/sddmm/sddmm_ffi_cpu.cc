// XLA FFI handler jaxsparse_sddmm_cpu: decode, validate, dispatch the dtype, call
// the launcher in sddmm_cpu.h. Operands: lhs T[Bl, m, d], rhs T[Br, n, d], topology
// i32[L]; result T[B, cap]. The attribute segments locates row_offsets i32[m+1],
// column_indices i32[cap] and row_indices i32[m] in topology (csrc/README.md).
#include <cstdint>

#include "common/ffi_cpu_helpers.h"
#include "common/ffi_helpers.h"
#include "sddmm/sddmm_cpu.h"
#include "xla/ffi/api/ffi.h"

namespace jaxsparse {
namespace {

ffi::Error SddmmCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer lhs, ffi::AnyBuffer rhs,
                        ffi::Buffer<ffi::S32> topology, ffi::Result<ffi::AnyBuffer> out,
                        ffi::Span<const int64_t> segments) {
  IndexSegment row_offsets, column_indices, row_indices;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, "sddmm", {"row_offsets", "column_indices", "row_indices"},
      {&row_offsets, &column_indices, &row_indices}));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(lhs, 3, "sddmm: lhs"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(rhs, 3, "sddmm: rhs"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(*out, 2, "sddmm: result"));

  const ffi::DataType dtype = out->element_type();
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(lhs.element_type(), dtype, "sddmm", "lhs"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(rhs.element_type(), dtype, "sddmm", "rhs"));

  const int64_t m1 = row_offsets.dimensions()[0];
  if (m1 < 1) return InvalidArgument("sddmm: row_offsets must have m + 1 >= 1 entries, got 0");
  int m = 0, cap = 0;
  JAXSPARSE_RETURN_IF_ERROR(NarrowToInt(m1 - 1, "sddmm: m (row_offsets size - 1)", &m));
  JAXSPARSE_RETURN_IF_ERROR(NarrowToInt(column_indices.dimensions()[0], "sddmm: cap (column_indices size)", &cap));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(row_indices.dimensions()[0], m,
                                     "sddmm: row_indices size (must equal m = row_offsets size - 1)"));
  const int64_t batch = out->dimensions()[0];
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(out->dimensions()[1], cap, "sddmm: result.shape[1] (cap = column_indices size)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(lhs.dimensions()[1], m, "sddmm: lhs.shape[1] (m = row_offsets size - 1)"));
  const int64_t d = lhs.dimensions()[2];
  const int64_t n = rhs.dimensions()[1];
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(rhs.dimensions()[2], d, "sddmm: rhs.shape[2] (d = lhs.shape[2])"));
  int64_t lhs_stride = 0, rhs_stride = 0;
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(lhs.dimensions()[0], batch, m * d, "sddmm: lhs", &lhs_stride));
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(rhs.dimensions()[0], batch, n * d, "sddmm: rhs", &rhs_stride));

  const int32_t* offsets = row_offsets.typed_data();
  const int32_t* columns = column_indices.typed_data();
  const int32_t* rows = row_indices.typed_data();
  JAXSPARSE_RETURN_IF_ERROR(CheckRowOffsets(offsets, m, cap, "sddmm"));
  JAXSPARSE_RETURN_IF_ERROR(CheckColumnIndices(columns, offsets[m], n, "sddmm", "n = rhs.shape[1]"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRowIndices(rows, m, "sddmm"));

  FfiTaskRunner runner(pool);
  JAXSPARSE_CPU_DISPATCH(dtype, "sddmm", "result", T, {
    cpu::SddmmArgs<T> args;
    args.lhs = static_cast<const T*>(lhs.untyped_data());
    args.lhs_batch_stride = lhs_stride;
    args.rhs = static_cast<const T*>(rhs.untyped_data());
    args.rhs_batch_stride = rhs_stride;
    args.row_offsets = offsets;
    args.column_indices = columns;
    args.row_indices = rows;
    args.out = static_cast<T*>(out->untyped_data());
    args.batch = batch;
    args.m = m;
    args.d = d;
    args.cap = cap;
    if (cpu::SddmmCpu<T>(args, &runner) != 0) {
      return ffi::Error(ffi::ErrorCode::kInternal, "jaxsparse: sddmm: CPU kernel failed");
    }
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseSddmmCpu, jaxsparse::SddmmCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::AnyBuffer>()              // lhs
                                  .Arg<xla::ffi::AnyBuffer>()              // rhs
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Ret<xla::ffi::AnyBuffer>()
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"));
