// XLA FFI handlers jaxsparse_softmax_cuda and jaxsparse_softmax_grad_cuda:
// decode and check the operands, dispatch the dtype and launch the kernels on
// XLA's stream. The topology contents live on the device and are trusted
// (see csrc/README.md).
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "common/ffi_cuda_helpers.h"
#include "common/ffi_helpers.h"
#include "softmax/softmax_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace jaxsparse {
namespace {

constexpr char kSoftmaxTarget[] = "jaxsparse_softmax_cuda";
constexpr char kGradTarget[] = "jaxsparse_softmax_grad_cuda";

// A values-like operand T[1 or B, cap] of the result T[B, cap]: checks it and
// sets its batch dim.
ffi::Error CheckRowValues(const char* target, const ffi::AnyBuffer& x, const char* what,
                          const ffi::AnyBuffer& out, int* x_batch) {
  JAXSPARSE_RETURN_IF_ERROR(CheckRankOf(target, x, 2, what));
  const auto x_dims = x.dimensions();
  const auto out_dims = out.dimensions();
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(target, (std::string(what) + " dim 1").c_str(), x_dims[1],
                                     out_dims[1], "cap, the result's last dim"));
  JAXSPARSE_RETURN_IF_ERROR(CheckBatch(target, what, x_dims[0], out_dims[0]));
  JAXSPARSE_RETURN_IF_ERROR(CheckDtype(target, what, x.element_type(), out.element_type()));
  return NarrowDim(target, (std::string(what) + " batch").c_str(), x_dims[0], x_batch);
}

// The result T[B, cap] and the rows; sets batch, cap and m.
ffi::Error CheckResultAndRows(const char* target, const ffi::AnyBuffer& out,
                              const IndexSegment& row_offsets,
                              const IndexSegment& row_indices, int* batch, int* cap,
                              int* m) {
  JAXSPARSE_RETURN_IF_ERROR(CheckRankOf(target, out, 2, "the result"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRows(target, row_offsets, row_indices, m));
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(target, "batch", out.dimensions()[0], batch));
  return NarrowDim(target, "cap", out.dimensions()[1], cap);
}

// values T[Bv, cap], row_offsets int32[m + 1], row_indices int32[m] -> out T[B, cap].
ffi::Error SoftmaxCudaImpl(cudaStream_t stream, ffi::AnyBuffer values,
                           ffi::Buffer<ffi::S32> topology, ffi::Result<ffi::AnyBuffer> out,
                           ffi::Span<const int64_t> segments) {
  IndexSegment row_offsets, row_indices;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, kSoftmaxTarget, {"row_offsets", "row_indices"},
      {&row_offsets, &row_indices}));
  int batch, cap, m, values_batch;
  JAXSPARSE_RETURN_IF_ERROR(
      CheckResultAndRows(kSoftmaxTarget, *out, row_offsets, row_indices, &batch, &cap, &m));
  JAXSPARSE_RETURN_IF_ERROR(CheckRowValues(kSoftmaxTarget, values, "values", *out, &values_batch));

  return DispatchCudaFloat(values.element_type(), kSoftmaxTarget, [&](auto tag) {
    using T = typename decltype(tag)::Type;
    return CudaStatus(kSoftmaxTarget,
                      cuda::LaunchSoftmax<T>(stream, batch, m, cap,
                                             static_cast<const T*>(values.untyped_data()),
                                             values_batch, row_offsets.typed_data(),
                                             row_indices.typed_data(),
                                             static_cast<T*>(out->untyped_data())));
  });
}

// y T[By, cap], g T[Bg, cap], row_offsets, row_indices -> out T[B, cap]
// = y * (g - rowsum(g * y)).
ffi::Error SoftmaxGradCudaImpl(cudaStream_t stream, ffi::AnyBuffer y, ffi::AnyBuffer g,
                               ffi::Buffer<ffi::S32> topology, ffi::Result<ffi::AnyBuffer> out,
                               ffi::Span<const int64_t> segments) {
  IndexSegment row_offsets, row_indices;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, kGradTarget, {"row_offsets", "row_indices"},
      {&row_offsets, &row_indices}));
  int batch, cap, m, y_batch, g_batch;
  JAXSPARSE_RETURN_IF_ERROR(
      CheckResultAndRows(kGradTarget, *out, row_offsets, row_indices, &batch, &cap, &m));
  JAXSPARSE_RETURN_IF_ERROR(CheckRowValues(kGradTarget, y, "y", *out, &y_batch));
  JAXSPARSE_RETURN_IF_ERROR(CheckRowValues(kGradTarget, g, "g", *out, &g_batch));

  return DispatchCudaFloat(y.element_type(), kGradTarget, [&](auto tag) {
    using T = typename decltype(tag)::Type;
    return CudaStatus(kGradTarget,
                      cuda::LaunchSoftmaxGrad<T>(stream, batch, m, cap,
                                                 static_cast<const T*>(y.untyped_data()), y_batch,
                                                 static_cast<const T*>(g.untyped_data()), g_batch,
                                                 row_offsets.typed_data(),
                                                 row_indices.typed_data(),
                                                 static_cast<T*>(out->untyped_data())));
  });
}

}  // namespace
}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseSoftmaxCuda, jaxsparse::SoftmaxCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<xla::ffi::AnyBuffer>()              // values
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Ret<xla::ffi::AnyBuffer>()  // out
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"),
                              {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseSoftmaxGradCuda, jaxsparse::SoftmaxGradCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<xla::ffi::AnyBuffer>()              // y
                                  .Arg<xla::ffi::AnyBuffer>()              // g
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Ret<xla::ffi::AnyBuffer>()  // out
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"),
                              {xla::ffi::Traits::kCmdBufferCompatible});
