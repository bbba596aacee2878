// Helpers for the CUDA XLA FFI handlers (host compiler; no kernels): the one
// dtype dispatch, CUDA error conversion and the shape checks every family
// repeats. Error messages start with the FFI target name.
#ifndef JAXSPARSE_COMMON_FFI_CUDA_HELPERS_H_
#define JAXSPARSE_COMMON_FFI_CUDA_HELPERS_H_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "common/ffi_helpers.h"
#include "xla/ffi/api/ffi.h"

namespace jaxsparse {

template <typename T>
struct TypeTag {
  using Type = T;
};

// Calls fn(TypeTag<T>{}) with T the CUDA element type of `dtype`; any other
// dtype is an InvalidArgument error that names it.
template <typename Fn>
ffi::Error DispatchCudaFloat(ffi::DataType dtype, const char* target, Fn&& fn) {
  switch (dtype) {
    case ffi::DataType::F32: return fn(TypeTag<float>{});
    case ffi::DataType::F16: return fn(TypeTag<__half>{});
    case ffi::DataType::BF16: return fn(TypeTag<__nv_bfloat16>{});
    default:
      return InvalidArgument(std::string(target) + ": unsupported dtype " + DataTypeName(dtype) +
                             "; the CUDA kernels take float32, float16 and bfloat16");
  }
}

// The launch error of a launcher as an ffi::Error.
inline ffi::Error CudaStatus(const char* target, cudaError_t err) {
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string("jaxsparse: ") + target + ": CUDA error " +
                              cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

template <typename Buf>
ffi::Error CheckRankOf(const char* target, const Buf& buf, size_t rank, const char* what) {
  return CheckRank(buf, rank, (std::string(target) + ": " + what).c_str());
}

inline ffi::Error NarrowDim(const char* target, const char* what, int64_t value, int* out) {
  return NarrowToInt(value, (std::string(target) + ": " + what).c_str(), out);
}

// `what` (= got) must equal `want`, described by `want_what`.
inline ffi::Error CheckDim(const char* target, const char* what, int64_t got, int64_t want,
                           const char* want_what) {
  if (got == want) return ffi::Error::Success();
  return InvalidArgument(std::string(target) + ": " + what + " is " + std::to_string(got) +
                         ", expected " + std::to_string(want) + " (" + want_what + ")");
}

// A leading batch dim must be 1 (broadcast) or the result's batch.
inline ffi::Error CheckBatch(const char* target, const char* what, int64_t got, int64_t batch) {
  if (got == 1 || got == batch) return ffi::Error::Success();
  return InvalidArgument(std::string(target) + ": " + what + " has batch dim " +
                         std::to_string(got) + ", expected 1 or the result's batch " +
                         std::to_string(batch));
}

inline ffi::Error CheckDtype(const char* target, const char* what, ffi::DataType got,
                             ffi::DataType want) {
  if (got == want) return ffi::Error::Success();
  return InvalidArgument(std::string(target) + ": " + what + " has dtype " + DataTypeName(got) +
                         ", expected " + DataTypeName(want));
}

// row_offsets int32[m + 1] and row_indices int32[m]; sets m. The contents
// live on the device and are not checked here (see csrc/README.md).
inline ffi::Error CheckRows(const char* target, const IndexSegment& row_offsets,
                            const IndexSegment& row_indices, int* m) {
  const int64_t rows_plus_one = row_offsets.dimensions()[0];
  if (rows_plus_one < 1) {
    return InvalidArgument(std::string(target) + ": row_offsets must have m + 1 >= 1 entries");
  }
  JAXSPARSE_RETURN_IF_ERROR(NarrowDim(target, "row_offsets size m + 1", rows_plus_one, m));
  *m -= 1;
  return CheckDim(target, "row_indices size", row_indices.dimensions()[0], *m,
                  "m, from row_offsets");
}

}  // namespace jaxsparse

#endif  // JAXSPARSE_COMMON_FFI_CUDA_HELPERS_H_
