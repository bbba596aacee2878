// XLA FFI handler jaxsparse_sddmm_cpu: decode, validate, dispatch the dtype, call
// the launcher in sddmm_cpu.h. Operands: lhs T[Bl, m, d], rhs T[Br, n, d], topology
// i32[L]; result T[B, cap]. The attribute segments locates row_offsets i32[m+1],
// column_indices i32[cap] and row_indices i32[m] in topology (csrc/README.md).
#include <cstdint>
#include <string>

#include "common/ffi_cpu_helpers.h"
#include "common/ffi_helpers.h"
#include "sddmm/sddmm_cpu.h"
#include "xla/ffi/api/ffi.h"

namespace jaxsparse {
namespace {

// `tokens_major` (sddmm_tn): lhs T[Bl, n, m] and rhs T[Br, n, k], the SDDMM of
// lhs^T and rhs^T; otherwise lhs T[Bl, m, d] and rhs T[Br, n, d].
ffi::Error SddmmAnyCpu(ffi::ThreadPool pool, ffi::AnyBuffer lhs, ffi::AnyBuffer rhs,
                       ffi::Buffer<ffi::S32> topology, ffi::Result<ffi::AnyBuffer> out,
                       ffi::Span<const int64_t> segments, bool tokens_major) {
  const char* op = tokens_major ? "sddmm_tn" : "sddmm";
  const std::string p = std::string(op) + ": ";
  IndexSegment row_offsets, column_indices, row_indices;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, op, {"row_offsets", "column_indices", "row_indices"},
      {&row_offsets, &column_indices, &row_indices}));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(lhs, 3, (p + "lhs").c_str()));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(rhs, 3, (p + "rhs").c_str()));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(*out, 2, (p + "result").c_str()));

  const ffi::DataType dtype = out->element_type();
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(lhs.element_type(), dtype, op, "lhs"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(rhs.element_type(), dtype, op, "rhs"));

  const int64_t m1 = row_offsets.dimensions()[0];
  if (m1 < 1) return InvalidArgument(p + "row_offsets must have m + 1 >= 1 entries, got 0");
  int m = 0, cap = 0;
  JAXSPARSE_RETURN_IF_ERROR(NarrowToInt(m1 - 1, (p + "m (row_offsets size - 1)").c_str(), &m));
  JAXSPARSE_RETURN_IF_ERROR(NarrowToInt(column_indices.dimensions()[0], (p + "cap (column_indices size)").c_str(), &cap));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(row_indices.dimensions()[0], m,
                                     p + "row_indices size (must equal m = row_offsets size - 1)"));
  const int64_t batch = out->dimensions()[0];
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(out->dimensions()[1], cap, p + "result.shape[1] (cap = column_indices size)"));
  // d: the contracted length (tokens for sddmm_tn); n: rhs's rows (its columns for sddmm_tn).
  const int lhs_m_dim = tokens_major ? 2 : 1;
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(lhs.dimensions()[lhs_m_dim], m,
                                     p + "lhs.shape[" + std::to_string(lhs_m_dim) + "] (m = row_offsets size - 1)"));
  const int64_t d = lhs.dimensions()[tokens_major ? 1 : 2];
  const int64_t n = rhs.dimensions()[tokens_major ? 2 : 1];
  const int rhs_d_dim = tokens_major ? 1 : 2;  // rhs's contracted dim
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(rhs.dimensions()[rhs_d_dim], d,
                                     p + (tokens_major ? "rhs.shape[1] (n = lhs.shape[1])" : "rhs.shape[2] (d = lhs.shape[2])")));
  int64_t lhs_stride = 0, rhs_stride = 0;
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(lhs.dimensions()[0], batch, m * d, (p + "lhs").c_str(), &lhs_stride));
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(rhs.dimensions()[0], batch, n * d, (p + "rhs").c_str(), &rhs_stride));

  const int32_t* offsets = row_offsets.typed_data();
  const int32_t* columns = column_indices.typed_data();
  const int32_t* rows = row_indices.typed_data();
  JAXSPARSE_RETURN_IF_ERROR(CheckRowOffsets(offsets, m, cap, op));
  JAXSPARSE_RETURN_IF_ERROR(CheckColumnIndices(columns, offsets[m], n, op,
                                               tokens_major ? "k = rhs.shape[2]" : "n = rhs.shape[1]"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRowIndices(rows, m, op));

  FfiTaskRunner runner(pool);
  JAXSPARSE_CPU_DISPATCH(dtype, op, "result", T, {
    auto fill = [&](auto& args) {  // the fields SddmmArgs and SddmmTnArgs share
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
      args.cap = cap;
    };
    int rc = 0;
    if (tokens_major) {
      cpu::SddmmTnArgs<T> args;
      fill(args);
      args.k = n;
      args.n = d;
      rc = cpu::SddmmTnCpu<T>(args, &runner);
    } else {
      cpu::SddmmArgs<T> args;
      fill(args);
      args.d = d;
      rc = cpu::SddmmCpu<T>(args, &runner);
    }
    if (rc != 0) {
      return ffi::Error(ffi::ErrorCode::kInternal,
                        "jaxsparse: " + p + "CPU kernel failed (no memory for its scratch buffer)");
    }
  });
  return ffi::Error::Success();
}

ffi::Error SddmmCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer lhs, ffi::AnyBuffer rhs,
                        ffi::Buffer<ffi::S32> topology, ffi::Result<ffi::AnyBuffer> out,
                        ffi::Span<const int64_t> segments) {
  return SddmmAnyCpu(pool, lhs, rhs, topology, out, segments, false);
}

ffi::Error SddmmTnCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer lhs, ffi::AnyBuffer rhs,
                          ffi::Buffer<ffi::S32> topology, ffi::Result<ffi::AnyBuffer> out,
                          ffi::Span<const int64_t> segments) {
  return SddmmAnyCpu(pool, lhs, rhs, topology, out, segments, true);
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseSddmmTnCpu, jaxsparse::SddmmTnCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::AnyBuffer>()              // lhs
                                  .Arg<xla::ffi::AnyBuffer>()              // rhs
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Ret<xla::ffi::AnyBuffer>()
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"));
