"""The tokens-major products against float64 oracles: `spmm_nt` (`x @ a.T`, what
`x @ a` and the sparse linear layers run) and `sddmm_tn` (the SDDMM of `lhs.T` and
`rhs.T`, their weight gradient). Awkward and DLMC topologies, every dtype, token
counts around the kernels' tiles (16-128 for spmm_nt, 32/64/128 for sddmm_tn),
jit, vmap, batching, gradients and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import testing as jst
from jaxsparse._src.sddmm import sddmm_tn, sddmm_tn_p
from jaxsparse._src.spmm import spmm_nt, spmm_nt_p
from jaxsparse.testing import check_grads

DTYPES = [np.float32, np.float64, np.float16, jnp.bfloat16]


def _x(rng, n, k, dtype, batch=()):
  return jnp.asarray(rng.standard_normal(batch + (n, k)), dtype)


def _nt_oracle(a, x):
  ad, xd = jst.dense_f64(a), jst.to_f64(x)
  return xd @ np.swapaxes(ad, -1, -2), np.abs(xd) @ np.swapaxes(np.abs(ad), -1, -2)


def _tn_oracle(lhs, rhs, a):
  return jst.sddmm_oracle(np.swapaxes(jst.to_f64(lhs), -1, -2),
                          np.swapaxes(jst.to_f64(rhs), -1, -2), a)


# -- spmm_nt -------------------------------------------------------------------------
@pytest.mark.parametrize("tokens", [45, 1])  # one partial tile; one token (the SpMV path)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", jst.CASES, ids=lambda c: c.name)
def test_spmm_nt_cases(case, dtype, tokens, rng):
  a = jst.case_csr(case, rng, dtype)
  x = _x(rng, tokens, case.k, dtype)
  out = jax.jit(spmm_nt)(a, x)
  assert out.dtype == np.dtype(dtype) and out.shape == (tokens, case.m)
  ref, scale = _nt_oracle(a, x)
  jst.assert_close(out, ref, scale, dtype, f"spmm_nt {case.name}")


@pytest.mark.parametrize("n", [1, 7, 16, 127, 128, 129, 300])
@pytest.mark.parametrize("k", [9, 300, 5000])
def test_spmm_nt_tiles(n, k, rng):
  # Token counts below, at and past the tile (128 tokens for k <= 512 in float32;
  # 16 at k = 5000, where the transposed tile must stay within 256 KiB), and k not a
  # multiple of the 8 x 8 transpose blocks.
  a = jst.random_csr(rng, 37, k, min(1.0, 40 / k), np.float32, empty_rows=0.2)
  x = _x(rng, n, k, np.float32)
  ref, scale = _nt_oracle(a, x)
  jst.assert_close(jax.jit(spmm_nt)(a, x), ref, scale, np.float32, f"spmm_nt n={n} k={k}")


def test_spmm_nt_equals_spmm_between_transposes(rng):
  # The same sums in the same order as spmm on x.T: bitwise equal in float32.
  a = jst.random_csr(rng, 50, 70, 0.2, np.float32, empty_rows=0.2)
  x = _x(rng, 200, 70, np.float32)
  np.testing.assert_array_equal(jax.jit(spmm_nt)(a, x), jax.jit(js.spmm)(a, x.T).T)


def test_rmatmul_is_spmm_nt(rng):
  a = jst.random_csr(rng, 20, 31, 0.4, np.float32)
  x = _x(rng, 6, 20, np.float32)
  if jax.default_backend() == "cpu" and js.has_kernels("cpu"):
    assert "jaxsparse_spmm_nt_cpu" in jax.jit(lambda x: x @ a).lower(x).as_text()
  ref, scale = _nt_oracle(a.T, x)
  jst.assert_close(x @ a, ref, scale, np.float32)


@pytest.mark.parametrize("tokens", [9, 1])
@pytest.mark.parametrize("batch_a,batch_x", [((3,), (3,)), ((3,), ()), ((), (3,)), ((2, 1), (1, 4))])
def test_spmm_nt_batched(batch_a, batch_x, tokens, rng):
  a = jst.random_csr(rng, 17, 23, 0.3, np.float32, batch=batch_a, empty_rows=0.2)
  x = _x(rng, tokens, 23, np.float32, batch_x)
  out = jax.jit(spmm_nt)(a, x)
  batch = np.broadcast_shapes(batch_a, batch_x)
  assert out.shape == batch + (tokens, 17)
  ref, scale = _nt_oracle(a, x)
  jst.assert_close(out, ref, scale + np.zeros(batch + (tokens, 17)), np.float32)


def test_spmm_nt_vmap(rng):
  a = jst.random_csr(rng, 19, 24, 0.3, np.float32, empty_rows=0.2)
  vs = jnp.asarray(rng.standard_normal((4, a.nnz)), jnp.float32)
  xs = _x(rng, 8, 24, np.float32, (4,))
  f = lambda v, x: spmm_nt(a.with_values(v), x)
  for in_axes, args in (((0, 0), (vs, xs)), ((0, None), (vs, xs[0])), ((None, 0), (vs[0], xs)),
                        ((1, 2), (vs.T, jnp.moveaxis(xs, 0, 2)))):
    out = jax.jit(jax.vmap(f, in_axes=in_axes))(*args)
    for i in range(4):
      v = vs[i] if in_axes[0] is not None else vs[0]
      x = xs[i] if in_axes[1] is not None else xs[0]
      ref, scale = _nt_oracle(a.with_values(v), x)
      jst.assert_close(out[i], ref, scale, np.float32, f"vmap {in_axes} [{i}]")


@pytest.mark.parametrize("case", [c for c in jst.CASES if c.name in
                                  ("odd_empty_rows", "dense_row", "empty", "tiny")],
                         ids=lambda c: c.name)
def test_spmm_nt_grads(case, rng):
  a = jst.case_csr(case, rng, np.float64)
  x = rng.standard_normal((5, case.k))
  f = lambda v, x: spmm_nt(a.with_values(v), x)
  check_grads(f, (a.values, x), order=2, modes=["fwd", "rev"])
  vb = rng.standard_normal((2, a.nnz))  # batched values, shared x
  check_grads(f, (vb, x), order=2, modes=["fwd", "rev"])


def test_spmm_nt_grad_runs_tokens_major_kernels(rng):
  # The backward of x @ a.T is spmm_nt on the transpose and sddmm_tn: no transposes
  # of x or of the cotangent around a plain spmm / sddmm.
  if jax.default_backend() != "cpu" or not js.has_kernels("cpu"):
    pytest.skip("checks the CPU lowering")
  a = jst.random_csr(rng, 12, 20, 0.3, np.float32)
  g = jax.grad(lambda v, x: jnp.sin(spmm_nt(a.with_values(v), x)).sum(), argnums=(0, 1))
  text = jax.jit(g).lower(a.values, jnp.ones((6, 20), jnp.float32)).as_text()
  assert text.count("jaxsparse_spmm_nt_cpu") == 2 and "jaxsparse_sddmm_tn_cpu" in text
  assert "jaxsparse_spmm_cpu" not in text and "jaxsparse_sddmm_cpu" not in text


def test_spmm_nt_dlmc(rng, dlmc_files):
  f = jax.jit(spmm_nt)
  for path in dlmc_files:
    a = js.io.load_smtx(path, seed=1)
    x = _x(rng, 70, a.shape[1], np.float32)
    ref, scale = _nt_oracle(a, x)
    jst.assert_close(f(a, x), ref, scale, np.float32, path)


def test_spmm_nt_bad_input(rng):
  a = jst.random_csr(rng, 5, 7, 0.5)
  with pytest.raises(TypeError, match="x must be"):
    spmm_nt(a, jnp.ones((2, 7), jnp.int32))
  with pytest.raises(ValueError, match=r"x must be \[..., n, 7\]"):
    spmm_nt(a, jnp.ones((2, 6), jnp.float32))
  with pytest.raises(ValueError, match=r"x must be \[..., n, 7\]"):
    spmm_nt(a, jnp.ones((7,), jnp.float32))
  with pytest.raises(ValueError, match="batch dims"):
    spmm_nt(a.with_values(jnp.ones((3, a.nnz))), jnp.ones((4, 2, 7), jnp.float32))
  with pytest.raises(TypeError, match="CSR"):
    spmm_nt(jnp.ones((5, 7)), jnp.ones((2, 7)))


def test_spmm_nt_kernel_rejects_bad_topology_under_jit():
  if jax.default_backend() != "cpu" or not js.has_kernels("cpu"):
    pytest.skip("only the CPU handler can read the topology")

  @jax.jit
  def f(v, ro, ci, x):
    return spmm_nt(js.CSR((v, ro, ci), shape=(2, 3)), x)

  v = jnp.ones(3, jnp.float32)
  x = jnp.ones((4, 3), jnp.float32)
  with pytest.raises(Exception, match=r"column_indices\[2\] = 7 is out of range \[0, 3\) \(k = x"):
    f(v, jnp.array([0, 1, 3], jnp.int32), jnp.array([0, 1, 7], jnp.int32), x).block_until_ready()
  with pytest.raises(Exception, match="row_offsets"):
    f(v, jnp.array([0, 2, 1], jnp.int32), jnp.array([0, 1, 2], jnp.int32), x).block_until_ready()


# -- sddmm_tn ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", jst.CASES, ids=lambda c: c.name)
def test_sddmm_tn_cases(case, dtype, rng):
  a = jst.case_csr(case, rng, dtype)
  lhs, rhs = _x(rng, 70, case.m, dtype), _x(rng, 70, case.k, dtype)  # 64 + a 6-token tile
  out = jax.jit(sddmm_tn)(lhs, rhs, a)
  assert out.values.dtype == np.dtype(dtype) and out.values.shape == (a.nnz,)
  ref, scale = _tn_oracle(lhs, rhs, a)
  jst.assert_close(out.values, ref, scale, dtype, f"sddmm_tn {case.name}")


@pytest.mark.parametrize("n", [0, 1, 31, 100, 512, 513, 1000, 1100])
def test_sddmm_tn_tiles(n, rng):
  # One tile up to 512 tokens, then tiles split evenly (513 -> 2 x 272, 1100 -> 3 x
  # 368), their sums added in order; n = 0 gives zeros.
  a = jst.random_csr(rng, 37, 53, 0.3, np.float32, empty_rows=0.2)
  lhs, rhs = _x(rng, n, 37, np.float32), _x(rng, n, 53, np.float32)
  ref, scale = _tn_oracle(lhs, rhs, a)
  jst.assert_close(jax.jit(sddmm_tn)(lhs, rhs, a).values, ref, scale, np.float32, f"n={n}")


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16], ids=lambda d: np.dtype(d).name)
def test_sddmm_tn_half_sums_in_float_across_tiles(dtype, rng):
  # 1600 tokens = 4 tiles: the half types keep float sums across the tiles and round
  # once, so the result is float32's rounded (not 4 half roundings).
  a = jst.random_csr(rng, 20, 30, 0.4, dtype)
  lhs, rhs = _x(rng, 1600, 20, dtype), _x(rng, 1600, 30, dtype)
  out = sddmm_tn(lhs, rhs, a).values
  ref32 = sddmm_tn(lhs.astype(np.float32), rhs.astype(np.float32), a).values
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref32.astype(dtype), np.float32),
                             rtol=2 * jst.tolerance(dtype), atol=0)


def test_sddmm_tn_wide_operands_take_smaller_tiles(rng):
  # m + k = 10000: tiles of at most 416 tokens (the transposed copies within 16 MiB),
  # so 900 tokens run as 3 tiles of 304.
  a = jst.random_csr(rng, 1000, 9000, 0.001, np.float32)
  lhs, rhs = _x(rng, 900, 1000, np.float32), _x(rng, 900, 9000, np.float32)
  ref, scale = _tn_oracle(lhs, rhs, a)
  jst.assert_close(jax.jit(sddmm_tn)(lhs, rhs, a).values, ref, scale, np.float32)


@pytest.mark.parametrize("batch_l,batch_r", [((3,), (3,)), ((3,), ()), ((2, 1), (1, 4))])
def test_sddmm_tn_batched(batch_l, batch_r, rng):
  a = jst.random_csr(rng, 11, 13, 0.3, np.float32, empty_rows=0.2)
  lhs, rhs = _x(rng, 40, 11, np.float32, batch_l), _x(rng, 40, 13, np.float32, batch_r)
  out = jax.jit(sddmm_tn)(lhs, rhs, a).values
  batch = np.broadcast_shapes(batch_l, batch_r)
  assert out.shape == batch + (a.nnz,)
  ref, scale = _tn_oracle(lhs, rhs, a)
  jst.assert_close(out, ref + np.zeros(batch + (1,)), scale + np.zeros(batch + (1,)), np.float32)


def test_sddmm_tn_vmap(rng):
  a = jst.random_csr(rng, 9, 14, 0.4, np.float32)
  ls, rs = _x(rng, 33, 9, np.float32, (3,)), _x(rng, 33, 14, np.float32, (3,))
  out = jax.jit(jax.vmap(lambda l, r: sddmm_tn(l, r, a).values, in_axes=(0, None)))(ls, rs[0])
  for i in range(3):
    ref, scale = _tn_oracle(ls[i], rs[0], a)
    jst.assert_close(out[i], ref, scale, np.float32, f"vmap [{i}]")


@pytest.mark.parametrize("case", [c for c in jst.CASES if c.name in
                                  ("odd_empty_rows", "empty", "tiny", "single_col")],
                         ids=lambda c: c.name)
def test_sddmm_tn_grads(case, rng):
  a = jst.case_csr(case, rng, np.float64)
  lhs, rhs = rng.standard_normal((6, case.m)), rng.standard_normal((6, case.k))
  check_grads(lambda l, r: sddmm_tn(l, r, a).values, (lhs, rhs), order=2, modes=["fwd", "rev"])


def test_sddmm_tn_dlmc(rng, dlmc_files):
  f = jax.jit(lambda l, r, a: sddmm_tn(l, r, a).values)
  for path in dlmc_files:
    a = js.io.load_smtx(path, seed=1)
    lhs, rhs = _x(rng, 100, a.shape[0], np.float32), _x(rng, 100, a.shape[1], np.float32)
    ref, scale = _tn_oracle(lhs, rhs, a)
    jst.assert_close(f(lhs, rhs, a), ref, scale, np.float32, path)


def test_sddmm_tn_bad_input(rng):
  a = jst.random_csr(rng, 5, 7, 0.5)
  with pytest.raises(ValueError, match=r"lhs must be \[..., n, m=5\]"):
    sddmm_tn(jnp.ones((3, 4)), jnp.ones((3, 7)), a)
  with pytest.raises(ValueError, match=r"rhs must be \[..., n, k=7\]"):
    sddmm_tn(jnp.ones((3, 5)), jnp.ones((3, 6)), a)
  with pytest.raises(ValueError, match="token dims differ"):
    sddmm_tn(jnp.ones((3, 5)), jnp.ones((4, 7)), a)
  with pytest.raises(TypeError, match="lhs"):
    sddmm_tn(jnp.ones((3, 5), jnp.int32), jnp.ones((3, 7)), a)


def test_tokens_major_primitives_lower_to_ffi_on_cpu(rng):
  if jax.default_backend() != "cpu":
    pytest.skip("checks the CPU lowering")
  assert js.has_kernels("cpu"), "the CPU extension was not built"
  a = jst.random_csr(rng, 8, 8, 0.5)
  t = a.topology
  text = jax.jit(lambda v, x, l: (spmm_nt_p.bind(v[None], x[None], *t.arrays, **t.params),
                                  sddmm_tn_p.bind(l[None], x[None], *t.arrays, **t.params))
                 ).lower(a.values, jnp.ones((4, 8)), jnp.ones((4, 8))).as_text()
  assert "jaxsparse_spmm_nt_cpu" in text and "jaxsparse_sddmm_tn_cpu" in text
