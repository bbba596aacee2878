"""Sparse attention for Flax Linen.

`SparseMultiHeadDotProductAttention`: `flax.linen.MultiHeadDotProductAttention`
with a `topology`; same fields, call and parameters (`query`, `key`, `value`,
`out` `DenseGeneral`s), so a dense model's params apply to it unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Any

from flax import linen as nn

from jaxsparse.flax.attention import decoding_row, sparse_attention_fn
from jaxsparse.flax.linen_linear import SparseLinear

__all__ = ["SparseLinear", "SparseMultiHeadDotProductAttention", "sparse_attention_fn"]


class SparseMultiHeadDotProductAttention(nn.MultiHeadDotProductAttention):
  """`flax.linen.MultiHeadDotProductAttention` restricted to `topology`.

  The fields of `nn.MultiHeadDotProductAttention` (see its docs) plus
  `topology`: a `jaxsparse.CSR` or `Topology` of shape `[q_len, kv_len]` (e.g.
  from `jaxsparse.patterns`), required, shared by every batch element and
  head. `attention_fn` is set to `sparse_attention_fn(topology)` (see it for
  how `mask`, dropout and `sow_weights` behave); passing another one raises
  TypeError. `decode=True` decodes as the dense module does, one token per
  call after the cache is initialized; step `i` attends to the cached keys in
  row `i` of the topology (see `jaxsparse.flax.SparseMultiHeadAttention`).

  The parameter tree is the dense module's, so
  `sparse.apply(dense.init(...), x)` works.
  """

  topology: Any = None

  def __post_init__(self):
    if self.topology is None:
      raise TypeError("jaxsparse.flax.linen.SparseMultiHeadDotProductAttention: the "
                      "topology field is required (a jaxsparse.CSR or Topology of shape "
                      "[q_len, kv_len])")
    fn = self.attention_fn
    current = getattr(fn, "topology", None)
    if fn is not nn.dot_product_attention and current is None:
      raise TypeError("jaxsparse.flax.linen.SparseMultiHeadDotProductAttention: attention_fn "
                      "is set from topology and cannot be passed")
    topo = getattr(self.topology, "topology", self.topology)
    if current is not topo:
      # Linen modules are frozen dataclasses: set the field before Module.__post_init__.
      object.__setattr__(self, "attention_fn", sparse_attention_fn(self.topology))
    super().__post_init__()

  def __call__(self, inputs_q, inputs_k=None, inputs_v=None, **kwargs):
    """As `nn.MultiHeadDotProductAttention.__call__`."""
    decoding = self.decode and self.has_variable("cache", "cache_index")
    with (decoding_row(self.get_variable("cache", "cache_index")) if decoding
          else contextlib.nullcontext()):
      return super().__call__(inputs_q, inputs_k, inputs_v, **kwargs)
