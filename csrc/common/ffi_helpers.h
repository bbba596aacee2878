// Helpers shared by the XLA FFI handlers (CPU and CUDA): size narrowing with
// overflow checks, shape checks and the dtype dispatch macro. No kernels here.
#ifndef JAXSPARSE_COMMON_FFI_HELPERS_H_
#define JAXSPARSE_COMMON_FFI_HELPERS_H_

#include <array>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace jaxsparse {

namespace ffi = xla::ffi;

inline ffi::Error InvalidArgument(const std::string& msg) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jaxsparse: " + msg);
}

// Narrows an int64 size to int32, failing with a message naming `what`.
inline ffi::Error NarrowToInt(int64_t value, const char* what, int* out) {
  if (value < 0 || value > std::numeric_limits<int>::max()) {
    return InvalidArgument(std::string(what) + " = " + std::to_string(value) +
                           " does not fit in int32");
  }
  *out = static_cast<int>(value);
  return ffi::Error::Success();
}

inline const char* DataTypeName(ffi::DataType dtype) {
  switch (dtype) {
    case ffi::DataType::F32: return "float32";
    case ffi::DataType::F64: return "float64";
    case ffi::DataType::F16: return "float16";
    case ffi::DataType::BF16: return "bfloat16";
    case ffi::DataType::S32: return "int32";
    case ffi::DataType::S64: return "int64";
    default: return "an unsupported dtype";
  }
}

// Rank of a buffer and its dims as int64.
template <typename Buf>
inline ffi::Error CheckRank(const Buf& buf, size_t rank, const char* what) {
  auto dims = buf.dimensions();
  if (dims.size() != rank) {
    return InvalidArgument(std::string(what) + " must have rank " + std::to_string(rank) +
                           ", got rank " + std::to_string(dims.size()));
  }
  return ffi::Error::Success();
}

// One int32 array inside the packed topology operand (jaxsparse/_src/csr.py:
// Topology.data), with the two calls of ffi::Buffer<S32> the handlers use.
class IndexSegment {
 public:
  IndexSegment() = default;
  IndexSegment(const int32_t* data, int64_t size) : data_(data), dims_{size} {}
  std::array<int64_t, 1> dimensions() const { return dims_; }
  const int32_t* typed_data() const { return data_; }

 private:
  const int32_t* data_ = nullptr;
  std::array<int64_t, 1> dims_{0};
};

// Decodes the arrays a handler reads from the packed topology operand: the
// attribute `segments` holds an (offset, size) pair per array, in the order of
// `out`. Fails, naming `op` and `names`, on a wrong count or a segment that does
// not lie inside the operand. Reads no contents (the operand may be on a GPU).
inline ffi::Error TopologySegments(const ffi::Buffer<ffi::S32>& topology,
                                   ffi::Span<const int64_t> segments, const char* op,
                                   std::initializer_list<const char*> names,
                                   std::initializer_list<IndexSegment*> out) {
  if (topology.dimensions().size() != 1) {
    return InvalidArgument(std::string(op) + ": the topology operand must have rank 1, got rank " +
                           std::to_string(topology.dimensions().size()));
  }
  if (segments.size() != 2 * out.size()) {
    return InvalidArgument(std::string(op) + ": the segments attribute has " +
                           std::to_string(segments.size()) + " entries, expected " +
                           std::to_string(2 * out.size()) + " (an offset and a size per array)");
  }
  const int64_t total = topology.dimensions()[0];
  const int32_t* base = topology.typed_data();
  auto name = names.begin();
  size_t i = 0;
  for (IndexSegment* seg : out) {
    const int64_t offset = segments[2 * i];
    const int64_t size = segments[2 * i + 1];
    if (offset < 0 || size < 0 || offset > total || size > total - offset) {
      return InvalidArgument(std::string(op) + ": " + *name + " = topology[" +
                             std::to_string(offset) + " : +" + std::to_string(size) +
                             "] does not lie inside the topology operand of " +
                             std::to_string(total) + " entries");
    }
    *seg = IndexSegment(base + offset, size);
    ++i;
    ++name;
  }
  return ffi::Error::Success();
}

}  // namespace jaxsparse

// Evaluates `expr` (an ffi::Error); returns it from the enclosing function on failure.
#define JAXSPARSE_RETURN_IF_ERROR(expr)          \
  do {                                           \
    ::xla::ffi::Error _js_err = (expr);          \
    if (_js_err.failure()) return _js_err;       \
  } while (0)

#endif  // JAXSPARSE_COMMON_FFI_HELPERS_H_
