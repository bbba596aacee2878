"""Sparse dot-product attention: attention restricted to a sparsity pattern.

`sparse_dot_product_attention(query, key, value, topology)` computes, for each
batch element and head,

    out[i] = sum_j softmax_j(scale * q_i . k_j + bias_ij) v_j

where `j` runs only over the stored entries of row `i` of `topology` (a `CSR` or
`Topology` of shape `[q_len, kv_len]` shared by every batch element and head).
It is the same function as `jax.nn.dot_product_attention(..., mask=M)` with `M`
the dense mask of the topology, except that a query row with no stored entries
gives zeros (the dense version averages every value there).

Two implementations, both called once for all batch elements and heads (heads
are moved next to the batch dims):

- "fused" (the default when there is no bias or returned weights): one
  primitive computes the output and the per-row log-sum-exp; its gradient
  recomputes the logits instead of storing the probabilities (flash-attention
  style), so `grad` keeps O(q_len x head_dim) float residuals and never an
  nnz-sized float array (a mask and the dropout pattern are read at the stored
  entries as uint8 arrays). C++ kernels on the CPU; elsewhere it runs as the
  composition below inside one primitive.
- "unfused": three primitives, `sddmm` (logits at the stored entries) ->
  `sparse_softmax` -> `spmm`, with the sparse values `[*batch, heads, nnz]`.
  Memory is proportional to `nnz`, never to `q_len x kv_len`.

Both are differentiable to any order (forward and reverse mode) and work under
`jit`, `vmap` and sharding.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse._src.csr import CSR, Topology, as_topology, check_value_dtype, row_ids
from jaxsparse._src.fused_attention import fused_attention
from jaxsparse._src.sddmm import sddmm
from jaxsparse._src.softmax import sparse_softmax
from jaxsparse._src.spmm import spmm

__all__ = ["sparse_dot_product_attention"]


def _gather_at_entries(x, topo: Topology, what: str, fn: str):
  """The entries of a dense `[..., q, kv]` array (size-1 dims broadcast) at the topology.

  Returns `[..., nnz]`; padding entries read entry (0, 0) (they are ignored).
  Never materializes `[q, kv]` beyond what `x` already is.
  """
  m, n = topo.shape
  if x.ndim < 2 or x.shape[-2] not in (1, m) or x.shape[-1] not in (1, n):
    raise ValueError(
        f"jaxsparse.{fn}: {what} must be broadcastable to [..., q_len={m}, kv_len={n}], "
        f"got shape {x.shape}")
  rows = jnp.minimum(row_ids(topo), max(m - 1, 0))
  cols = topo.column_indices
  if x.shape[-2] == 1:
    rows = jnp.zeros_like(rows)
  if x.shape[-1] == 1:
    cols = jnp.zeros_like(cols)
  return x[..., rows, cols]


def _bias_values(bias, topo: Topology, fn: str):
  """`bias` as per-entry values `[..., nnz]` (see sparse_dot_product_attention)."""
  if isinstance(bias, CSR):
    if bias.shape != topo.shape or bias.nnz != topo.cap:
      raise ValueError(
          f"jaxsparse.{fn}: a CSR bias must have the topology's shape {topo.shape} and "
          f"nnz {topo.cap}, got shape {bias.shape} and nnz {bias.nnz}")
    return bias.values
  bias = jnp.asarray(bias)
  m, n = topo.shape
  if bias.ndim >= 2 and bias.shape[-2] in (1, m) and bias.shape[-1] in (1, n):
    return _gather_at_entries(bias, topo, "bias", fn)
  if bias.ndim >= 1 and bias.shape[-1] == topo.cap:
    return bias
  raise ValueError(
      f"jaxsparse.{fn}: bias must be dense [..., q_len={m}, kv_len={n}] (broadcastable) or "
      f"per-entry values [..., nnz={topo.cap}], got shape {bias.shape}")


def _check_dropout(dropout_rate, dropout_rng, fn: str) -> float:
  """The keep probability; ValueError for a bad rate or a missing key."""
  if not 0.0 < dropout_rate < 1.0:
    raise ValueError(f"jaxsparse.{fn}: dropout_rate must be in [0, 1), got {dropout_rate}")
  if dropout_rng is None:
    raise ValueError(f"jaxsparse.{fn}: dropout_rate > 0 and deterministic=False need a "
                     "dropout_rng")
  return 1.0 - dropout_rate


def _check_qkv(query, key, value, topo: Topology, fn: str):
  for x, what, layout in ((query, "query", "[batch..., q_len, heads, head_dim]"),
                          (key, "key", "[batch..., kv_len, kv_heads, head_dim]"),
                          (value, "value", "[batch..., kv_len, kv_heads, v_head_dim]")):
    if x.ndim < 3:
      raise ValueError(f"jaxsparse.{fn}: {what} must be {layout} (rank >= 3), got shape "
                       f"{x.shape}")
  m, n = topo.shape
  if query.shape[-3] != m:
    raise ValueError(f"jaxsparse.{fn}: query has q_len {query.shape[-3]} (shape "
                     f"{query.shape}) but the topology is {topo.shape}: q_len must be {m}")
  if key.shape[-3] != n:
    raise ValueError(f"jaxsparse.{fn}: key has kv_len {key.shape[-3]} (shape {key.shape}) "
                     f"but the topology is {topo.shape}: kv_len must be {n}")
  if value.shape[-3] != n:
    raise ValueError(f"jaxsparse.{fn}: value has kv_len {value.shape[-3]} (shape "
                     f"{value.shape}) but the topology is {topo.shape}: kv_len must be {n}")
  if query.shape[-1] != key.shape[-1]:
    raise ValueError(f"jaxsparse.{fn}: query and key head_dim differ: query {query.shape}, "
                     f"key {key.shape}")
  if key.shape[-2] != value.shape[-2]:
    raise ValueError(f"jaxsparse.{fn}: key and value must have the same number of heads: "
                     f"key {key.shape}, value {value.shape}")
  if query.shape[-2] % key.shape[-2] != 0:
    raise ValueError(f"jaxsparse.{fn}: query heads ({query.shape[-2]}) must be a multiple of "
                     f"key/value heads ({key.shape[-2]}) (grouped-query attention)")
  try:
    np.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3])
  except ValueError:
    raise ValueError(f"jaxsparse.{fn}: batch dims of query {query.shape}, key {key.shape} "
                     f"and value {value.shape} do not broadcast") from None


def sparse_dot_product_attention(
    query,
    key,
    value,
    topology,
    *,
    bias=None,
    mask=None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng=None,
    deterministic: bool = False,
    broadcast_dropout: bool = True,
    dtype: Any = None,
    return_weights: bool = False,
    implementation: str | None = None,
):
  """Multi-head dot-product attention restricted to a sparse pattern.

  Args:
    query: `[batch..., q_len, heads, head_dim]` (any number of batch dims,
      including none: `[q_len, heads, head_dim]`).
    key: `[batch..., kv_len, kv_heads, head_dim]`. `heads` must be a multiple
      of `kv_heads` (grouped-query attention: query head `h` uses key/value
      head `h // (heads // kv_heads)`, as in Flax).
    value: `[batch..., kv_len, kv_heads, v_head_dim]`. The batch dims of
      query, key and value broadcast.
    topology: a `jaxsparse.CSR` (its values are ignored) or `Topology` of
      shape `[q_len, kv_len]`: query `i` attends key `j` iff `(i, j)` is stored.
      Shared by every batch element and head. Build one with
      `jaxsparse.patterns`.
    bias: optional additive bias on the logits, one of
      - a dense array broadcastable to `[batch..., heads, q_len, kv_len]`: only
        its entries at the topology are read (size-1 `q_len`/`kv_len` dims are
        indexed, not materialized);
      - a per-entry values array `[..., nnz]` broadcastable to
        `[batch..., heads, nnz]`, in the topology's storage order (row-major,
        like `CSR.values`);
      - a `CSR` with the topology's structure (its values are used).
      An array whose last two dims broadcast to `(q_len, kv_len)` is read as
      dense; when that is ambiguous (e.g. `nnz == kv_len`) pass a `CSR` to
      force the per-entry reading.
    mask: optional boolean array broadcastable to
      `[batch..., heads, q_len, kv_len]` (read at the topology's entries only).
      An entry is attended iff it is stored in `topology` AND `mask` is True
      there. A row left with no attended entry gives zeros.
    is_causal: also drop the stored entries with `j > i` (as `is_causal` in
      `jax.nn.dot_product_attention`); `jaxsparse.patterns.causal` builds a
      causal topology directly, which is cheaper.
    scale: logits are `scale * q . k`; default `1 / sqrt(head_dim)`. The
      query is scaled before the product (as Flax does).
    dropout_rate: dropout on the attention probabilities (the sparse values):
      each kept entry is divided by `1 - dropout_rate`, as Flax does. Applied
      only when `dropout_rate > 0` and not `deterministic`; then `dropout_rng`
      is required.
    dropout_rng: a PRNG key for dropout.
    deterministic: if True, no dropout.
    broadcast_dropout: if True (default, as Flax) one dropout pattern (`[nnz]`)
      is shared by every batch element and head; else each draws its own.
      The pattern is drawn over the stored entries, so it is not the same
      random draw as Flax's dense `[q_len, kv_len]` one.
    dtype: the computation dtype; default the promoted dtype of query, key and
      value (float32, float64, float16 or bfloat16; half types accumulate in
      float32 inside the kernels).
    return_weights: also return the attention probabilities as a `CSR` with
      values `[batch..., heads, nnz]` (before dropout).
    implementation: None (default: "fused" unless `bias` or `return_weights`
      is used, then "unfused"), "fused" (never stores the probabilities;
      backward recomputes them; a `mask` and the dropout pattern become one
      byte per stored entry, the same random draw as "unfused"; ValueError
      with `bias` or `return_weights`) or
      "unfused" (sddmm -> sparse_softmax -> spmm; stores nnz-sized logits and
      probabilities for the backward pass). Both give the same values within
      rounding.

  Returns:
    `[batch..., q_len, heads, v_head_dim]` in the computation dtype (and the
    weights `CSR` when `return_weights`). A query row with no stored (or
    unmasked) key gives zeros, with finite gradients.

  Raises:
    ValueError naming the operand on mismatched shapes or ranks; TypeError on
    a bad topology or dtype.
  """
  fn = "sparse_dot_product_attention"
  topo = as_topology(topology, fn)
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  if dtype is None:
    for x, what in ((query, "query"), (key, "key"), (value, "value")):
      check_value_dtype(x.dtype, what)
    dtype = jnp.result_type(query, key, value)
  dtype = check_value_dtype(dtype, "dtype")
  _check_qkv(query, key, value, topo, fn)
  dropout = dropout_rate > 0.0 and not deterministic
  unfusable = [what for what, used in (("bias", bias is not None),
                                      ("return_weights", return_weights))
               if used]
  if implementation is None:
    implementation = "unfused" if unfusable else "fused"
  elif implementation not in ("fused", "unfused"):
    raise ValueError(f"jaxsparse.{fn}: implementation must be None, 'fused' or 'unfused', got "
                     f"{implementation!r}")
  elif implementation == "fused" and unfusable:
    raise ValueError(f"jaxsparse.{fn}: implementation='fused' does not support "
                     f"{', '.join(unfusable)}; use implementation='unfused' (or None)")
  query, key, value = query.astype(dtype), key.astype(dtype), value.astype(dtype)
  m, n = topo.shape
  heads, kv_heads = query.shape[-2], key.shape[-2]
  group = heads // kv_heads
  head_dim = query.shape[-1]
  if scale is None:
    scale = 1.0 / np.sqrt(head_dim)
  query = query * jnp.asarray(scale, dtype)

  # Heads next to the batch: [..., heads, seq, d]. With grouped-query attention
  # the query heads split into [kv_heads, group] and key/value broadcast on group.
  qh = jnp.moveaxis(query, -2, -3)
  kh = jnp.moveaxis(key, -2, -3)
  vh = jnp.moveaxis(value, -2, -3)
  if group > 1:
    qh = qh.reshape(qh.shape[:-3] + (kv_heads, group) + qh.shape[-2:])
    kh = kh[..., :, None, :, :]
    vh = vh[..., :, None, :, :]

  if implementation == "fused":
    def entry_layout(x):  # [..., heads or 1, nnz] or [nnz] -> [..., (kv_heads, group,) nnz]
      x = x.astype(jnp.uint8)
      if x.ndim == 1:
        x = x[None]
      if group > 1:
        x = x.reshape(x.shape[:-2] + ((kv_heads, group) if x.shape[-2] == heads else (1, 1))
                      + x.shape[-1:])
      return x

    keep = drop = None
    gathered = None
    if mask is not None:  # read at the entries: [..., heads or 1, nnz]
      gathered = _gather_at_entries(jnp.asarray(mask), topo, "mask", fn)
      keep = entry_layout(gathered)
    if dropout:
      # The same draw as the unfused path: [nnz], or the probabilities' shape.
      keep_prob = _check_dropout(dropout_rate, dropout_rng, fn)
      if broadcast_dropout:
        shape = (topo.cap,)
      else:
        shape = np.broadcast_shapes(query.shape[:-3] + (heads, topo.cap),
                                    key.shape[:-3] + (1, topo.cap),
                                    *([gathered.shape] if gathered is not None else []))
      drop = entry_layout(jax.random.bernoulli(dropout_rng, keep_prob, shape))
    shapes = [qh.shape[:-2], kh.shape[:-2], vh.shape[:-2]]
    shapes += [x.shape[:-1] for x in (keep, drop) if x is not None]
    try:
      batch = np.broadcast_shapes(*shapes)
    except ValueError:
      raise ValueError(f"jaxsparse.{fn}: mask of shape {jnp.shape(mask)} does not broadcast "
                       f"to [batch..., heads, q_len, kv_len] for query {query.shape}") from None
    pad = lambda x, core: x.reshape((1,) * (len(batch) - (x.ndim - core)) + x.shape)  # noqa: E731
    qh, kh, vh = (pad(x, 2) for x in (qh, kh, vh))
    keep, drop = (None if x is None else pad(x, 1) for x in (keep, drop))
    # inner_batch: the heads dims came from [..., seq, heads, d]; the CPU kernels read
    # and write that layout in place, so the moveaxis above and below cancel in XLA.
    out = fused_attention(qh, kh, vh, topo, causal=is_causal, keep=keep, drop=drop,
                          drop_scale=1.0 / keep_prob if dropout else 1.0,
                          inner_batch=2 if group > 1 else 1)
    if group > 1:
      out = out.reshape(out.shape[:-4] + (heads,) + out.shape[-2:])
    return jnp.moveaxis(out, -3, -2).astype(dtype)

  logits = sddmm(qh, kh, topo).values                   # [..., (kv_heads, group,) nnz]
  if group > 1:
    logits = logits.reshape(logits.shape[:-3] + (heads, topo.cap))
  if bias is not None:
    logits = logits + _bias_values(bias, topo, fn).astype(dtype)
  keep = None
  if mask is not None:
    keep = _gather_at_entries(jnp.asarray(mask), topo, "mask", fn).astype(bool)
  if is_causal:
    causal_keep = topo.column_indices <= row_ids(topo)
    keep = causal_keep if keep is None else keep & causal_keep
  if keep is not None:
    logits = jnp.where(keep, logits, jnp.asarray(jnp.finfo(dtype).min, dtype))
  probs = sparse_softmax(CSR._from_parts(logits, topo)).values
  if keep is not None:
    # Rows whose every entry is masked out would be uniform: zero them.
    probs = jnp.where(keep, probs, jnp.zeros((), dtype))
  weights = CSR._from_parts(probs, topo) if return_weights else None

  if dropout:
    keep_prob = _check_dropout(dropout_rate, dropout_rng, fn)
    shape = (topo.cap,) if broadcast_dropout else probs.shape
    keep_mask = jax.random.bernoulli(dropout_rng, keep_prob, shape)
    probs = probs * (keep_mask.astype(dtype) / jnp.asarray(keep_prob, dtype))

  if group > 1:
    probs = probs.reshape(probs.shape[:-2] + (kv_heads, group, topo.cap))
  out = spmm(CSR._from_parts(probs, topo), vh)          # [..., (kv_heads, group,) q, dv]
  if group > 1:
    out = out.reshape(out.shape[:-4] + (heads,) + out.shape[-2:])
  out = jnp.moveaxis(out, -3, -2).astype(dtype)         # [..., q, heads, dv]
  return (out, weights) if return_weights else out
