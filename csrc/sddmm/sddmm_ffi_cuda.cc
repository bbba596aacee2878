// XLA FFI handler jaxsparse_sddmm_cuda: decodes and checks the operands,
// dispatches the dtype and launches the kernel on XLA's stream. The topology
// contents live on the device and are trusted (see csrc/README.md).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/ffi_cuda_helpers.h"
#include "common/ffi_helpers.h"
#include "sddmm/sddmm_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace jaxsparse {
namespace {

constexpr char kTarget[] = "jaxsparse_sddmm_cuda";

// lhs T[Bl, m, d], rhs T[Br, n, d], row_offsets int32[m + 1],
// column_indices int32[cap], row_indices int32[m] -> out T[B, cap].
ffi::Error SddmmCudaImpl(cudaStream_t stream, ffi::AnyBuffer lhs, ffi::AnyBuffer rhs,
                         ffi::Buffer<ffi::S32> topology, ffi::Result<ffi::AnyBuffer> out,
                         ffi::Span<const int64_t> segments) {
  IndexSegment row_offsets, column_indices, row_indices;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, kTarget, {"row_offsets", "column_indices", "row_indices"},
      {&row_offsets, &column_indices, &row_indices}));
  JAXSPARSE_RETURN_IF_ERROR(CheckRankOf(kTarget, lhs, 3, "lhs"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRankOf(kTarget, rhs, 3, "rhs"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRankOf(kTarget, *out, 2, "the result"));
  int m;
  JAXSPARSE_RETURN_IF_ERROR(CheckRows(kTarget, row_offsets, row_indices, &m));
  const auto l_dims = lhs.dimensions();
  const auto r_dims = rhs.dimensions();
  const auto out_dims = out->dimensions();
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(kTarget, "lhs dim 1", l_dims[1], m, "m, from row_offsets"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(kTarget, "rhs dim 2", r_dims[2], l_dims[2],
                                     "d, the last dim of lhs"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(kTarget, "the result's dim 1", out_dims[1],
                                     column_indices.dimensions()[0],
                                     "cap, the size of column_indices"));
  JAXSPARSE_RETURN_IF_ERROR(CheckBatch(kTarget, "lhs", l_dims[0], out_dims[0]));
  JAXSPARSE_RETURN_IF_ERROR(CheckBatch(kTarget, "rhs", r_dims[0], out_dims[0]));
  JAXSPARSE_RETURN_IF_ERROR(CheckDtype(kTarget, "rhs", rhs.element_type(), lhs.element_type()));
  JAXSPARSE_RETURN_IF_ERROR(
      CheckDtype(kTarget, "the result", out->element_type(), lhs.element_type()));

  int batch, lhs_batch, rhs_batch, n, d, cap;
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "batch", out_dims[0], &batch));
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "lhs batch", l_dims[0], &lhs_batch));
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "rhs batch", r_dims[0], &rhs_batch));
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "n", r_dims[1], &n));
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "d", l_dims[2], &d));
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(kTarget, "cap", out_dims[1], &cap));

  return DispatchCudaFloat(lhs.element_type(), kTarget, [&](auto tag) {
    using T = typename decltype(tag)::Type;
    return CudaStatus(
        kTarget, cuda::LaunchSddmm<T>(stream, batch, m, n, d, cap,
                                      static_cast<const T*>(lhs.untyped_data()), lhs_batch,
                                      static_cast<const T*>(rhs.untyped_data()), rhs_batch,
                                      row_offsets.typed_data(), column_indices.typed_data(),
                                      row_indices.typed_data(),
                                      static_cast<T*>(out->untyped_data())));
  });
}

}  // namespace
}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseSddmmCuda, jaxsparse::SddmmCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<xla::ffi::AnyBuffer>()              // lhs
                                  .Arg<xla::ffi::AnyBuffer>()              // rhs
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Ret<xla::ffi::AnyBuffer>()  // out
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"),
                              {xla::ffi::Traits::kCmdBufferCompatible});
