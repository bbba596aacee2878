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

from typing import Any, Callable

import jax.numpy as jnp
from flax import nnx

from jaxsparse._src.csr import CSR, Topology, as_topology
from jaxsparse.attention import sparse_dot_product_attention

__all__ = ["SparseMultiHeadAttention", "sparse_attention_fn"]


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
  `sparse_dot_product_attention` (None: the fused kernel unless a mask, bias,
  dropout or sown weights need the unfused path).

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
    name `'attention_weights'`).
  - `precision` and `force_fp32_for_softmax` are accepted and ignored (the
    sparse kernels accumulate half types in float32, softmax included);
    `promote_dtype` is ignored (inputs are promoted to `dtype` or their common
    dtype). Custom `qk_attn_weights_einsum` / `attn_weights_value_einsum`
    raise NotImplementedError.
  """
  topo = as_topology(topology, "flax.sparse_attention_fn")

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


_DECODE_MSG = ("jaxsparse.flax.{who}: decode=True (autoregressive cache) is not supported: "
               "a cached decoding step attends one query row whose keys depend on the step. "
               "Decode with the dense module and the equivalent mask (the parameters are "
               "the same).")


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

  `decode=True` (autoregressive cache) raises NotImplementedError. `decode`
  defaults to False (not None), so calls need not pass it.
  """

  def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
               out_features: int | None = None, num_kv_heads: int | None = None,
               in_kv_features: int | None = None, *, topology, attention_fn=None,
               decode: bool | None = False, **kwargs):
    _check_attention_fn(attention_fn, "SparseMultiHeadAttention")
    if decode:
      raise NotImplementedError(_DECODE_MSG.format(who="SparseMultiHeadAttention"))
    super().__init__(num_heads, in_features, qkv_features, out_features, num_kv_heads,
                     in_kv_features, attention_fn=sparse_attention_fn(topology),
                     decode=decode, **kwargs)

  @property
  def topology(self) -> Topology:
    """The attention pattern (a `Topology` of shape `[q_len, kv_len]`)."""
    return self.attention_fn.topology

  def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, decode: bool | None = None,
               **kwargs):
    """As `nnx.MultiHeadAttention.__call__`; `decode=True` raises NotImplementedError."""
    if decode or (decode is None and self.decode):
      raise NotImplementedError(_DECODE_MSG.format(who="SparseMultiHeadAttention"))
    return super().__call__(inputs_q, inputs_k, inputs_v, decode=False, **kwargs)

  def init_cache(self, input_shape, dtype=jnp.float32):
    raise NotImplementedError(_DECODE_MSG.format(who="SparseMultiHeadAttention"))
