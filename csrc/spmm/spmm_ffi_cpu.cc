// XLA FFI handlers jaxsparse_spmm_cpu and jaxsparse_spmm_nt_cpu: decode, validate,
// dispatch the dtype, call the launchers in spmm_cpu.h. Operands: values T[Bv, cap],
// topology i32[L], dense T[Bb, k, n] (spmm_nt: x T[Bb, n, k]); result T[B, m, n]
// (spmm_nt: T[B, n, m], x @ A^T). The attribute segments locates row_offsets
// i32[m+1], column_indices i32[cap] and row_indices i32[m] in topology (csrc/README.md).
#include <cstdint>

#include "common/ffi_cpu_helpers.h"
#include "common/ffi_helpers.h"
#include "spmm/spmm_cpu.h"
#include "xla/ffi/api/ffi.h"

namespace jaxsparse {
namespace {

// `tokens_major`: the spmm_nt layout (dense [Bb, n, k], result [B, n, m]).
ffi::Error SpmmAnyCpu(ffi::ThreadPool pool, ffi::AnyBuffer values, ffi::Buffer<ffi::S32> topology,
                      ffi::AnyBuffer dense, ffi::Result<ffi::AnyBuffer> out,
                      ffi::Span<const int64_t> segments, bool tokens_major) {
  IndexSegment row_offsets, column_indices, row_indices;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, "spmm", {"row_offsets", "column_indices", "row_indices"},
      {&row_offsets, &column_indices, &row_indices}));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(values, 2, "spmm: values"));
  const char* dense_name = tokens_major ? "spmm_nt: x" : "spmm: b";
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(dense, 3, dense_name));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(*out, 3, "spmm: result"));

  const ffi::DataType dtype = out->element_type();
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(values.element_type(), dtype, "spmm", "values"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(dense.element_type(), dtype, "spmm", tokens_major ? "x" : "b"));

  const int64_t m1 = row_offsets.dimensions()[0];
  if (m1 < 1) return InvalidArgument("spmm: row_offsets must have m + 1 >= 1 entries, got 0");
  int m = 0, cap = 0;
  JAXSPARSE_RETURN_IF_ERROR(NarrowToInt(m1 - 1, "spmm: m (row_offsets size - 1)", &m));
  JAXSPARSE_RETURN_IF_ERROR(NarrowToInt(values.dimensions()[1], "spmm: cap (values.shape[1])", &cap));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(column_indices.dimensions()[0], cap,
                                     "spmm: column_indices size (must equal values.shape[1])"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(row_indices.dimensions()[0], m,
                                     "spmm: row_indices size (must equal m = row_offsets size - 1)"));
  const int64_t batch = out->dimensions()[0];
  const int64_t k = dense.dimensions()[tokens_major ? 2 : 1];
  const int64_t n = dense.dimensions()[tokens_major ? 1 : 2];
  if (tokens_major) {
    JAXSPARSE_RETURN_IF_ERROR(CheckDim(out->dimensions()[1], n, "spmm_nt: result.shape[1] (n = x.shape[1])"));
    JAXSPARSE_RETURN_IF_ERROR(CheckDim(out->dimensions()[2], m, "spmm_nt: result.shape[2] (m)"));
  } else {
    JAXSPARSE_RETURN_IF_ERROR(CheckDim(out->dimensions()[1], m, "spmm: result.shape[1] (m)"));
    JAXSPARSE_RETURN_IF_ERROR(CheckDim(out->dimensions()[2], n, "spmm: result.shape[2] (n = b.shape[2])"));
  }
  int64_t values_stride = 0, dense_stride = 0;
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(values.dimensions()[0], batch, cap, "spmm: values", &values_stride));
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(dense.dimensions()[0], batch, k * n, dense_name, &dense_stride));

  const int32_t* offsets = row_offsets.typed_data();
  const int32_t* columns = column_indices.typed_data();
  const int32_t* rows = row_indices.typed_data();
  JAXSPARSE_RETURN_IF_ERROR(CheckRowOffsets(offsets, m, cap, "spmm"));
  JAXSPARSE_RETURN_IF_ERROR(CheckColumnIndices(columns, offsets[m], k, "spmm",
                                                tokens_major ? "k = x.shape[2]" : "k = b.shape[1]"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRowIndices(rows, m, "spmm"));

  FfiTaskRunner runner(pool);
  JAXSPARSE_CPU_DISPATCH(dtype, "spmm", "result", T, {
    cpu::SpmmArgs<T> args;
    args.values = static_cast<const T*>(values.untyped_data());
    args.values_batch_stride = values_stride;
    args.row_offsets = offsets;
    args.column_indices = columns;
    args.row_indices = rows;
    args.dense = static_cast<const T*>(dense.untyped_data());
    args.dense_batch_stride = dense_stride;
    args.out = static_cast<T*>(out->untyped_data());
    args.batch = batch;
    args.m = m;
    args.k = k;
    args.n = n;
    if ((tokens_major ? cpu::SpmmNtCpu<T>(args, &runner) : cpu::SpmmCpu<T>(args, &runner)) != 0) {
      return ffi::Error(ffi::ErrorCode::kInternal, "jaxsparse: spmm: CPU kernel failed (no memory for its scratch buffers)");
    }
  });
  return ffi::Error::Success();
}

ffi::Error SpmmCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer values, ffi::Buffer<ffi::S32> topology,
                       ffi::AnyBuffer dense, ffi::Result<ffi::AnyBuffer> out,
                       ffi::Span<const int64_t> segments) {
  return SpmmAnyCpu(pool, values, topology, dense, out, segments, false);
}

ffi::Error SpmmNtCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer values, ffi::Buffer<ffi::S32> topology,
                         ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> out,
                         ffi::Span<const int64_t> segments) {
  return SpmmAnyCpu(pool, values, topology, x, out, segments, true);
}

}  // namespace
}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseSpmmCpu, jaxsparse::SpmmCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::AnyBuffer>()           // values
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Arg<xla::ffi::AnyBuffer>()           // b
                                  .Ret<xla::ffi::AnyBuffer>()
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseSpmmNtCpu, jaxsparse::SpmmNtCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::AnyBuffer>()           // values
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Arg<xla::ffi::AnyBuffer>()           // x
                                  .Ret<xla::ffi::AnyBuffer>()
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"));
