"""Test helpers for jaxsparse and for users testing their own sparse code:
random topologies with the awkward cases kernels get wrong, the DLMC sample,
float64 oracles and the per-dtype tolerance table."""

from __future__ import annotations

import glob
import os
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np

from jaxsparse._src.csr import CSR

# Error bound per output entry, as a multiple of the sum of the absolute values
# of the terms that make it (|A| @ |B| for a product): rounding of the inputs
# is excluded (the oracle sees the same rounded inputs), so what remains is
# float32 accumulation and the rounding of the output.
TOLERANCE = {
    np.dtype(np.float64): 1e-12,
    np.dtype(np.float32): 1e-5,
    np.dtype(jnp.bfloat16): 1.6e-2,
    np.dtype(np.float16): 2e-3,
}


def tolerance(dtype) -> float:
  return TOLERANCE[np.dtype(dtype)]


def check_grads(f, args, order, modes=("fwd", "rev"), **kwargs):
  """`jax.test_util.check_grads` of `jax.jit(f)`: the same checks of every JVP,
  transpose and higher-order rule f uses, each derivative traced and compiled
  as one program instead of dispatched op by op (on the CPU, 2-3x less time
  compiling)."""
  jax.test_util.check_grads(jax.jit(f), args, order, modes=modes, **kwargs)


def assert_close(actual, expected, scale, dtype, what: str = "result"):
  """`|actual - expected| <= tol(dtype) * scale` elementwise (scale: sum of |terms|).

  A small absolute floor (tol * max(scale) * 1e-3) covers entries whose terms
  all vanish.
  """
  actual = to_f64(actual)
  expected = np.asarray(expected, np.float64)
  scale = np.asarray(scale, np.float64)
  if actual.shape != expected.shape:
    raise AssertionError(f"{what}: shape {actual.shape} != expected {expected.shape}")
  tol = tolerance(dtype)
  floor = tol * (scale.max() if scale.size else 0.0) * 1e-3 + np.finfo(np.float64).tiny
  err = np.abs(actual - expected)
  bound = tol * scale + floor
  bad = ~(err <= bound)
  if np.any(bad):
    i = np.unravel_index(np.argmax(np.where(bad, err - bound, -np.inf)), err.shape)
    raise AssertionError(
        f"{what} ({np.dtype(dtype).name}): {int(bad.sum())} of {err.size} entries exceed the "
        f"tolerance; worst at {i}: got {actual[i]}, expected {expected[i]}, error {err[i]:.3g} "
        f"> bound {bound[i]:.3g}")


class Case(NamedTuple):
  """A named random topology: `why` says what it exercises."""
  name: str
  m: int
  k: int
  density: float
  why: str
  empty_rows: float = 0.0
  dense_row: bool = False


# The awkward shapes every op is tested on.
CASES = (
    Case("tiny", 1, 1, 1.0, "m = k = 1: one entry"),
    Case("single_row", 1, 37, 0.5, "m = 1, odd k"),
    Case("single_col", 29, 1, 0.5, "k = 1: each row has 0 or 1 entries"),
    Case("empty", 13, 11, 0.0, "nnz = 0: every row empty"),
    Case("odd_empty_rows", 37, 53, 0.3, "odd sizes, a third of rows empty", empty_rows=0.33),
    Case("dense_row", 19, 70, 0.1, "one fully dense row among short ones (load imbalance)",
         dense_row=True),
    Case("tile_edge", 64, 129, 0.2, "k and row lengths past a multiple of the tile/vector width"),
)


def random_topology(rng: np.random.Generator, m: int, k: int, density: float, *,
                    empty_rows: float = 0.0, dense_row: bool = False) -> np.ndarray:
  """A random boolean `[m, k]` mask with the requested properties."""
  mask = rng.random((m, k)) < density
  if empty_rows > 0:
    mask[rng.random(m) < empty_rows] = False
  if dense_row and m:
    mask[rng.integers(m)] = True
  return mask


def random_csr(rng: np.random.Generator, m: int, k: int, density: float, dtype=np.float32,
               batch: tuple[int, ...] = (), **kw) -> CSR:
  """A CSR with a random topology and standard-normal values `[*batch, nnz]`."""
  mask = random_topology(rng, m, k, density, **kw)
  nnz = int(mask.sum())
  values = rng.standard_normal(batch + (nnz,))
  return CSR.from_mask(mask, values=jnp.asarray(values, dtype=dtype))


def case_csr(case: Case, rng, dtype=np.float32, batch=()) -> CSR:
  return random_csr(rng, case.m, case.k, case.density, dtype, batch,
                    empty_rows=case.empty_rows, dense_row=case.dense_row)


def dense_f64(a: CSR) -> np.ndarray:
  """The float64 dense matrix of a CSR, built in numpy (independent of jaxsparse ops)."""
  ro = np.asarray(a.row_offsets)
  ci = np.asarray(a.column_indices)
  v = to_f64(a.values)
  m, k = a.shape
  out = np.zeros(v.shape[:-1] + (m, k))
  rows = np.repeat(np.arange(m), np.diff(ro))
  n = int(ro[-1])
  out[..., rows, ci[:n]] = v[..., :n]
  return out


def to_f64(x) -> np.ndarray:
  """A float64 numpy copy (converted in numpy: works without jax_enable_x64)."""
  return np.asarray(x).astype(np.float64)


def dlmc_root() -> str | None:
  """The DLMC sample: $JAXSPARSE_DLMC, else ../shared/dlmc beside the repository."""
  env = os.environ.get("JAXSPARSE_DLMC")
  if env:
    return env
  here = os.path.dirname(os.path.abspath(__file__))
  for cand in (os.path.join(here, "..", "..", "shared", "dlmc"),
               os.path.join(os.getcwd(), "..", "shared", "dlmc")):
    if os.path.isdir(cand):
      return os.path.normpath(cand)
  return None


def dlmc_files(root: str | None = None, model: str | None = None) -> list[str]:
  """All `.smtx` files under the DLMC root (optionally one model: rn50 or transformer)."""
  root = root or dlmc_root()
  if root is None:
    return []
  pattern = os.path.join(root, model or "*", "**", "*.smtx")
  return sorted(glob.glob(pattern, recursive=True))


def iter_cases(rng) -> Iterator[tuple[Case, CSR]]:
  for case in CASES:
    yield case, case_csr(case, rng)


# -- float64 oracles in numpy (independent of jaxsparse's own ops) -----------------
def spmm_oracle(a: CSR, b):
  """`(a @ b, |a| @ |b|)` in float64."""
  ad, bd = dense_f64(a), to_f64(b)
  return ad @ bd, np.abs(ad) @ np.abs(bd)


def sddmm_oracle(lhs, rhs, a: CSR):
  """`(values, scale)` of `(lhs @ rhs.T)` at a's stored entries, in float64, `[..., nnz]`."""
  ld, rd = to_f64(lhs), to_f64(rhs)
  ro = np.asarray(a.row_offsets)
  n = int(ro[-1])
  rows = np.repeat(np.arange(a.shape[0]), np.diff(ro))
  cols = np.asarray(a.column_indices)[:n]
  prod = ld[..., rows, :] * rd[..., cols, :]
  pad = a.nnz - n
  vals = np.concatenate([prod.sum(-1), np.zeros(prod.shape[:-2] + (pad,))], -1)
  scale = np.concatenate([np.abs(prod).sum(-1), np.zeros(prod.shape[:-2] + (pad,))], -1)
  return vals, scale


def softmax_oracle(a: CSR):
  """Row-wise softmax of the stored values in float64, `[..., nnz]` (padding 0)."""
  v = to_f64(a.values)
  ro = np.asarray(a.row_offsets)
  out = np.zeros_like(v)
  for r in range(a.shape[0]):
    s, e = ro[r], ro[r + 1]
    if e > s:
      x = v[..., s:e]
      x = np.exp(x - x.max(-1, keepdims=True))
      out[..., s:e] = x / x.sum(-1, keepdims=True)
  return out
