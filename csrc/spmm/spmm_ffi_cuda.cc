// XLA FFI handler jaxsparse_spmm_cuda: decodes and checks the operands,
// dispatches the dtype and launches the kernel on XLA's stream. The topology
// contents live on the device and are trusted (see csrc/README.md).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/ffi_cuda_helpers.h"
#include "common/ffi_helpers.h"
#include "spmm/spmm_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace jaxsparse {
namespace {

constexpr char kTarget[] = "jaxsparse_spmm_cuda";

// values T[Bv, cap], row_offsets int32[m + 1], column_indices int32[cap],
// row_indices int32[m], b T[Bb, k, n] -> out T[B, m, n].
ffi::Error SpmmCudaImpl(cudaStream_t stream, ffi::AnyBuffer values, ffi::Buffer<ffi::S32> topology,
                        ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
                        ffi::Span<const int64_t> segments) {
  IndexSegment row_offsets, column_indices, row_indices;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, kTarget, {"row_offsets", "column_indices", "row_indices"},
      {&row_offsets, &column_indices, &row_indices}));
  JAXSPARSE_RETURN_IF_ERROR(CheckRankOf(kTarget, values, 2, "values"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRankOf(kTarget, b, 3, "b"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRankOf(kTarget, *out, 3, "the result"));
  int m;
  JAXSPARSE_RETURN_IF_ERROR(CheckRows(kTarget, row_offsets, row_indices, &m));
  const auto v_dims = values.dimensions();
  const auto b_dims = b.dimensions();
  const auto out_dims = out->dimensions();
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(kTarget, "column_indices size", column_indices.dimensions()[0],
                                     v_dims[1], "cap, the size of values' last dim"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(kTarget, "the result's dim 1", out_dims[1], m,
                                     "m, from row_offsets"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(kTarget, "the result's dim 2", out_dims[2], b_dims[2],
                                     "n, the last dim of b"));
  JAXSPARSE_RETURN_IF_ERROR(CheckBatch(kTarget, "values", v_dims[0], out_dims[0]));
  JAXSPARSE_RETURN_IF_ERROR(CheckBatch(kTarget, "b", b_dims[0], out_dims[0]));
  JAXSPARSE_RETURN_IF_ERROR(CheckDtype(kTarget, "b", b.element_type(), values.element_type()));
  JAXSPARSE_RETURN_IF_ERROR(
      CheckDtype(kTarget, "the result", out->element_type(), values.element_type()));

  int batch, values_batch, b_batch, cap, k, n;
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "batch", out_dims[0], &batch));
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "values batch", v_dims[0], &values_batch));
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "b batch", b_dims[0], &b_batch));
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "cap", v_dims[1], &cap));
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "k", b_dims[1], &k));
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "n", b_dims[2], &n));

  return DispatchCudaFloat(values.element_type(), kTarget, [&](auto tag) {
    using T = typename decltype(tag)::Type;
    return CudaStatus(
        kTarget, cuda::LaunchSpmm<T>(stream, batch, m, k, n, cap,
                                     static_cast<const T*>(values.untyped_data()), values_batch,
                                     row_offsets.typed_data(), column_indices.typed_data(),
                                     row_indices.typed_data(),
                                     static_cast<const T*>(b.untyped_data()), b_batch,
                                     static_cast<T*>(out->untyped_data())));
  });
}

}  // namespace
}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseSpmmCuda, jaxsparse::SpmmCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<xla::ffi::AnyBuffer>()          // values
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Arg<xla::ffi::AnyBuffer>()          // b
                                  .Ret<xla::ffi::AnyBuffer>()  // out
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"),
                              {xla::ffi::Traits::kCmdBufferCompatible});
