"""The CSR sparse matrix and its topology.

A `CSR` is `values` (`[..., cap]`, differentiable, leading dims are a batch of
matrices that share one topology) plus a `Topology`: the integer arrays that
describe where the nonzeros are, computed once (on the host when the inputs
are concrete, with `jax.numpy` under `jit`) and reused by every op:

- `row_offsets [m+1]`, `column_indices [cap]`: the CSR structure, int32,
  column indices sorted and unique within a row.
- `row_indices [m]`: the rows by decreasing length (the order kernels take
  rows in: Sputnik's row swizzle).
- `t_row_offsets [k+1]`, `t_column_indices [cap]`, `t_row_indices [k]`: the
  topology of the transpose.
- `t_perm [cap]`: `values_of_transpose = values[..., t_perm]`;
  `t_perm_inv [cap]`: the inverse permutation (transpose of the transpose).

The eight arrays are stored end to end in one int32 array, `Topology.data` (one
pytree leaf, passed whole to the kernels); the attributes above are slices of it.

`cap` is the length of `column_indices`; the number of stored entries is
`row_offsets[m] <= cap`. Entries at positions `>= row_offsets[m]` are padding
(produced by `CSR.fromdense(x, nnz=K)` under `jit`); they belong to no row and
ops leave them zero. A CSR built on the host from concrete arrays has no
padding.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

INT32_MAX = np.iinfo(np.int32).max

_FLOAT_DTYPES = (jnp.float32, jnp.float64, jnp.float16, jnp.bfloat16)


def _is_concrete(*xs) -> bool:
  return not any(isinstance(x, jax.core.Tracer) for x in xs)


def check_value_dtype(dtype, what: str):
  """Raises TypeError unless `dtype` is one of the supported float dtypes."""
  dtype = np.dtype(dtype)
  if not any(dtype == np.dtype(d) for d in _FLOAT_DTYPES):
    raise TypeError(
        f"jaxsparse: {what} must be float32, float64, float16 or bfloat16, got {dtype}")
  return dtype


def _check_shape(shape) -> tuple[int, int]:
  try:
    m, k = (int(s) for s in shape)
  except (TypeError, ValueError):
    raise ValueError(f"jaxsparse: shape must be a pair (m, k) of ints, got {shape!r}") from None
  if m < 0 or k < 0:
    raise ValueError(f"jaxsparse: shape must be non-negative, got {shape!r}")
  if m > INT32_MAX or k > INT32_MAX:
    raise ValueError(f"jaxsparse: shape {shape!r} does not fit int32 indices")
  return m, k


def _as_index_array(x, what: str) -> np.ndarray:
  """Host-side: an integer array converted to int32, or TypeError/ValueError."""
  x = np.asarray(x)
  if not np.issubdtype(x.dtype, np.integer):
    raise TypeError(f"jaxsparse: {what} must have an integer dtype (int32), got {x.dtype}")
  if x.ndim != 1:
    raise ValueError(f"jaxsparse: {what} must be 1-D, got shape {x.shape}")
  if x.size and (x.min() < np.iinfo(np.int32).min or x.max() > INT32_MAX):
    raise ValueError(f"jaxsparse: {what} has values that overflow int32")
  return x.astype(np.int32)


def _validate_host(row_offsets: np.ndarray, column_indices: np.ndarray, m: int, k: int):
  """Checks a concrete CSR structure; raises ValueError naming the operand."""
  nnz = column_indices.shape[0]
  if nnz > INT32_MAX:
    raise ValueError(f"jaxsparse: nnz = {nnz} overflows int32 offsets")
  if row_offsets.shape[0] != m + 1:
    raise ValueError(
        f"jaxsparse: row_offsets must have m + 1 = {m + 1} entries for shape ({m}, {k}), "
        f"got {row_offsets.shape[0]}")
  if row_offsets[0] != 0:
    raise ValueError(f"jaxsparse: row_offsets must start at 0, got {row_offsets[0]}")
  lengths = np.diff(row_offsets)
  if np.any(lengths < 0):
    r = int(np.argmax(lengths < 0))
    raise ValueError(f"jaxsparse: row_offsets must be non-decreasing; it decreases at row {r}")
  if row_offsets[-1] != nnz:
    raise ValueError(
        f"jaxsparse: row_offsets must end at nnz = len(column_indices) = {nnz}, "
        f"got {row_offsets[-1]}")
  if nnz:
    if column_indices.min() < 0 or column_indices.max() >= k:
      bad = int(np.argmax((column_indices < 0) | (column_indices >= k)))
      raise ValueError(
          f"jaxsparse: column_indices out of range [0, {k}): column_indices[{bad}] = "
          f"{column_indices[bad]}")
    starts = np.zeros(nnz, bool)
    starts[row_offsets[:-1][lengths > 0]] = True
    bad = (np.diff(column_indices) <= 0) & ~starts[1:]
    if np.any(bad):
      j = int(np.argmax(bad)) + 1
      r = int(np.searchsorted(row_offsets, j, side="right") - 1)
      raise ValueError(
          f"jaxsparse: column_indices must be sorted and unique within each row; row {r} "
          f"has {column_indices[j - 1]} followed by {column_indices[j]}")


class Topology:
  """Where the nonzeros are: the integer arrays shared by every op (see module doc).

  The eight arrays are stored as one int32 array `data` (one pytree leaf: a
  jitted function taking a CSR pays JAX's per-argument dispatch once, not eight
  times), in the order of `_fields` for the matrix of shape `base_shape`.
  `transposed=True` is the view of the transpose: the same `data`, read with the
  forward and transposed arrays swapped, so `.T` costs nothing. The attributes
  (`row_offsets`, ...) are slices of `data`; the kernels take `data` whole with
  the offsets of what they read. Build with `Topology.build` (validated) or
  `Topology.from_arrays`; `Topology(data, shape=...)` takes a packed array as is.
  """

  _fields = ("row_offsets", "column_indices", "row_indices", "t_row_offsets",
             "t_column_indices", "t_row_indices", "t_perm", "t_perm_inv")

  def __init__(self, data, *, shape, transposed=False):
    self.data = data
    self.shape = tuple(shape)
    self.transposed = bool(transposed)
    # Unflattening also builds Topologies around non-array leaves (vmap axis
    # specs, tree.map results) and stacked data: only a 1-D array is checked.
    if getattr(data, "ndim", None) == 1:
      m, k = self.shape
      rest = data.shape[0] - 2 * (m + k) - 2
      if rest < 0 or rest % 4:
        raise ValueError(
            f"jaxsparse: Topology data of length {data.shape[0]} does not fit shape "
            f"{self.shape}: expected 2 * (m + k) + 2 + 4 * cap entries")

  @classmethod
  def from_arrays(cls, row_offsets, column_indices, row_indices, t_row_offsets,
                  t_column_indices, t_row_indices, t_perm, t_perm_inv, *, shape) -> "Topology":
    """The topology with these eight arrays (numpy or jax, concrete or traced); no checks."""
    arrays = (row_offsets, column_indices, row_indices, t_row_offsets, t_column_indices,
              t_row_indices, t_perm, t_perm_inv)
    if _is_concrete(*arrays) and all(isinstance(a, np.ndarray) for a in arrays):
      data = jnp.asarray(pack_host(arrays))
    else:
      data = jnp.concatenate([jnp.asarray(a, jnp.int32) for a in arrays])
    return cls(data, shape=shape)

  @property
  def params(self) -> dict:
    """The static parameters the primitives take next to `data`."""
    return {"shape": self.shape, "transposed": self.transposed}

  @property
  def base_shape(self) -> tuple[int, int]:
    """The shape `data` is laid out for (`shape`, reversed in a transposed view)."""
    return self.shape[::-1] if self.transposed else self.shape

  @property
  def arrays(self) -> tuple:
    """The leaves the primitives take: `(data,)`."""
    return (self.data,)

  @property
  def cap(self) -> int:
    m, k = self.shape
    return (self.data.shape[0] - 2 * (m + k) - 2) // 4

  def _segments(self) -> dict:
    m, k = self.base_shape
    cap = self.cap
    sizes = (m + 1, cap, m, k + 1, cap, k, cap, cap)
    out, start = {}, 0
    for name, size in zip(self._fields, sizes):
      out[name] = (start, start + size)
      start += size
    if self.transposed:
      swap = {"row_offsets": "t_row_offsets", "column_indices": "t_column_indices",
              "row_indices": "t_row_indices", "t_perm": "t_perm_inv"}
      for a, b in swap.items():
        out[a], out[b] = out[b], out[a]
    return out

  def segments(self, *names) -> np.ndarray:
    """`[offset, size]` in `data` of each named array, flattened (int64): the
    `segments` attribute of the kernels, which take `data` whole."""
    segs = self._segments()
    return np.array([[a, b - a] for a, b in (segs[n] for n in names)], np.int64).reshape(-1)

  def _get(self, name):
    start, stop = self._segments()[name]
    return self.data[start:stop]

  def host(self, name: str) -> np.ndarray:
    """The array `name` (one of `_fields`) of a concrete topology, as numpy.

    Readable where the attribute is not: under a trace, the attributes of a
    topology closed over by a jitted function are (constant) tracers.
    """
    if isinstance(self.data, jax.core.Tracer):
      raise ValueError(f"jaxsparse: Topology.host({name!r}) needs a concrete topology, "
                       "not one traced under jit")
    start, stop = self._segments()[name]
    return np.asarray(self.data)[start:stop]

  row_offsets = property(lambda self: self._get("row_offsets"))
  column_indices = property(lambda self: self._get("column_indices"))
  row_indices = property(lambda self: self._get("row_indices"))
  t_row_offsets = property(lambda self: self._get("t_row_offsets"))
  t_column_indices = property(lambda self: self._get("t_column_indices"))
  t_row_indices = property(lambda self: self._get("t_row_indices"))
  t_perm = property(lambda self: self._get("t_perm"))
  t_perm_inv = property(lambda self: self._get("t_perm_inv"))

  @property
  def T(self) -> "Topology":
    """The topology of the transpose; no computation."""
    return Topology(self.data, shape=self.shape[::-1], transposed=not self.transposed)

  def __repr__(self):
    try:
      return f"Topology(shape={self.shape}, cap={self.cap})"
    except AttributeError:  # a leaf that is not an array (e.g. after jax.tree.map)
      return f"Topology(shape={self.shape}, data={self.data!r})"

  @classmethod
  def build(cls, row_offsets, column_indices, shape, *, validate: bool = True) -> "Topology":
    """Builds the full topology from `row_offsets` and `column_indices`.

    On concrete inputs this validates (ValueError/TypeError naming the operand)
    and computes everything with numpy on the host. On traced inputs (inside
    `jit`) it computes with `jax.numpy` and cannot validate.
    """
    m, k = _check_shape(shape)
    if _is_concrete(row_offsets, column_indices):
      ro = _as_index_array(row_offsets, "row_offsets")
      ci = _as_index_array(column_indices, "column_indices")
      if validate:
        _validate_host(ro, ci, m, k)
      return cls.from_arrays(*_derive(np, ro, ci, m, k), shape=(m, k))
    for x, what in ((row_offsets, "row_offsets"), (column_indices, "column_indices")):
      if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"jaxsparse: {what} must have an integer dtype (int32), got {x.dtype}")
    if row_offsets.shape != (m + 1,):
      raise ValueError(f"jaxsparse: row_offsets must have shape ({m + 1},), got {row_offsets.shape}")
    if column_indices.ndim != 1:
      raise ValueError(f"jaxsparse: column_indices must be 1-D, got shape {column_indices.shape}")
    arrays = _derive(jnp, row_offsets.astype(jnp.int32), column_indices.astype(jnp.int32), m, k)
    return cls.from_arrays(*arrays, shape=(m, k))


def pack_host(arrays) -> np.ndarray:
  """The eight numpy arrays of a topology (in `Topology._fields` order) as its packed
  int32 `data`."""
  return np.concatenate([np.asarray(a).astype(np.int32) for a in arrays])


# Flattened and unflattened by JAX in C++ (no Python call per jitted call).
jax.tree_util.register_dataclass(Topology, data_fields=["data"],
                                 meta_fields=["shape", "transposed"])


def _derive(xp, row_offsets, column_indices, m: int, k: int):
  """Row swizzle and transposed topology, with numpy (host) or jax.numpy (traced)."""
  i32 = np.int32
  cap = column_indices.shape[0]
  nnz = row_offsets[m]
  lengths = row_offsets[1:] - row_offsets[:-1]
  if xp is np:
    row_indices = np.argsort(-lengths, kind="stable").astype(i32)
  else:
    row_indices = jnp.argsort(-lengths, stable=True).astype(i32)
  pos = xp.arange(cap, dtype=i32)
  valid = pos < nnz
  # Row of each stored entry (m for padding).
  row_ids = (xp.searchsorted(row_offsets, pos, side="right") - 1).astype(i32)
  # Stable sort by column (padding last) keeps rows ascending within a column.
  key = xp.where(valid, column_indices, k)
  if xp is np:
    t_perm = np.argsort(key, kind="stable").astype(i32)
    counts = np.bincount(column_indices[valid], minlength=k)[:k]
  else:
    t_perm = jnp.argsort(key, stable=True).astype(i32)
    counts = jnp.zeros((k,), i32).at[jnp.where(valid, column_indices, k)].add(1, mode="drop")
  t_row_offsets = xp.concatenate([xp.zeros((1,), i32), xp.cumsum(counts).astype(i32)])
  t_column_indices = xp.where(valid, row_ids[t_perm], 0).astype(i32)
  t_lengths = t_row_offsets[1:] - t_row_offsets[:-1]
  if xp is np:
    t_row_indices = np.argsort(-t_lengths, kind="stable").astype(i32)
    t_perm_inv = np.empty_like(t_perm)
    t_perm_inv[t_perm] = pos
  else:
    t_row_indices = jnp.argsort(-t_lengths, stable=True).astype(i32)
    t_perm_inv = jnp.zeros_like(t_perm).at[t_perm].set(pos)
  return (row_offsets.astype(i32), column_indices.astype(i32), row_indices, t_row_offsets,
          t_column_indices, t_row_indices, t_perm, t_perm_inv)


def as_topology(x, where: str) -> Topology:
  """The Topology of a CSR (or a Topology itself); TypeError naming `where` otherwise."""
  if isinstance(x, CSR):
    return x.topology
  if isinstance(x, Topology):
    return x
  raise TypeError(f"jaxsparse.{where}: topology must be a jaxsparse.CSR or Topology "
                  f"(see jaxsparse.patterns), got {type(x).__name__}")


def row_ids(topology: Topology):
  """The row of each stored entry, `[cap]` int32; `m` for padding entries."""
  pos = jnp.arange(topology.cap, dtype=jnp.int32)
  return (jnp.searchsorted(topology.row_offsets, pos, side="right") - 1).astype(jnp.int32)


@jax.tree_util.register_pytree_node_class
class CSR:
  """A sparse `[m, k]` matrix (or a batch of them sharing one topology).

  Build with `CSR((values, row_offsets, column_indices), shape=(m, k))`,
  `CSR.fromdense`, `CSR.from_mask`, `CSR.from_scipy` or `jaxsparse.io.load_smtx`.

  Args:
    args: `(values, row_offsets, column_indices)`: `values` float `[..., nnz]`
      (float32, float64, float16 or bfloat16; leading dims are a batch),
      `row_offsets` int `[m + 1]`, `column_indices` int `[nnz]` sorted and
      unique within each row. Concrete inputs are validated (ValueError or
      TypeError naming the operand).
    shape: `(m, k)`.
  """

  # numpy defers `ndarray @ CSR` to CSR.__rmatmul__.
  __array_ufunc__ = None

  def __init__(self, args, *, shape):
    values, row_offsets, column_indices = args
    topology = Topology.build(row_offsets, column_indices, shape)
    self._init(jnp.asarray(values), topology)

  def _init(self, values, topology: Topology):
    check_value_dtype(values.dtype, "values")
    if values.ndim < 1 or values.shape[-1] != topology.cap:
      raise ValueError(
          f"jaxsparse: values must have shape [..., nnz] with nnz = {topology.cap}, "
          f"got {values.shape}")
    self.values = values
    self.topology = topology

  @classmethod
  def _from_parts(cls, values, topology: Topology) -> "CSR":
    obj = object.__new__(cls)
    obj._init(values, topology)
    return obj

  # -- pytree -----------------------------------------------------------------
  def tree_flatten(self):
    return (self.values, self.topology), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    obj.values, obj.topology = children
    return obj

  # -- properties ---------------------------------------------------------------
  @property
  def shape(self) -> tuple[int, int]:
    return self.topology.shape

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return tuple(self.values.shape[:-1])

  @property
  def dtype(self):
    return self.values.dtype

  @property
  def nnz(self) -> int:
    """Stored entries including padding (`len(column_indices)`)."""
    return self.topology.cap

  @property
  def row_offsets(self):
    return self.topology.row_offsets

  @property
  def column_indices(self):
    return self.topology.column_indices

  @property
  def row_indices(self):
    return self.topology.row_indices

  @property
  def T(self) -> "CSR":
    from jaxsparse._src.transpose import transpose
    return transpose(self)

  def transpose(self) -> "CSR":
    return self.T

  def with_values(self, values) -> "CSR":
    """The same topology with new `values` of shape `[..., nnz]`."""
    return CSR._from_parts(jnp.asarray(values), self.topology)

  def astype(self, dtype) -> "CSR":
    return self.with_values(self.values.astype(dtype))

  def todense(self):
    """The dense `[..., m, k]` array (differentiable in `values`)."""
    m, k = self.shape
    rows = row_ids(self.topology)
    out = jnp.zeros(self.batch_shape + (m, k), self.dtype)
    return out.at[..., rows, self.column_indices].add(self.values, mode="drop")

  def __matmul__(self, other):
    from jaxsparse._src.spmm import spmm
    return spmm(self, other)

  def __rmatmul__(self, other):
    from jaxsparse._src.spmm import spmm, spmm_nt
    other = jnp.asarray(other)
    if other.ndim == 1:
      return spmm(self.T, other)
    return spmm_nt(self.T, other)  # other @ self = other @ (self.T).T

  def __repr__(self):
    try:
      return (f"CSR(shape={self.shape}, nnz={self.nnz}, batch_shape={self.batch_shape}, "
              f"dtype={self.dtype})")
    except AttributeError:  # leaves that are not arrays (e.g. after jax.tree.map)
      return f"CSR(shape={self.shape}, values={self.values!r})"

  # -- constructors -------------------------------------------------------------
  @classmethod
  def fromdense(cls, x, *, nnz: int | None = None) -> "CSR":
    """The CSR of a dense `[m, k]` array's nonzeros.

    On a concrete array this runs on the host. Inside `jit` pass `nnz=K`, a
    static capacity: the first K nonzeros (row-major) are kept and positions
    past the true count are padding.
    """
    x = jnp.asarray(x) if not isinstance(x, jax.core.Tracer) else x
    check_value_dtype(x.dtype, "x")
    if x.ndim != 2:
      raise ValueError(f"jaxsparse: fromdense expects a 2-D array, got shape {x.shape}")
    if nnz is None and _is_concrete(x):
      return cls.from_mask(np.asarray(x != 0), values=x)
    if nnz is None:
      raise ValueError("jaxsparse: CSR.fromdense inside jit needs a static nnz=K")
    return cls._from_mask_traced(x != 0, x, int(nnz))

  @classmethod
  def from_mask(cls, mask, values=None) -> "CSR":
    """The CSR whose nonzeros are the True entries of a concrete `[m, k]` mask.

    Args:
      mask: bool `[m, k]` (concrete: the topology is built on the host).
      values: None (all ones, float32), or a dense float array `[..., m, k]`
        whose entries at the mask are taken (a batch of matrices), or an array
        `[..., nnz]` of values in row-major order of the mask.
    """
    if not _is_concrete(mask):
      raise ValueError("jaxsparse: from_mask needs a concrete mask; inside jit use "
                       "CSR.fromdense(x, nnz=K)")
    mask = np.asarray(mask)
    if mask.ndim != 2:
      raise ValueError(f"jaxsparse: mask must be 2-D [m, k], got shape {mask.shape}")
    mask = mask.astype(bool)
    m, k = mask.shape
    counts = mask.sum(axis=1)
    row_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows, cols = np.nonzero(mask)
    if row_offsets[-1] > INT32_MAX:
      raise ValueError(f"jaxsparse: mask has {row_offsets[-1]} nonzeros, overflowing int32")
    topology = Topology.build(row_offsets, cols, (m, k), validate=False)
    if values is None:
      vals = jnp.ones((rows.shape[0],), jnp.float32)
    else:
      values = jnp.asarray(values)
      check_value_dtype(values.dtype, "values")
      if values.shape[-2:] == (m, k):
        vals = values[..., rows, cols]
      elif values.shape[-1] == rows.shape[0]:
        vals = values
      else:
        raise ValueError(
            f"jaxsparse: values must be dense [..., {m}, {k}] or [..., nnz={rows.shape[0]}], "
            f"got {values.shape}")
    return cls._from_parts(vals, topology)

  @classmethod
  def _from_mask_traced(cls, mask, x, cap: int) -> "CSR":
    m, k = mask.shape
    counts = jnp.sum(mask, axis=1, dtype=jnp.int32)
    row_offsets = jnp.minimum(
        jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(counts, dtype=jnp.int32)]), cap)
    rows, cols = jnp.nonzero(mask, size=cap, fill_value=0)
    valid = jnp.arange(cap) < row_offsets[m]
    cols = jnp.where(valid, cols, 0).astype(jnp.int32)
    vals = jnp.where(valid, x[rows, cols], 0).astype(x.dtype)
    topology = Topology.build(row_offsets, cols, (m, k))
    return cls._from_parts(vals, topology)

  @classmethod
  def from_scipy(cls, s, dtype=None) -> "CSR":
    """From any `scipy.sparse` matrix or array (converted to canonical CSR)."""
    s = s.tocsr(copy=True)
    s.sum_duplicates()
    s.sort_indices()
    values = jnp.asarray(s.data if dtype is None else s.data.astype(dtype))
    return cls((values, s.indptr, s.indices), shape=s.shape)

  def to_scipy(self):
    """A `scipy.sparse.csr_array` of a concrete, unbatched CSR (padding dropped)."""
    import scipy.sparse as sp
    if self.values.ndim != 1:
      raise ValueError("jaxsparse: to_scipy needs an unbatched CSR")
    ro = self.topology.host("row_offsets")
    n = int(ro[-1])
    return sp.csr_array((np.asarray(self.values)[:n], self.topology.host("column_indices")[:n], ro),
                        shape=self.shape)


def broadcast_batch(x, batch: Sequence[int], core_ndim: int):
  """`x` with leading size-1 dims added so it has `max(len(batch), 1)` batch dims.

  The primitives take every dense operand as `[*batch, *core]` with one batch
  dim per dim of the broadcast batch (each 1 or the common size), never
  flattened: under SPMD partitioning each batch dim keeps its own sharding
  (say batch on one mesh axis, heads on another).
  """
  nb = max(len(batch), 1)
  xb = x.ndim - core_ndim
  return x.reshape((1,) * (nb - xb) + x.shape)


def batch_shape_of(what_shapes: Sequence[tuple[str, tuple[int, ...]]]) -> tuple[int, ...]:
  """The broadcast of several batch shapes, or ValueError naming the operands."""
  try:
    return tuple(np.broadcast_shapes(*(s for _, s in what_shapes)))
  except ValueError:
    desc = ", ".join(f"{w} {s}" for w, s in what_shapes)
    raise ValueError(f"jaxsparse: batch dims do not broadcast: {desc}") from None


def result_float_dtype(*named: tuple[str, Any]):
  """Checks each operand is a supported float dtype and returns the promoted one."""
  dts = [check_value_dtype(d, w) for w, d in named]
  return jnp.result_type(*dts)
