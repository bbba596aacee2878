// XLA FFI handlers jaxsparse_attention_fwd_cpu and jaxsparse_attention_bwd_cpu:
// decode, validate, dispatch the dtype, call the launchers in attention_cpu.h.
//   fwd: q T[Bq, m, d], k T[Bk, n, d], v T[Bv, n, dv], keep u8[Bk, cap] (or [1, 0]:
//        no mask), drop u8[Bd, cap] (or [1, 0]: no dropout), topology i32[L]
//        (row_offsets i32[m+1], column_indices i32[cap], row_indices i32[m] at
//        the attribute segments, csrc/README.md); attrs causal (bool), drop_scale (f64)
//        -> out T[B, m, dv], lse A[B, m]
//   bwd: q, k, v, keep, drop, lse A[Bl, m], delta A[Bd, m], dout T[Bg, m, dv], the
//        topology operand: its 3 arrays, its transpose (t_row_offsets i32[n+1],
//        t_column_indices i32[cap], t_row_indices i32[n]) and t_perm i32[cap]
//        (transposed position -> stored position); attrs causal, drop_scale
//        -> dq T[B, m, d], dk T[B, n, d], dv T[B, n, dv]
// A is float32 (float64 for float64 operands). Every batch dim is 1 or B.
#include <cstdint>
#include <string>

#include "attention/attention_cpu.h"
#include "common/ffi_cpu_helpers.h"
#include "common/ffi_helpers.h"
#include "xla/ffi/api/ffi.h"

namespace jaxsparse {
namespace {

ffi::DataType AccumType(ffi::DataType t) {
  return t == ffi::DataType::F64 ? ffi::DataType::F64 : ffi::DataType::F32;
}

ffi::Error CheckAccumDtype(ffi::DataType got, ffi::DataType value, const char* op,
                           const char* what) {
  if (got != AccumType(value)) {
    return InvalidArgument(std::string(op) + ": " + what + " has dtype " + DataTypeName(got) +
                           ", expected " + DataTypeName(AccumType(value)) + " for " +
                           DataTypeName(value) + " operands");
  }
  return ffi::Error::Success();
}

// Checks one topology (rows x cols) and fills `t`.
ffi::Error DecodeTopology(IndexSegment row_offsets, IndexSegment column_indices,
                          IndexSegment row_indices, int64_t ncols, const char* op,
                          const char* which, cpu::AttnTopology* t) {
  const std::string pre = std::string(op) + ": " + which;
  const int64_t m1 = row_offsets.dimensions()[0];
  if (m1 < 1) return InvalidArgument(pre + "row_offsets must have rows + 1 >= 1 entries, got 0");
  int m = 0, cap = 0;
  JAXSPARSE_RETURN_IF_ERROR(NarrowToInt(m1 - 1, (pre + "rows (row_offsets size - 1)").c_str(), &m));
  JAXSPARSE_RETURN_IF_ERROR(
      NarrowToInt(column_indices.dimensions()[0], (pre + "cap (column_indices size)").c_str(), &cap));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(row_indices.dimensions()[0], m,
                                     pre + "row_indices size (must equal row_offsets size - 1)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRowOffsets(row_offsets.typed_data(), m, cap, pre.c_str()));
  JAXSPARSE_RETURN_IF_ERROR(CheckColumnIndices(column_indices.typed_data(),
                                               row_offsets.typed_data()[m], ncols, pre.c_str(),
                                               "the number of columns"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRowIndices(row_indices.typed_data(), m, pre.c_str()));
  t->row_offsets = row_offsets.typed_data();
  t->column_indices = column_indices.typed_data();
  t->row_indices = row_indices.typed_data();
  t->m = m;
  t->n = ncols;
  return ffi::Error::Success();
}

// An optional uint8 array over the stored entries (`keep`, `drop`): [Bm, cap] with
// Bm 1 or batch, or [1, 0] for none (then *data is null).
ffi::Error DecodeEntryMask(ffi::AnyBuffer mask, int64_t batch, int64_t cap, const char* op,
                           const char* name, const uint8_t** data, int64_t* stride) {
  const std::string pre = std::string(op) + ": " + name;
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(mask, 2, pre.c_str()));
  if (mask.element_type() != ffi::DataType::U8) {
    return InvalidArgument(pre + " must be uint8, got " + DataTypeName(mask.element_type()));
  }
  if (mask.dimensions()[1] == 0 && mask.dimensions()[0] == 1) {
    *data = nullptr;
    *stride = 0;
    return ffi::Error::Success();
  }
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(mask.dimensions()[1], cap, pre + ".shape[1] (cap)"));
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(mask.dimensions()[0], batch, cap, pre.c_str(), stride));
  *data = static_cast<const uint8_t*>(mask.untyped_data());
  return ffi::Error::Success();
}

ffi::Error AttentionFwdCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k,
                               ffi::AnyBuffer v, ffi::AnyBuffer keep, ffi::AnyBuffer drop,
                               ffi::Buffer<ffi::S32> topology, bool causal, double drop_scale,
                               ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> lse,
                               ffi::Span<const int64_t> segments) {
  IndexSegment row_offsets, column_indices, row_indices;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, "attention_fwd", {"row_offsets", "column_indices", "row_indices"},
      {&row_offsets, &column_indices, &row_indices}));
  const char* op = "attention_fwd";
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(q, 3, "attention_fwd: query"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(k, 3, "attention_fwd: key"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(v, 3, "attention_fwd: value"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(*out, 3, "attention_fwd: out"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(*lse, 2, "attention_fwd: lse"));
  const ffi::DataType dtype = out->element_type();
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(q.element_type(), dtype, op, "query"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(k.element_type(), dtype, op, "key"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(v.element_type(), dtype, op, "value"));
  JAXSPARSE_RETURN_IF_ERROR(CheckAccumDtype(lse->element_type(), dtype, op, "lse"));

  const int64_t n = k.dimensions()[1];
  cpu::AttnTopology topo;
  JAXSPARSE_RETURN_IF_ERROR(
      DecodeTopology(row_offsets, column_indices, row_indices, n, op, "", &topo));
  topo.causal = causal;
  const int64_t m = topo.m;
  const int64_t batch = out->dimensions()[0];
  const int64_t d = q.dimensions()[2];
  const int64_t dv = v.dimensions()[2];
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(q.dimensions()[1], m, "attention_fwd: query.shape[1] (m)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(k.dimensions()[2], d, "attention_fwd: key.shape[2] (d = query.shape[2])"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(v.dimensions()[1], n, "attention_fwd: value.shape[1] (n = key.shape[1])"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(out->dimensions()[1], m, "attention_fwd: out.shape[1] (m)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(out->dimensions()[2], dv, "attention_fwd: out.shape[2] (dv)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(lse->dimensions()[0], batch, "attention_fwd: lse.shape[0] (batch)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(lse->dimensions()[1], m, "attention_fwd: lse.shape[1] (m)"));
  int64_t qs = 0, ks = 0, vs = 0, keep_stride = 0, drop_stride = 0;
  const uint8_t* keep_data = nullptr;
  const uint8_t* drop_data = nullptr;
  const int64_t cap = column_indices.dimensions()[0];
  JAXSPARSE_RETURN_IF_ERROR(DecodeEntryMask(keep, batch, cap, op, "keep", &keep_data, &keep_stride));
  JAXSPARSE_RETURN_IF_ERROR(DecodeEntryMask(drop, batch, cap, op, "drop", &drop_data, &drop_stride));
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(q.dimensions()[0], batch, m * d, "attention_fwd: query", &qs));
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(k.dimensions()[0], batch, n * d, "attention_fwd: key", &ks));
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(v.dimensions()[0], batch, n * dv, "attention_fwd: value", &vs));

  FfiTaskRunner runner(pool);
  JAXSPARSE_CPU_DISPATCH(dtype, op, "out", T, {
    cpu::AttnFwdArgs<T> a;
    a.topo = topo;
    a.q = static_cast<const T*>(q.untyped_data());
    a.k = static_cast<const T*>(k.untyped_data());
    a.v = static_cast<const T*>(v.untyped_data());
    a.q_stride = qs;
    a.k_stride = ks;
    a.v_stride = vs;
    a.keep = keep_data;
    a.keep_stride = keep_stride;
    a.drop = drop_data;
    a.drop_stride = drop_stride;
    a.drop_scale = drop_scale;
    a.out = static_cast<T*>(out->untyped_data());
    a.lse = static_cast<cpu::Accum<T>*>(lse->untyped_data());
    a.batch = batch;
    a.d = d;
    a.dv = dv;
    if (cpu::AttentionFwdCpu<T>(a, &runner) != 0) {
      return ffi::Error(ffi::ErrorCode::kInternal, "jaxsparse: attention_fwd: CPU kernel failed");
    }
  });
  return ffi::Error::Success();
}

ffi::Error AttentionBwdCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k,
                               ffi::AnyBuffer v, ffi::AnyBuffer keep, ffi::AnyBuffer drop,
                               ffi::AnyBuffer lse, ffi::AnyBuffer delta, ffi::AnyBuffer dout,
                               ffi::Buffer<ffi::S32> topology, bool causal, double drop_scale,
                               ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                               ffi::Result<ffi::AnyBuffer> dv_out,
                               ffi::Span<const int64_t> segments) {
  IndexSegment row_offsets, column_indices, row_indices, t_row_offsets, t_column_indices,
      t_row_indices, t_perm;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, "attention_bwd",
      {"row_offsets", "column_indices", "row_indices", "t_row_offsets", "t_column_indices",
       "t_row_indices", "t_perm"},
      {&row_offsets, &column_indices, &row_indices, &t_row_offsets, &t_column_indices,
       &t_row_indices, &t_perm}));
  const char* op = "attention_bwd";
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(q, 3, "attention_bwd: query"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(k, 3, "attention_bwd: key"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(v, 3, "attention_bwd: value"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(lse, 2, "attention_bwd: lse"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(delta, 2, "attention_bwd: delta"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(dout, 3, "attention_bwd: dout"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(*dq, 3, "attention_bwd: dq"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(*dk, 3, "attention_bwd: dk"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(*dv_out, 3, "attention_bwd: dv"));
  const ffi::DataType dtype = dq->element_type();
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(q.element_type(), dtype, op, "query"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(k.element_type(), dtype, op, "key"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(v.element_type(), dtype, op, "value"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(dout.element_type(), dtype, op, "dout"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(dk->element_type(), dtype, op, "dk"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(dv_out->element_type(), dtype, op, "dv"));
  JAXSPARSE_RETURN_IF_ERROR(CheckAccumDtype(lse.element_type(), dtype, op, "lse"));
  JAXSPARSE_RETURN_IF_ERROR(CheckAccumDtype(delta.element_type(), dtype, op, "delta"));

  const int64_t m = q.dimensions()[1];
  const int64_t n = k.dimensions()[1];
  cpu::AttnTopology topo, t_topo;
  JAXSPARSE_RETURN_IF_ERROR(
      DecodeTopology(row_offsets, column_indices, row_indices, n, op, "", &topo));
  JAXSPARSE_RETURN_IF_ERROR(DecodeTopology(t_row_offsets, t_column_indices, t_row_indices, m, op,
                                           "transposed ", &t_topo));
  topo.causal = causal;
  t_topo.causal = causal;
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(topo.m, m, "attention_bwd: rows of the topology (query.shape[1])"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(t_topo.m, n, "attention_bwd: rows of the transposed topology (key.shape[1])"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(t_topo.row_offsets[n], topo.row_offsets[m],
                                     "attention_bwd: nnz of the transposed topology (nnz)"));
  const int64_t batch = dq->dimensions()[0];
  const int64_t d = q.dimensions()[2];
  const int64_t dv = v.dimensions()[2];
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(k.dimensions()[2], d, "attention_bwd: key.shape[2] (d)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(v.dimensions()[1], n, "attention_bwd: value.shape[1] (n)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(lse.dimensions()[1], m, "attention_bwd: lse.shape[1] (m)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(delta.dimensions()[1], m, "attention_bwd: delta.shape[1] (m)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(dout.dimensions()[1], m, "attention_bwd: dout.shape[1] (m)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(dout.dimensions()[2], dv, "attention_bwd: dout.shape[2] (dv)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(dq->dimensions()[1], m, "attention_bwd: dq.shape[1] (m)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(dq->dimensions()[2], d, "attention_bwd: dq.shape[2] (d)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(dk->dimensions()[0], batch, "attention_bwd: dk.shape[0] (batch)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(dk->dimensions()[1], n, "attention_bwd: dk.shape[1] (n)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(dk->dimensions()[2], d, "attention_bwd: dk.shape[2] (d)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(dv_out->dimensions()[0], batch, "attention_bwd: dv.shape[0] (batch)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(dv_out->dimensions()[1], n, "attention_bwd: dv.shape[1] (n)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(dv_out->dimensions()[2], dv, "attention_bwd: dv.shape[2] (dv)"));
  int64_t qs = 0, ks = 0, vs = 0, ls = 0, ds = 0, gs = 0, keep_stride = 0, drop_stride = 0;
  const uint8_t* keep_data = nullptr;
  const uint8_t* drop_data = nullptr;
  const int64_t cap = column_indices.dimensions()[0];
  JAXSPARSE_RETURN_IF_ERROR(DecodeEntryMask(keep, batch, cap, op, "keep", &keep_data, &keep_stride));
  JAXSPARSE_RETURN_IF_ERROR(DecodeEntryMask(drop, batch, cap, op, "drop", &drop_data, &drop_stride));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(t_perm.dimensions()[0], cap, "attention_bwd: t_perm size (cap)"));
  if (keep_data != nullptr || drop_data != nullptr) {  // read through t_perm by pass 2
    const int32_t* perm = t_perm.typed_data();
    const int64_t e = cpu::FirstOutOfRange(perm, t_topo.row_offsets[n], cap);
    if (e >= 0) {
      return InvalidArgument("attention_bwd: t_perm[" + std::to_string(e) + "] = " +
                             std::to_string(perm[e]) + " is out of range [0, " +
                             std::to_string(cap) + ")");
    }
  }
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(q.dimensions()[0], batch, m * d, "attention_bwd: query", &qs));
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(k.dimensions()[0], batch, n * d, "attention_bwd: key", &ks));
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(v.dimensions()[0], batch, n * dv, "attention_bwd: value", &vs));
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(lse.dimensions()[0], batch, m, "attention_bwd: lse", &ls));
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(delta.dimensions()[0], batch, m, "attention_bwd: delta", &ds));
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(dout.dimensions()[0], batch, m * dv, "attention_bwd: dout", &gs));

  FfiTaskRunner runner(pool);
  JAXSPARSE_CPU_DISPATCH(dtype, op, "dq", T, {
    using A = cpu::Accum<T>;
    cpu::AttnBwdArgs<T> a;
    a.topo = topo;
    a.t_topo = t_topo;
    a.q = static_cast<const T*>(q.untyped_data());
    a.k = static_cast<const T*>(k.untyped_data());
    a.v = static_cast<const T*>(v.untyped_data());
    a.lse = static_cast<const A*>(lse.untyped_data());
    a.delta = static_cast<const A*>(delta.untyped_data());
    a.dout = static_cast<const T*>(dout.untyped_data());
    a.q_stride = qs;
    a.k_stride = ks;
    a.v_stride = vs;
    a.lse_stride = ls;
    a.delta_stride = ds;
    a.dout_stride = gs;
    a.keep = keep_data;
    a.keep_stride = keep_stride;
    a.drop = drop_data;
    a.drop_stride = drop_stride;
    a.drop_scale = drop_scale;
    a.t_perm = t_perm.typed_data();
    a.dq = static_cast<T*>(dq->untyped_data());
    a.dk = static_cast<T*>(dk->untyped_data());
    a.dv_out = static_cast<T*>(dv_out->untyped_data());
    a.batch = batch;
    a.d = d;
    a.dv = dv;
    if (cpu::AttentionBwdCpu<T>(a, &runner) != 0) {
      return ffi::Error(ffi::ErrorCode::kInternal, "jaxsparse: attention_bwd: CPU kernel failed");
    }
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseAttentionFwdCpu, jaxsparse::AttentionFwdCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::AnyBuffer>()              // query
                                  .Arg<xla::ffi::AnyBuffer>()              // key
                                  .Arg<xla::ffi::AnyBuffer>()              // value
                                  .Arg<xla::ffi::AnyBuffer>()              // keep
                                  .Arg<xla::ffi::AnyBuffer>()              // drop
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Attr<bool>("causal")
                                  .Attr<double>("drop_scale")
                                  .Ret<xla::ffi::AnyBuffer>()              // out
                                  .Ret<xla::ffi::AnyBuffer>()  // lse
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseAttentionBwdCpu, jaxsparse::AttentionBwdCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::AnyBuffer>()              // query
                                  .Arg<xla::ffi::AnyBuffer>()              // key
                                  .Arg<xla::ffi::AnyBuffer>()              // value
                                  .Arg<xla::ffi::AnyBuffer>()              // keep
                                  .Arg<xla::ffi::AnyBuffer>()              // drop
                                  .Arg<xla::ffi::AnyBuffer>()              // lse
                                  .Arg<xla::ffi::AnyBuffer>()              // delta
                                  .Arg<xla::ffi::AnyBuffer>()              // dout
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // topology (packed)
                                  .Attr<bool>("causal")
                                  .Attr<double>("drop_scale")
                                  .Ret<xla::ffi::AnyBuffer>()              // dq
                                  .Ret<xla::ffi::AnyBuffer>()              // dk
                                  .Ret<xla::ffi::AnyBuffer>()  // dv
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"));
