// XLA FFI handler jaxsparse_permute_cuda: decodes and checks the operands,
// dispatches the dtype and launches the gather on XLA's stream. The entries
// of perm live on the device and are trusted to lie in [0, cap).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/ffi_cuda_helpers.h"
#include "common/ffi_helpers.h"
#include "permute/permute_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace jaxsparse {
namespace {

constexpr char kTarget[] = "jaxsparse_permute_cuda";

// values T[Bv, cap], perm int32[cap] -> out T[B, cap], out[b, i] = values[b, perm[i]].
ffi::Error PermuteCudaImpl(cudaStream_t stream, ffi::AnyBuffer values,
                           ffi::Buffer<ffi::S32> topology, ffi::Result<ffi::AnyBuffer> out,
                           ffi::Span<const int64_t> segments) {
  IndexSegment perm;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, kTarget, {"perm"}, {&perm}));
  JAXSPARSE_RETURN_IF_ERROR(CheckRankOf(kTarget, values, 2, "values"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRankOf(kTarget, *out, 2, "the result"));
  const auto v_dims = values.dimensions();
  const auto out_dims = out->dimensions();
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(kTarget, "perm size", perm.dimensions()[0], v_dims[1],
                                     "cap, the size of values' last dim"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(kTarget, "the result's dim 1", out_dims[1], v_dims[1],
                                     "cap, the size of values' last dim"));
  JAXSPARSE_RETURN_IF_ERROR(CheckBatch(kTarget, "values", v_dims[0], out_dims[0]));
  JAXSPARSE_RETURN_IF_ERROR(
      CheckDtype(kTarget, "the result", out->element_type(), values.element_type()));

  int batch, values_batch, cap;
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "batch", out_dims[0], &batch));
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "values batch", v_dims[0], &values_batch));
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "cap", v_dims[1], &cap));

  return DispatchCudaFloat(values.element_type(), kTarget, [&](auto tag) {
    using T = typename decltype(tag)::Type;
    return CudaStatus(
        kTarget, cuda::LaunchPermute<T>(stream, batch, cap,
                                        static_cast<const T*>(values.untyped_data()),
                                        values_batch, perm.typed_data(),
                                        static_cast<T*>(out->untyped_data())));
  });
}

}  // namespace
}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparsePermuteCuda, jaxsparse::PermuteCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<xla::ffi::AnyBuffer>()              // values
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Ret<xla::ffi::AnyBuffer>()  // out
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"),
                              {xla::ffi::Traits::kCmdBufferCompatible});
