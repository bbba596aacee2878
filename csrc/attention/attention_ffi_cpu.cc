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
// The attribute rows_dim places the rows of q, k, v, dout, out, dq, dk and dv: each is
// [*outer, rows, *inner, cols] with rows at dimension rows_dim (the last but one when
// rows_dim = rank - 2), its batch dims (outer then inner; each 1 or the result's) in
// that order flattened to the B of the other operands; lse, delta, keep and drop are
// [B or 1, ...] as above. rows_dim < rank - 2 reads and writes the attention API's
// [batch, seq, heads, head_dim] in place (no transposes around the call).
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

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

// One dense operand (see the file comment): checks its rank, rows and cols against
// `rows` and `cols` and each batch dim against `batch` (1 allowed unless `result`),
// and fills `offsets` (element offset of each flat batch entry's first row) and the
// row stride. `batch` is empty to take it from this operand (a result).
ffi::Error DecodeRows(ffi::Span<const int64_t> dims, int64_t rows_dim, int64_t rows,
                      int64_t cols, bool result, const std::string& name,
                      std::vector<int64_t>* batch, std::vector<int64_t>* offsets, int64_t* ld) {
  const int64_t rank = static_cast<int64_t>(dims.size());
  if (rank < 3 || rows_dim < 0 || rows_dim > rank - 2) {
    return InvalidArgument(name + " has rank " + std::to_string(rank) +
                           "; expected >= 3 with the rows at dimension rows_dim = " +
                           std::to_string(rows_dim));
  }
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(dims[rows_dim], rows, name + " rows (dimension " +
                                                              std::to_string(rows_dim) + ")"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(dims[rank - 1], cols, name + " last dimension"));
  std::vector<int64_t> bdims, strides;
  int64_t stride = 1;
  std::vector<int64_t> elem_stride(rank);
  for (int64_t i = rank - 1; i >= 0; --i) {
    elem_stride[i] = stride;
    stride *= dims[i];
  }
  for (int64_t i = 0; i < rank - 1; ++i) {
    if (i == rows_dim) continue;
    bdims.push_back(dims[i]);
    strides.push_back(elem_stride[i]);
  }
  if (batch->empty() && result) *batch = bdims;
  if (bdims.size() != batch->size()) {
    return InvalidArgument(name + " has " + std::to_string(bdims.size()) +
                           " batch dims, expected " + std::to_string(batch->size()));
  }
  int64_t total = 1;
  for (size_t i = 0; i < bdims.size(); ++i) {
    if (bdims[i] != (*batch)[i] && (result || bdims[i] != 1)) {
      return InvalidArgument(name + " batch dim " + std::to_string(i) + " is " +
                             std::to_string(bdims[i]) + "; expected " +
                             (result ? "" : "1 or ") + std::to_string((*batch)[i]));
    }
    if (bdims[i] == 1) strides[i] = 0;
    total *= (*batch)[i];
  }
  offsets->assign(static_cast<size_t>(total), 0);
  for (int64_t b = 0; b < total; ++b) {  // row-major over the batch dims
    int64_t rest = b, off = 0;
    for (int64_t i = static_cast<int64_t>(bdims.size()) - 1; i >= 0; --i) {
      off += (rest % (*batch)[i]) * strides[i];
      rest /= (*batch)[i];
    }
    (*offsets)[b] = off;
  }
  *ld = elem_stride[rows_dim];
  return ffi::Error::Success();
}

// How many flat batch entries interleave their rows: the batch dims after the rows
// (the heads of [batch, seq, heads, d]), 1 for none.
int64_t InnerBatch(const std::vector<int64_t>& batch, int64_t rows_dim) {
  int64_t inner = 1;
  for (size_t i = static_cast<size_t>(rows_dim); i < batch.size(); ++i) inner *= batch[i];
  return inner;
}

// The query's rank fits rows_dim (>= 3, rows_dim in [0, rank - 2]) and `others` have
// the query's rank.
ffi::Error CheckRowsRanks(
    const char* op, const ffi::AnyBuffer& q, int64_t rows_dim,
    std::initializer_list<std::pair<const ffi::AnyBuffer*, const char*>> others) {
  const int64_t rank = static_cast<int64_t>(q.dimensions().size());
  if (rank < 3 || rows_dim < 0 || rows_dim > rank - 2) {
    return InvalidArgument(std::string(op) + ": query has rank " + std::to_string(rank) +
                           "; expected >= 3 with rows_dim = " + std::to_string(rows_dim) +
                           " in [0, rank - 2]");
  }
  for (const auto& [x, name] : others) {
    if (x->dimensions().size() != static_cast<size_t>(rank)) {
      return InvalidArgument(std::string(op) + ": " + name + " has rank " +
                             std::to_string(x->dimensions().size()) + ", query " +
                             std::to_string(rank));
    }
  }
  return ffi::Error::Success();
}

ffi::Error AttentionFwdCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k,
                               ffi::AnyBuffer v, ffi::AnyBuffer keep, ffi::AnyBuffer drop,
                               ffi::Buffer<ffi::S32> topology, bool causal, double drop_scale,
                               int64_t rows_dim, ffi::Result<ffi::AnyBuffer> out,
                               ffi::Result<ffi::AnyBuffer> lse,
                               ffi::Span<const int64_t> segments) {
  IndexSegment row_offsets, column_indices, row_indices;
  JAXSPARSE_RETURN_IF_ERROR(TopologySegments(
      topology, segments, "attention_fwd", {"row_offsets", "column_indices", "row_indices"},
      {&row_offsets, &column_indices, &row_indices}));
  const char* op = "attention_fwd";
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(*lse, 2, "attention_fwd: lse"));
  const ffi::DataType dtype = out->element_type();
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(q.element_type(), dtype, op, "query"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(k.element_type(), dtype, op, "key"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(v.element_type(), dtype, op, "value"));
  JAXSPARSE_RETURN_IF_ERROR(CheckAccumDtype(lse->element_type(), dtype, op, "lse"));
  const int64_t rank = static_cast<int64_t>(q.dimensions().size());
  JAXSPARSE_RETURN_IF_ERROR(CheckRowsRanks(op, q, rows_dim, {{&k, "key"}, {&v, "value"}}));
  const int64_t last = rank - 1;
  const int64_t n = k.dimensions()[rows_dim];
  cpu::AttnTopology topo;
  JAXSPARSE_RETURN_IF_ERROR(
      DecodeTopology(row_offsets, column_indices, row_indices, n, op, "", &topo));
  topo.causal = causal;
  const int64_t m = topo.m;
  const int64_t d = q.dimensions()[last];
  const int64_t dv = v.dimensions()[last];
  std::vector<int64_t> batch, q_off, k_off, v_off, out_off;
  int64_t ldq = 0, ldk = 0, ldv = 0, ldo = 0;
  JAXSPARSE_RETURN_IF_ERROR(DecodeRows(out->dimensions(), rows_dim, m, dv, true, "attention_fwd: out", &batch, &out_off, &ldo));
  JAXSPARSE_RETURN_IF_ERROR(DecodeRows(q.dimensions(), rows_dim, m, d, false, "attention_fwd: query", &batch, &q_off, &ldq));
  JAXSPARSE_RETURN_IF_ERROR(DecodeRows(k.dimensions(), rows_dim, n, d, false, "attention_fwd: key", &batch, &k_off, &ldk));
  JAXSPARSE_RETURN_IF_ERROR(DecodeRows(v.dimensions(), rows_dim, n, dv, false, "attention_fwd: value", &batch, &v_off, &ldv));
  const int64_t flat_batch = static_cast<int64_t>(out_off.size());
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(lse->dimensions()[0], flat_batch, "attention_fwd: lse.shape[0] (batch)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(lse->dimensions()[1], m, "attention_fwd: lse.shape[1] (m)"));
  int64_t keep_stride = 0, drop_stride = 0;
  const uint8_t* keep_data = nullptr;
  const uint8_t* drop_data = nullptr;
  const int64_t cap = column_indices.dimensions()[0];
  JAXSPARSE_RETURN_IF_ERROR(DecodeEntryMask(keep, flat_batch, cap, op, "keep", &keep_data, &keep_stride));
  JAXSPARSE_RETURN_IF_ERROR(DecodeEntryMask(drop, flat_batch, cap, op, "drop", &drop_data, &drop_stride));

  FfiTaskRunner runner(pool);
  JAXSPARSE_CPU_DISPATCH(dtype, op, "out", T, {
    cpu::AttnFwdArgs<T> a;
    a.topo = topo;
    a.q = {static_cast<const T*>(q.untyped_data()), q_off.data(), ldq};
    a.k = {static_cast<const T*>(k.untyped_data()), k_off.data(), ldk};
    a.v = {static_cast<const T*>(v.untyped_data()), v_off.data(), ldv};
    a.keep = keep_data;
    a.keep_stride = keep_stride;
    a.drop = drop_data;
    a.drop_stride = drop_stride;
    a.drop_scale = drop_scale;
    a.out = {static_cast<T*>(out->untyped_data()), out_off.data(), ldo};
    a.lse = static_cast<cpu::Accum<T>*>(lse->untyped_data());
    a.batch = flat_batch;
    a.batch_inner = InnerBatch(batch, rows_dim);
    if (const char* e = std::getenv("JAXSPARSE_CPU_ATTN_ORDER"); e && e[0] == '0') a.batch_inner = 1;
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
                               int64_t rows_dim, ffi::Result<ffi::AnyBuffer> dq,
                               ffi::Result<ffi::AnyBuffer> dk,
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
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(lse, 2, "attention_bwd: lse"));
  JAXSPARSE_RETURN_IF_ERROR(CheckRank(delta, 2, "attention_bwd: delta"));
  const ffi::DataType dtype = dq->element_type();
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(q.element_type(), dtype, op, "query"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(k.element_type(), dtype, op, "key"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(v.element_type(), dtype, op, "value"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(dout.element_type(), dtype, op, "dout"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(dk->element_type(), dtype, op, "dk"));
  JAXSPARSE_RETURN_IF_ERROR(CheckSameDtype(dv_out->element_type(), dtype, op, "dv"));
  JAXSPARSE_RETURN_IF_ERROR(CheckAccumDtype(lse.element_type(), dtype, op, "lse"));
  JAXSPARSE_RETURN_IF_ERROR(CheckAccumDtype(delta.element_type(), dtype, op, "delta"));
  const int64_t rank = static_cast<int64_t>(q.dimensions().size());
  JAXSPARSE_RETURN_IF_ERROR(
      CheckRowsRanks(op, q, rows_dim, {{&k, "key"}, {&v, "value"}, {&dout, "dout"}}));
  const int64_t last = rank - 1;
  const int64_t m = q.dimensions()[rows_dim];
  const int64_t n = k.dimensions()[rows_dim];
  cpu::AttnTopology topo, t_topo;
  JAXSPARSE_RETURN_IF_ERROR(
      DecodeTopology(row_offsets, column_indices, row_indices, n, op, "", &topo));
  JAXSPARSE_RETURN_IF_ERROR(DecodeTopology(t_row_offsets, t_column_indices, t_row_indices, m, op,
                                           "transposed ", &t_topo));
  topo.causal = causal;
  t_topo.causal = causal;
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(topo.m, m, "attention_bwd: rows of the topology (query rows)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(t_topo.m, n, "attention_bwd: rows of the transposed topology (key rows)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(t_topo.row_offsets[n], topo.row_offsets[m],
                                     "attention_bwd: nnz of the transposed topology (nnz)"));
  const int64_t d = q.dimensions()[last];
  const int64_t dv = v.dimensions()[last];
  std::vector<int64_t> batch, q_off, k_off, v_off, g_off, dq_off, dk_off, dv_off;
  int64_t ldq = 0, ldk = 0, ldv = 0, ldg = 0, lddq = 0, lddk = 0, lddv = 0;
  JAXSPARSE_RETURN_IF_ERROR(DecodeRows(dq->dimensions(), rows_dim, m, d, true, "attention_bwd: dq", &batch, &dq_off, &lddq));
  JAXSPARSE_RETURN_IF_ERROR(DecodeRows(dk->dimensions(), rows_dim, n, d, true, "attention_bwd: dk", &batch, &dk_off, &lddk));
  JAXSPARSE_RETURN_IF_ERROR(DecodeRows(dv_out->dimensions(), rows_dim, n, dv, true, "attention_bwd: dv", &batch, &dv_off, &lddv));
  JAXSPARSE_RETURN_IF_ERROR(DecodeRows(q.dimensions(), rows_dim, m, d, false, "attention_bwd: query", &batch, &q_off, &ldq));
  JAXSPARSE_RETURN_IF_ERROR(DecodeRows(k.dimensions(), rows_dim, n, d, false, "attention_bwd: key", &batch, &k_off, &ldk));
  JAXSPARSE_RETURN_IF_ERROR(DecodeRows(v.dimensions(), rows_dim, n, dv, false, "attention_bwd: value", &batch, &v_off, &ldv));
  JAXSPARSE_RETURN_IF_ERROR(DecodeRows(dout.dimensions(), rows_dim, m, dv, false, "attention_bwd: dout", &batch, &g_off, &ldg));
  const int64_t flat_batch = static_cast<int64_t>(dq_off.size());
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(lse.dimensions()[1], m, "attention_bwd: lse.shape[1] (m)"));
  JAXSPARSE_RETURN_IF_ERROR(CheckDim(delta.dimensions()[1], m, "attention_bwd: delta.shape[1] (m)"));
  int64_t ls = 0, ds = 0, keep_stride = 0, drop_stride = 0;
  const uint8_t* keep_data = nullptr;
  const uint8_t* drop_data = nullptr;
  const int64_t cap = column_indices.dimensions()[0];
  JAXSPARSE_RETURN_IF_ERROR(DecodeEntryMask(keep, flat_batch, cap, op, "keep", &keep_data, &keep_stride));
  JAXSPARSE_RETURN_IF_ERROR(DecodeEntryMask(drop, flat_batch, cap, op, "drop", &drop_data, &drop_stride));
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
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(lse.dimensions()[0], flat_batch, m, "attention_bwd: lse", &ls));
  JAXSPARSE_RETURN_IF_ERROR(BatchStride(delta.dimensions()[0], flat_batch, m, "attention_bwd: delta", &ds));

  FfiTaskRunner runner(pool);
  JAXSPARSE_CPU_DISPATCH(dtype, op, "dq", T, {
    using A = cpu::Accum<T>;
    cpu::AttnBwdArgs<T> a;
    a.topo = topo;
    a.t_topo = t_topo;
    a.q = {static_cast<const T*>(q.untyped_data()), q_off.data(), ldq};
    a.k = {static_cast<const T*>(k.untyped_data()), k_off.data(), ldk};
    a.v = {static_cast<const T*>(v.untyped_data()), v_off.data(), ldv};
    a.lse = static_cast<const A*>(lse.untyped_data());
    a.delta = static_cast<const A*>(delta.untyped_data());
    a.dout = {static_cast<const T*>(dout.untyped_data()), g_off.data(), ldg};
    a.lse_stride = ls;
    a.delta_stride = ds;
    a.keep = keep_data;
    a.keep_stride = keep_stride;
    a.drop = drop_data;
    a.drop_stride = drop_stride;
    a.drop_scale = drop_scale;
    a.t_perm = t_perm.typed_data();
    a.dq = {static_cast<T*>(dq->untyped_data()), dq_off.data(), lddq};
    a.dk = {static_cast<T*>(dk->untyped_data()), dk_off.data(), lddk};
    a.dv_out = {static_cast<T*>(dv_out->untyped_data()), dv_off.data(), lddv};
    a.batch = flat_batch;
    a.batch_inner = InnerBatch(batch, rows_dim);
    if (const char* e = std::getenv("JAXSPARSE_CPU_ATTN_ORDER"); e && e[0] == '0') a.batch_inner = 1;
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
                                  .Attr<int64_t>("rows_dim")
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
                                  .Attr<int64_t>("rows_dim")
                                  .Ret<xla::ffi::AnyBuffer>()              // dq
                                  .Ret<xla::ffi::AnyBuffer>()              // dk
                                  .Ret<xla::ffi::AnyBuffer>()  // dv
                                  .Attr<xla::ffi::Span<const int64_t>>("segments"));
