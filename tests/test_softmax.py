"""Sparse softmax and its derivative against a float64 oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import testing as jst
from jaxsparse._src.softmax import sparse_softmax_grad_p
from jaxsparse.testing import check_grads

DTYPES = [np.float32, np.float64, np.float16, jnp.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", jst.CASES, ids=lambda c: c.name)
def test_softmax_cases(case, dtype, rng):
  a = jst.case_csr(case, rng, dtype, batch=(2,))
  out = jax.jit(js.sparse_softmax)(a)
  ref = jst.softmax_oracle(a)
  # Each output is a ratio of exponentials: its error scale is the value itself (<= 1).
  jst.assert_close(out.values, ref, np.ones_like(ref), dtype, f"softmax {case.name}")
  assert np.all(np.isfinite(jst.to_f64(out.values)))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_softmax_long_rows_with_masked_entries(dtype, rng):
  # Rows of 600-700 entries: many whole vectors, and 16-bit types pass through the
  # float buffer in several chunks of 256. Logits span [-40, 40] (exponentials
  # across 35 orders of magnitude) and some are -inf, as masked attention logits
  # are: they get probability 0. One row is all -inf except one entry.
  a = jst.random_csr(rng, 5, 700, 0.9, dtype)
  v = rng.uniform(-40, 40, a.nnz)
  v[rng.random(a.nnz) < 0.1] = -np.inf
  ro = np.asarray(a.row_offsets)
  v[ro[2]:ro[3]] = -np.inf
  v[ro[2] + 7] = 3.0
  a = a.with_values(jnp.asarray(v, dtype))
  out = jax.jit(js.sparse_softmax)(a).values
  ref = jst.softmax_oracle(a)
  jst.assert_close(out, ref, np.ones_like(ref), dtype, "softmax long rows")
  got = jst.to_f64(out)
  assert np.all(got[np.isneginf(v)] == 0) and got[ro[2] + 7] == 1.0
  y = jnp.asarray(ref, dtype)[None]
  g = jnp.asarray(rng.standard_normal((1, a.nnz)), dtype)
  grad = sparse_softmax_grad_p.bind(y, g, *a.topology.arrays, **a.topology.params)
  yd, gd = jst.to_f64(y), jst.to_f64(g)
  want = np.zeros_like(yd)
  for r in range(a.shape[0]):
    s, e = ro[r], ro[r + 1]
    want[:, s:e] = yd[:, s:e] * (gd[:, s:e] - (gd[:, s:e] * yd[:, s:e]).sum(-1, keepdims=True))
  jst.assert_close(grad, want, np.abs(yd) * (np.abs(gd) + 1), dtype, "softmax grad long rows")


def test_softmax_empty_rows_stay_empty_and_finite(rng):
  a = jst.random_csr(rng, 30, 20, 0.3, np.float32, empty_rows=0.5)
  y = js.sparse_softmax(a)
  dense = jst.dense_f64(y)
  ro = np.asarray(a.row_offsets)
  nonempty = np.diff(ro) > 0
  np.testing.assert_allclose(dense.sum(1)[nonempty], 1.0, rtol=1e-5)
  np.testing.assert_array_equal(dense[~nonempty], 0.0)
  g = jax.grad(lambda v: jnp.sum(js.sparse_softmax(a.with_values(v)).values ** 2))(a.values)
  assert np.all(np.isfinite(g))


def test_softmax_large_values_are_stable():
  # exp(1000) overflows without the max subtraction.
  x = np.full((3, 4), 1000.0, np.float32)
  x[1, 2] = 0.0
  a = js.CSR.fromdense(x)
  np.testing.assert_allclose(jst.dense_f64(js.sparse_softmax(a))[0], 0.25, rtol=1e-6)


def test_softmax_grad_primitive(rng):
  a = jst.random_csr(rng, 11, 9, 0.5, np.float32, batch=(3,), empty_rows=0.2)
  y = js.sparse_softmax(a).values.reshape(3, -1)
  g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  out = jax.jit(lambda y, g: sparse_softmax_grad_p.bind(y, g, *a.topology.arrays,
                                                        **a.topology.params))(y, g)
  yd, gd = jst.to_f64(y), jst.to_f64(g)
  ro = np.asarray(a.row_offsets)
  ref = np.zeros_like(yd)
  for r in range(a.shape[0]):
    s, e = ro[r], ro[r + 1]
    ref[:, s:e] = yd[:, s:e] * (gd[:, s:e] - (gd[:, s:e] * yd[:, s:e]).sum(-1, keepdims=True))
  jst.assert_close(out, ref, np.abs(yd) * (np.abs(gd) + 1), np.float32)


def test_softmax_vmap(rng):
  a = jst.random_csr(rng, 10, 13, 0.4, np.float32)
  vs = jnp.asarray(rng.standard_normal((5, a.nnz)), jnp.float32)
  out = jax.jit(jax.vmap(lambda v: js.sparse_softmax(a.with_values(v)).values))(vs)
  jst.assert_close(out, jst.softmax_oracle(a.with_values(vs)), np.ones(out.shape), np.float32)


@pytest.mark.parametrize("case", [c for c in jst.CASES if c.name in
                                  ("odd_empty_rows", "dense_row", "empty", "single_row")],
                         ids=lambda c: c.name)
def test_softmax_grads(case, rng):
  a = jst.case_csr(case, rng, np.float64, batch=(2,))
  check_grads(lambda v: js.sparse_softmax(a.with_values(v)).values, (a.values,), order=2,
              modes=["fwd", "rev"])


def test_softmax_grad_grads(rng):
  # The derivative primitive itself, differentiated in both operands, order 2.
  a = jst.random_csr(rng, 9, 8, 0.5, np.float64, empty_rows=0.2)
  y = js.sparse_softmax(a).values[None]
  g = rng.standard_normal(y.shape)
  f = lambda y, g: sparse_softmax_grad_p.bind(y, g, *a.topology.arrays, **a.topology.params)
  check_grads(f, (y, g), order=2, modes=["fwd", "rev"])


def test_softmax_uses_ffi_on_cpu(rng):
  if jax.default_backend() != "cpu":
    pytest.skip("checks the CPU lowering")
  a = jst.random_csr(rng, 8, 8, 0.5)
  text = jax.jit(jax.grad(lambda v: js.sparse_softmax(a.with_values(v)).values[0])).lower(
      a.values).as_text()
  assert "jaxsparse_softmax_cpu" in text and "jaxsparse_softmax_grad_cpu" in text


def test_softmax_bad_input():
  with pytest.raises(TypeError, match="CSR"):
    js.sparse_softmax(jnp.ones((3, 3)))
