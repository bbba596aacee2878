// XLA FFI handlers jaxsparse_softmax_cpu and jaxsparse_softmax_grad_cpu: decode,
// validate, dispatch the dtype, call the launchers in softmax_cpu.h.
//   softmax:      values T[Bv, cap], topology (row_offsets i32[m+1], row_indices i32[m])
//                 -> T[B, cap]
//   softmax_grad: y T[By, cap], g T[Bg, cap], topology (the same) -> T[B, cap]
// The index arrays are located in topology by the attribute segments (csrc/README.md).
#include <cstdint>
#include <string>

#include "common/ffi_cpu_helpers.h"
#include "common/ffi_helpers.h"
#include "softmax/softmax_cpu.h"
#include "xla/ffi/api/ffi.h"

namespace jaxsparse {
namespace {

// Shared checks of the topology operands and the result; sets m, cap, batch.
ffi::Error CheckSoftmaxTopology(const char* op, IndexSegment row_offsets,
                                IndexSegment row_indices, const ffi::AnyBuffer& out,
                                int* m, int* cap, int64_t* batch) {
  const std::string o(op);
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(out, 2, (o + ": result").c_str()));
  const int64_t m1 = row_offsets.dimensions()[0];
  if (m1 < 1) return InvalidArgument(o + ": row_offsets must have m + 1 >= 1 entries, got 0");
  JAXSPARSE_RETURN_IF_ERROR(NarrowToInt(m1 - 1, (o + ": m (row_offsets size - 1)").c_str(), m));
  JAXSPARSE_RETURN_IF_ERROR(NarrowToInt(out.dimensions()[1], (o + ": cap (result.shape[1])").c_str(), cap));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(row_indices.dimensions()[0], *m,
                                     o + ": row_indices size (must equal m = row_offsets size - 1)"));
  *batch = out.dimensions()[0];
  JAXSPARSE_RETURN_IF_ERROR(CheckRowOffsets(row_offsets.typed_data(), *m, *cap, op));
  JAXSPARSE_RETURN_IF_ERROR(CheckRowIndices(row_indices.typed_data(), *m, op));
  return ffi::Error::Success();
}

// A [B?, cap] value operand of the result's dtype; sets its batch stride.
ffi::Error CheckValueOperand(const char* op, const char* what, const ffi::AnyBuffer& x,
                             ffi::DataType dtype, int64_t batch, int64_t cap, int64_t* stride) {
  const std::string name = std::string(op) + ": " + what;
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(x, 2, name.c_str()));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(x.element_type(), dtype, op, what));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(x.dimensions()[1], cap, name + ".shape[1] (cap = result.shape[1])"));
  return BatchStride(x.dimensions()[0], batch, cap, name.c_str(), stride);
}

ffi::Error SoftmaxCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer values,
                          ffi::Buffer<ffi::S32> topology, ffi::Result<ffi::AnyBuffer> out,
                          ffi::Span<const int64_t> segments) {
  IndexSegment row_offsets, row_indices;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, "softmax", {"row_offsets", "row_indices"},
      {&row_offsets, &row_indices}));
  int m = 0, cap = 0;
  int64_t batch = 0, values_stride = 0;
  JAXSPARSE_RETURN_IF_ERROR(CheckSoftmaxTopology("softmax", row_offsets, row_indices, *out, &m, &cap, &batch));
  const ffi::DataType dtype = out->element_type();
  JAXSPARSE_RETURN_IF_ERROR(CheckValueOperand("softmax", "values", values, dtype, batch, cap, &values_stride));
  FfiTaskRunner runner(pool);
  JAXSPARSE_CPU_DISPATCH(dtype, "softmax", "result", T, {
    cpu::SoftmaxArgs<T> args;
    args.values = static_cast<const T*>(values.untyped_data());
    args.values_batch_stride = values_stride;
    args.row_offsets = row_offsets.typed_data();
    args.row_indices = row_indices.typed_data();
    args.out = static_cast<T*>(out->untyped_data());
    args.batch = batch;
    args.m = m;
    args.cap = cap;
    if (cpu::SoftmaxCpu<T>(args, &runner) != 0) {
      return ffi::Error(ffi::ErrorCode::kInternal, "jaxsparse: softmax: CPU kernel failed");
    }
  });
  return ffi::Error::Success();
}

ffi::Error SoftmaxGradCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer y, ffi::AnyBuffer g,
                              ffi::Buffer<ffi::S32> topology, ffi::Result<ffi::AnyBuffer> out,
                              ffi::Span<const int64_t> segments) {
  IndexSegment row_offsets, row_indices;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, "softmax_grad", {"row_offsets", "row_indices"},
      {&row_offsets, &row_indices}));
  int m = 0, cap = 0;
  int64_t batch = 0, y_stride = 0, g_stride = 0;
  JAXSPARSE_RETURN_IF_ERROR(
      CheckSoftmaxTopology("softmax_grad", row_offsets, row_indices, *out, &m, &cap, &batch));
  const ffi::DataType dtype = out->element_type();
  JAXSPARSE_RETURN_IF_ERROR(CheckValueOperand("softmax_grad", "y", y, dtype, batch, cap, &y_stride));
  JAXSPARSE_RETURN_IF_ERROR(CheckValueOperand("softmax_grad", "g", g, dtype, batch, cap, &g_stride));
  FfiTaskRunner runner(pool);
  JAXSPARSE_CPU_DISPATCH(dtype, "softmax_grad", "result", T, {
    cpu::SoftmaxGradArgs<T> args;
    args.y = static_cast<const T*>(y.untyped_data());
    args.y_batch_stride = y_stride;
    args.g = static_cast<const T*>(g.untyped_data());
    args.g_batch_stride = g_stride;
    args.row_offsets = row_offsets.typed_data();
    args.row_indices = row_indices.typed_data();
    args.out = static_cast<T*>(out->untyped_data());
    args.batch = batch;
    args.m = m;
    args.cap = cap;
    if (cpu::SoftmaxGradCpu<T>(args, &runner) != 0) {
      return ffi::Error(ffi::ErrorCode::kInternal, "jaxsparse: softmax_grad: CPU kernel failed");
    }
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseSoftmaxCpu, jaxsparse::SoftmaxCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::AnyBuffer>()              // values
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Ret<xla::ffi::AnyBuffer>()
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseSoftmaxGradCpu, jaxsparse::SoftmaxGradCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::AnyBuffer>()              // y
                                  .Arg<xla::ffi::AnyBuffer>()              // g
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Ret<xla::ffi::AnyBuffer>()
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"));
