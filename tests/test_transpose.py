"""Transpose: a gather of the values by the stored permutation."""

import jax
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import testing as jst
from jaxsparse.testing import check_grads


@pytest.mark.parametrize("case", jst.CASES, ids=lambda c: c.name)
def test_transpose_cases(case, rng):
  a = jst.case_csr(case, rng, np.float32, batch=(2,))
  t = jax.jit(js.transpose)(a)
  assert t.shape == a.shape[::-1]
  np.testing.assert_array_equal(jst.dense_f64(t), np.swapaxes(jst.dense_f64(a), -1, -2))
  np.testing.assert_array_equal(jst.dense_f64(t.T), jst.dense_f64(a))
  # The transposed topology is a valid CSR in its own right.
  js.CSR((t.values, t.row_offsets, t.column_indices), shape=t.shape)


def test_transpose_row_indices_sorted_by_length(rng):
  a = jst.random_csr(rng, 40, 30, 0.2, dense_row=True)
  for x in (a, a.T):
    lengths = np.diff(np.asarray(x.row_offsets))[np.asarray(x.row_indices)]
    assert np.all(np.diff(lengths) <= 0)
    assert sorted(np.asarray(x.row_indices).tolist()) == list(range(x.shape[0]))


def test_transpose_grads_and_vmap(rng):
  a = jst.random_csr(rng, 12, 7, 0.4, np.float64, empty_rows=0.2)
  check_grads(lambda v: js.transpose(a.with_values(v)).values, (a.values,), order=2,
              modes=["fwd", "rev"])
  vs = rng.standard_normal((3, a.nnz))
  out = jax.vmap(lambda v: a.with_values(v).T.values)(vs)
  np.testing.assert_array_equal(out, vs[:, np.asarray(a.topology.t_perm)])


def test_transpose_uses_ffi_on_cpu(rng):
  if jax.default_backend() != "cpu":
    pytest.skip("checks the CPU lowering")
  a = jst.random_csr(rng, 8, 8, 0.5)
  assert "jaxsparse_permute_cpu" in jax.jit(js.transpose).lower(a).as_text()
