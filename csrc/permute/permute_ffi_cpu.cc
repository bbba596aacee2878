// XLA FFI handler jaxsparse_permute_cpu: decode, validate, dispatch the dtype, call
// the launcher in permute_cpu.h. Operands: values T[Bv, cap], topology i32[L] holding
// perm i32[cap] at the attribute segments (csrc/README.md); result T[B, cap].
#include <cstdint>
#include <string>

#include "common/ffi_cpu_helpers.h"
#include "common/ffi_helpers.h"
#include "permute/permute_cpu.h"
#include "xla/ffi/api/ffi.h"

namespace jaxsparse {
namespace {

ffi::Error PermuteCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer values,
                          ffi::Buffer<ffi::S32> topology, ffi::Result<ffi::AnyBuffer> out,
                          ffi::Span<const int64_t> segments) {
  IndexSegment perm;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, "permute", {"perm"}, {&perm}));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(values, 2, "permute: values"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(*out, 2, "permute: result"));
  const ffi::DataType dtype = out->element_type();
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(values.element_type(), dtype, "permute", "values"));
  int cap = 0;
  JAXSPARSE_RETURN_IF_ERROR(NarrowToInt(perm.dimensions()[0], "permute: cap (perm size)", &cap));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(values.dimensions()[1], cap, "permute: values.shape[1] (cap = perm size)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(out->dimensions()[1], cap, "permute: result.shape[1] (cap = perm size)"));
  const int64_t batch = out->dimensions()[0];
  int64_t values_stride = 0;
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(values.dimensions()[0], batch, cap, "permute: values", &values_stride));
  const int32_t* p = perm.typed_data();
  const int64_t i = cpu::FirstOutOfRange(p, cap, cap);
  if (i >= 0) {
    return InvalidArgument("permute: perm[" + std::to_string(i) + "] = " + std::to_string(p[i]) +
                           " is out of range [0, " + std::to_string(cap) + ")");
  }
  FfiTaskRunner runner(pool);
  JAXSPARSE_CPU_DISPATCH(dtype, "permute", "result", T, {
    cpu::PermuteArgs<T> args;
    args.values = static_cast<const T*>(values.untyped_data());
    args.values_batch_stride = values_stride;
    args.perm = p;
    args.out = static_cast<T*>(out->untyped_data());
    args.batch = batch;
    args.cap = cap;
    if (cpu::PermuteCpu<T>(args, &runner) != 0) {
      return ffi::Error(ffi::ErrorCode::kInternal, "jaxsparse: permute: CPU kernel failed");
    }
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparsePermuteCpu, jaxsparse::PermuteCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::AnyBuffer>()              // values
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Ret<xla::ffi::AnyBuffer>()
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"));
