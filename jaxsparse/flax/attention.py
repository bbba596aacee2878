"""Sparse attention for Flax NNX, and the `attention_fn` shared with Linen.

- `sparse_attention_fn(topology)`: a drop-in `attention_fn` for
  `flax.nnx.MultiHeadAttention` and `flax.linen.MultiHeadDotProductAttention`
  (the signature of `flax.nnx.dot_product_attention`).
- `SparseMultiHeadAttention`: `flax.nnx.MultiHeadAttention` with a `topology`;
  same constructor, call signature and parameter tree (`query`, `key`, `value`,
  `out` `LinearGeneral`s), so a dense model's state loads into it with
  `nnx.update(sparse_model, nnx.state(dense_model))`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsparse._src.csr import CSR, Topology, as_topology
from jaxsparse.attention import sparse_dot_product_attention

__all__ = ["SparseMultiHeadAttention", "sparse_attention_fn"]


# The query row of an autoregressive decoding step (the cache index before the
# step), set by the modules' __call__ around the dense module's decode path.
_DECODE_ROW: contextvars.ContextVar = contextvars.ContextVar("jaxsparse_decode_row",
                                                             default=None)


@contextlib.contextmanager
def decoding_row(row):
  """Within the block, an attention_fn call with one query row is decoding step `row`."""
  token = _DECODE_ROW.set(row)
  try:
    yield
  finally:
    _DECODE_ROW.reset(token)


def _max_row_length(topo: Topology, who: str) -> int:
  try:
    offsets = topo.host("row_offsets")
  except ValueError:  # a tracer: the topology must be concrete to decode
    raise ValueError(f"jaxsparse.flax.{who}: decoding needs a concrete topology (built on "
                     "the host), not one traced under jit") from None
  return int(np.max(np.diff(offsets))) if offsets.size > 1 else 0


def _decode_attention(query, key, value, topo: Topology, row, max_row: int, *, bias, mask,
                      module=None, **kwargs):
  """One decoding step: query `[..., 1, heads, d]` attends to the cached keys of
  topology row `row` (a traced int): the row's columns, padded to the longest
  row, gather the keys and values, and the attention runs over those `max_row`
  entries with the padding masked out. `mask` / `bias` (Flax's cache mask,
  `[..., 1, kv_len]` broadcastable) are read at the same columns. With `module`,
  the step's weights are sown as a `[1, kv_len]` CSR (`_row_weights`)."""
  cache_len = key.shape[-3]
  q_len, kv_len = topo.shape
  if kv_len != cache_len or q_len < cache_len:  # else rows or keys read past the ends
    raise ValueError(
        f"jaxsparse.flax: decoding with a cache of {cache_len} positions needs a topology of "
        f"shape [q_len >= {cache_len}, {cache_len}] (step i attends by row i to cached "
        f"positions), got topology shape {tuple(topo.shape)}")
  row = jnp.asarray(row, jnp.int32)
  cap = topo.cap
  width = max(max_row, 1)
  start = topo.row_offsets[row]
  length = topo.row_offsets[row + 1] - start
  pos = jnp.arange(width, dtype=jnp.int32)
  valid = pos < length
  cols = jnp.where(valid, topo.column_indices[jnp.clip(start + pos, 0, max(cap - 1, 0))], 0)
  k = jnp.take(key, cols, axis=-3)
  v = jnp.take(value, cols, axis=-3)
  keep = valid
  if mask is not None:
    keep = keep & jnp.take(jnp.asarray(mask, bool), cols, axis=-1)
  if bias is not None:
    bias = jnp.take(jnp.asarray(bias), cols, axis=-1)
  result = sparse_dot_product_attention(query, k, v, _dense_row(width), bias=bias, mask=keep,
                                        return_weights=module is not None, **kwargs)
  if module is None:
    return result
  out, weights = result
  _sow(module, _row_weights(weights.values, cols, length, key.shape[-3]))
  return out


def _row_weights(values, cols, length, kv_len: int) -> CSR:
  """A decoding step's weights as a CSR of shape `[1, kv_len]`: the query row's
  columns `cols` (`[cap]`, the first `length` valid, the rest padding), values
  `[..., heads, cap]` (0 on the padding). `todense()` gives Flax's
  `[..., heads, 1, kv_len]`. Built from traced arrays: the row is the cache index."""
  cap = cols.shape[0]
  pos = jnp.arange(cap, dtype=jnp.int32)
  valid = pos < length
  present = jnp.zeros((kv_len,), jnp.int32).at[cols].add(valid.astype(jnp.int32))
  zero = jnp.zeros((1,), jnp.int32)
  topo = Topology.from_arrays(
      jnp.stack([jnp.int32(0), length.astype(jnp.int32)]),       # row_offsets
      cols,                                                      # column_indices
      zero,                                                      # row_indices
      jnp.concatenate([zero, jnp.cumsum(present, dtype=jnp.int32)]),  # t_row_offsets
      jnp.zeros((cap,), jnp.int32),                              # t_column_indices: row 0
      jnp.argsort(-present, stable=True).astype(jnp.int32),      # t_row_indices
      pos, pos,  # t_perm, t_perm_inv: a row's columns are sorted, so the orders agree
      shape=(1, kv_len))
  return CSR._from_parts(jnp.where(valid, values, 0).astype(values.dtype), topo)


@functools.lru_cache(maxsize=64)
def _dense_row(n: int) -> Topology:
  """The topology of a fully stored `[1, n]` matrix (built on the host, cached)."""
  with jax.ensure_compile_time_eval():  # concrete arrays even when first built under jit
    return CSR.from_mask(np.ones((1, n), bool)).topology


def _sow(module, weights: CSR):
  if isinstance(module, nnx.Module):
    module.sow(nnx.Intermediate, "attention_weights", weights)
  else:  # a linen Module
    module.sow("intermediates", "attention_weights", weights)


def sparse_attention_fn(topology, *, implementation: str | None = None) -> Callable[..., Any]:
  """An `attention_fn` computing attention only at `topology`'s entries.

  Pass it as `attention_fn=` to `flax.nnx.MultiHeadAttention` or
  `flax.linen.MultiHeadDotProductAttention`. `topology` (a `CSR` or `Topology`
  of shape `[q_len, kv_len]`, e.g. from `jaxsparse.patterns`) is shared by
  every batch element and head; the returned function has it as its
  `.topology` attribute. `implementation` is passed to
  `sparse_dot_product_attention` (None: the fused kernel unless a bias or
  sown weights need the unfused path).

  The function has the signature of `flax.nnx.dot_product_attention`:
  `(query, key, value, bias=None, mask=None, broadcast_dropout=True,
  dropout_rng=None, dropout_rate=0.0, deterministic=False, dtype=None,
  precision=None, module=None, promote_dtype=None, is_causal=False,
  force_fp32_for_softmax=False, qk_attn_weights_einsum=None,
  attn_weights_value_einsum=None)`, with query `[batch..., q_len, heads, d]`,
  key/value `[batch..., kv_len, kv_heads, d]`, and computes
  `jaxsparse.sparse_dot_product_attention`. Differences from Flax's dense one:

  - `mask` (broadcastable to `[batch..., heads, q_len, kv_len]`) is honored by
    reading it at the topology's entries only: a position is attended iff it
    is in the topology AND the mask. Likewise `is_causal` drops the entries
    with `j > i`. A query row left with nothing to attend gives zeros (Flax's
    dense attention gives the mean of all values there).
  - `bias`: dense `[..., q_len, kv_len]` or per-entry `[..., nnz]` (see
    `sparse_dot_product_attention`).
  - dropout is drawn over the stored entries (`[nnz]`, shared by batch and
    heads when `broadcast_dropout`), so it is not Flax's random draw.
  - `module`: the attention weights are sown as a `CSR` with values
    `[batch..., heads, nnz]` (`nnx.Intermediate` / linen `'intermediates'`,
    name `'attention_weights'`); in a decoding step, as a `[1, kv_len]` CSR
    holding the step's row (values `[batch..., heads, longest row]`).
  - `precision` and `force_fp32_for_softmax` are accepted and ignored (the
    sparse kernels accumulate half types in float32, softmax included);
    `promote_dtype` is ignored (inputs are promoted to `dtype` or their common
    dtype). Custom `qk_attn_weights_einsum` / `attn_weights_value_einsum`
    raise NotImplementedError.
  """
  topo = as_topology(topology, "flax.sparse_attention_fn")
  # The longest row, computed on the first decoding step, once.
  max_row = functools.cache(lambda: _max_row_length(topo, "sparse_attention_fn"))

  def attention_fn(query, key, value, bias=None, mask=None, broadcast_dropout: bool = True,
                   dropout_rng=None, dropout_rate: float = 0.0, deterministic: bool = False,
                   dtype=None, precision=None, module=None, promote_dtype=None,
                   is_causal: bool = False, force_fp32_for_softmax: bool = False,
                   qk_attn_weights_einsum=None, attn_weights_value_einsum=None):
    del precision, promote_dtype, force_fp32_for_softmax
    if qk_attn_weights_einsum is not None or attn_weights_value_einsum is not None:
      raise NotImplementedError(
          "jaxsparse.flax.sparse_attention_fn: custom qk_attn_weights_einsum / "
          "attn_weights_value_einsum are not supported by sparse attention")
    row = _DECODE_ROW.get()
    if row is not None and query.shape[-3] == 1:
      return _decode_attention(
          query, key, value, topo, row, max_row(), bias=bias, mask=mask,
          dropout_rate=dropout_rate, dropout_rng=dropout_rng, deterministic=deterministic,
          broadcast_dropout=broadcast_dropout, dtype=dtype, module=module)
    result = sparse_dot_product_attention(
        query, key, value, topo, bias=bias, mask=mask, is_causal=is_causal,
        dropout_rate=dropout_rate, dropout_rng=dropout_rng, deterministic=deterministic,
        broadcast_dropout=broadcast_dropout, dtype=dtype, return_weights=module is not None,
        implementation=implementation)
    if module is None:
      return result
    out, weights = result
    _sow(module, weights)
    return out

  attention_fn.topology = topo
  attention_fn.__doc__ = sparse_attention_fn.__doc__
  return attention_fn


def _check_attention_fn(attention_fn, who: str):
  if attention_fn is not None:
    raise TypeError(f"jaxsparse.flax.{who}: attention_fn is set from topology; pass "
                    "attention_fn=jaxsparse.flax.sparse_attention_fn(topology) to the dense "
                    "module instead if you need to build it yourself")


class SparseMultiHeadAttention(nnx.MultiHeadAttention):
  """`flax.nnx.MultiHeadAttention` whose attention is restricted to `topology`.

  Same constructor and call as `nnx.MultiHeadAttention` (see its docs), plus
  the keyword `topology`: a `CSR` or `Topology` of shape `[q_len, kv_len]`
  (e.g. from `jaxsparse.patterns`) shared by every batch element and head.
  `attention_fn` is `sparse_attention_fn(topology)` (see it for how `mask`,
  `is_causal`, dropout and `sow_weights` behave) and cannot be passed.

  The parameters are exactly those of the dense module (`query`, `key`,
  `value`, `out` `LinearGeneral`s, plus `query_ln`/`key_ln` with
  `normalize_qk`), so `nnx.update(sparse, nnx.state(dense))` loads a dense
  model's weights.

  Autoregressive decoding works as in the dense module (`init_cache`, then
  one token per call with `decode=True`): step `i` attends to the cached keys
  in row `i` of the topology (so the topology should be causal, and
  `max_length` of the cache its `kv_len`), gathered at that row's columns:
  the cost per step is the row's length, not the cache's. The topology must be
  concrete (built on the host). While decoding, `sow_weights=True` sows each
  step's weights as a `[1, kv_len]` CSR (dense: Flax's `[batch, heads, 1, kv_len]`).
  """

  def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
               out_features: int | None = None, num_kv_heads: int | None = None,
               in_kv_features: int | None = None, *, topology, attention_fn=None,
               decode: bool | None = False, **kwargs):
    _check_attention_fn(attention_fn, "SparseMultiHeadAttention")
    super().__init__(num_heads, in_features, qkv_features, out_features, num_kv_heads,
                     in_kv_features, attention_fn=sparse_attention_fn(topology),
                     decode=decode, **kwargs)

  @property
  def topology(self) -> Topology:
    """The attention pattern (a `Topology` of shape `[q_len, kv_len]`)."""
    return self.attention_fn.topology

  def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, decode: bool | None = None,
               **kwargs):
    """As `nnx.MultiHeadAttention.__call__`."""
    decoding = decode if decode is not None else self.decode
    index = getattr(self, "cache_index", None) if decoding else None
    with contextlib.nullcontext() if index is None else decoding_row(index[...]):
      return super().__call__(inputs_q, inputs_k, inputs_v, decode=decode, **kwargs)
