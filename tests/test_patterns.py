"""Each pattern equals its documented dense mask (built here independently with numpy
broadcasting), is a valid sorted CSR of float32 ones, also at T = 4096."""

import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import patterns

TS = [1, 2, 7, 16, 33]


def _ij(t):
  return np.arange(t)[:, None], np.arange(t)[None, :]


def _assert_equals_mask(csr, mask):
  mask = np.asarray(mask, bool)
  assert csr.shape == mask.shape
  assert csr.values.dtype == np.float32 and csr.values.shape == (csr.nnz,)
  np.testing.assert_array_equal(csr.values, 1.0)
  ro = np.asarray(csr.row_offsets)
  rows, cols = np.nonzero(mask)
  np.testing.assert_array_equal(ro, np.concatenate([[0], np.cumsum(mask.sum(1))]))
  # Row-major nonzero order: also checks columns are sorted and unique in each row.
  np.testing.assert_array_equal(np.asarray(csr.column_indices), cols)
  # The full validation of the CSR constructor accepts it.
  js.CSR((csr.values, ro, np.asarray(csr.column_indices)), shape=csr.shape)


@pytest.mark.parametrize("t", TS)
def test_causal(t):
  i, j = _ij(t)
  _assert_equals_mask(patterns.causal(t), j <= i)


@pytest.mark.parametrize("t", TS)
@pytest.mark.parametrize("window", [0, 1, 3, 40])
def test_local(t, window):
  i, j = _ij(t)
  _assert_equals_mask(patterns.local(t, window), np.abs(i - j) <= window)
  _assert_equals_mask(patterns.local(t, window, causal=True), (i - j >= 0) & (i - j <= window))


@pytest.mark.parametrize("t", TS)
@pytest.mark.parametrize("stride", [1, 2, 3, 5, 40])
def test_strided(t, stride):
  i, j = _ij(t)
  _assert_equals_mask(patterns.strided(t, stride), (i - j) % stride == 0)
  _assert_equals_mask(patterns.strided(t, stride, causal=True),
                      ((i - j) % stride == 0) & (j <= i))


@pytest.mark.parametrize("t", TS)
@pytest.mark.parametrize("window", [0, 2])
@pytest.mark.parametrize("glob", [[], [0], [1, 5], "last", 2])
def test_longformer(t, window, glob):
  if glob == "last":
    glob = [t - 1]
  elif isinstance(glob, list):
    glob = [g for g in glob if g < t]
  elif glob > t:
    glob = t
  i, j = _ij(t)
  g = np.zeros(t, bool)
  g[np.arange(glob) if isinstance(glob, int) else glob] = True
  mask = (np.abs(i - j) <= window) | g[:, None] | g[None, :]
  _assert_equals_mask(patterns.longformer(t, window, glob), mask)


def _bigbird_reference(t, block, num_random, num_global, seed):
  nb = -(-t // block)
  bi = np.arange(nb)
  bm = (np.abs(bi[:, None] - bi[None, :]) <= 1) | (bi[:, None] < num_global) | \
       (bi[None, :] < num_global)
  rng = np.random.default_rng(seed)
  for r in range(num_global, nb):
    cand = np.flatnonzero(~bm[r])
    if num_random and cand.size:
      bm[r, rng.choice(cand, size=min(num_random, cand.size), replace=False)] = True
  i, j = _ij(t)
  return bm, bm[i // block, j // block]


@pytest.mark.parametrize("t,block,num_random,num_global",
                         [(1, 1, 0, 0), (16, 4, 1, 1), (33, 4, 2, 1), (30, 3, 3, 0),
                          (40, 8, 10, 2), (17, 5, 1, 0)])
@pytest.mark.parametrize("seed", [0, 7])
def test_bigbird(t, block, num_random, num_global, seed):
  bm, mask = _bigbird_reference(t, block, num_random, num_global, seed)
  np.testing.assert_array_equal(
      patterns.bigbird_block_mask(t, block, num_random, num_global, seed), bm)
  csr = patterns.bigbird(t, block, num_random, num_global, seed)
  _assert_equals_mask(csr, mask)
  # Structure: window and globals present; each non-global block row has exactly
  # min(num_random, available) random blocks.
  nb = bm.shape[0]
  for r in range(num_global, nb):
    fixed = (np.abs(np.arange(nb) - r) <= 1) | (np.arange(nb) < num_global)
    assert bm[r].sum() - fixed.sum() == min(num_random, nb - fixed.sum())


def test_bigbird_deterministic_in_seed():
  a = patterns.bigbird(64, 4, 2, 1, seed=1)
  b = patterns.bigbird(64, 4, 2, 1, seed=1)
  c = patterns.bigbird(64, 4, 2, 1, seed=2)
  np.testing.assert_array_equal(a.column_indices, b.column_indices)
  assert a.nnz != c.nnz or not np.array_equal(a.column_indices, c.column_indices)


def test_from_mask(rng):
  mask = rng.random((5, 9)) < 0.4
  mask[2] = False
  _assert_equals_mask(patterns.from_mask(mask), mask)
  with pytest.raises(ValueError, match="mask"):
    patterns.from_mask(np.ones((2, 3, 4), bool))


def test_union(rng):
  t = 21
  i, j = _ij(t)
  parts = [patterns.local(t, 1), patterns.strided(t, 4, causal=True),
           patterns.longformer(t, 0, [3])]
  mask = (np.abs(i - j) <= 1) | (((i - j) % 4 == 0) & (j <= i)) | (i == 3) | (j == 3)
  _assert_equals_mask(patterns.union(*parts), mask)
  _assert_equals_mask(patterns.union(parts[0].topology, parts[1]), (np.abs(i - j) <= 1) | (
      ((i - j) % 4 == 0) & (j <= i)))
  m2 = rng.random((4, 6)) < 0.3
  m3 = rng.random((4, 6)) < 0.3
  _assert_equals_mask(patterns.union(patterns.from_mask(m2), patterns.from_mask(m3)), m2 | m3)
  _assert_equals_mask(patterns.union(patterns.from_mask(np.zeros((3, 3), bool))),
                      np.zeros((3, 3), bool))
  with pytest.raises(ValueError, match="shape"):
    patterns.union(patterns.causal(4), patterns.causal(5))
  with pytest.raises(ValueError):
    patterns.union()
  with pytest.raises(TypeError):
    patterns.union(np.ones((3, 3)))


def test_bad_arguments():
  with pytest.raises(ValueError, match="T"):
    patterns.causal(0)
  with pytest.raises(ValueError, match="window"):
    patterns.local(8, -1)
  with pytest.raises(ValueError, match="stride"):
    patterns.strided(8, 0)
  with pytest.raises(TypeError, match="T"):
    patterns.local(8.5, 1)
  with pytest.raises(ValueError, match="global_tokens"):
    patterns.longformer(8, 1, [8])
  with pytest.raises(ValueError, match="global_tokens"):
    patterns.longformer(8, 1, 9)
  with pytest.raises(ValueError, match="num_global"):
    patterns.bigbird(8, 4, 0, 3)
  with pytest.raises(ValueError, match="block"):
    patterns.bigbird(8, 0, 0, 0)


def _large_masks(t):
  i, j = _ij(t)
  g = np.zeros(t, bool)
  g[[0, 1, 2047]] = True
  return {"local": (lambda: patterns.local(t, 256), lambda: np.abs(i - j) <= 256),
          "local_causal": (lambda: patterns.local(t, 256, causal=True),
                           lambda: (i - j >= 0) & (i - j <= 256)),
          "strided": (lambda: patterns.strided(t, 64), lambda: (i - j) % 64 == 0),
          "longformer": (lambda: patterns.longformer(t, 256, [0, 1, 2047]),
                         lambda: (np.abs(i - j) <= 256) | g[:, None] | g[None, :]),
          "bigbird": (lambda: patterns.bigbird(t, 64, 3, 2, 0), lambda: _bigbird_reference(t, 64, 3, 2, 0)[1])}


@pytest.mark.parametrize("name", ["local", "local_causal", "strided", "longformer", "bigbird"])
def test_large_t_equals_mask(name):
  # T = 4096 (millions of nonzeros): the vectorized builders stay exact at the sizes
  # the attention benchmarks use. How long a build takes is not asserted here (timed
  # tests are flaky on a loaded CI machine); bench_attention.py builds these patterns.
  build, mask = _large_masks(4096)[name]
  _assert_equals_mask(build(), mask())
