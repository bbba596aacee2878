"""SpMM against a float64 oracle: awkward topologies, DLMC, all dtypes, eager/jit/vmap, grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import testing as jst
from jaxsparse.testing import check_grads

DTYPES = [np.float32, np.float64, np.float16, jnp.bfloat16]


def _b(rng, k, n, dtype, batch=()):
  return jnp.asarray(rng.standard_normal(batch + (k, n)), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", jst.CASES, ids=lambda c: c.name)
def test_spmm_cases(case, dtype, rng):
  a = jst.case_csr(case, rng, dtype)
  # n = 33: not a multiple of any vector width; n = 1 is covered by test_spmm_vector.
  b = _b(rng, case.k, 33, dtype)
  out = jax.jit(js.spmm)(a, b)
  assert out.dtype == np.dtype(dtype) and out.shape == (case.m, 33)
  ref, scale = jst.spmm_oracle(a, b)
  jst.assert_close(out, ref, scale, dtype, f"spmm {case.name}")


@pytest.mark.parametrize("m,k,n", [(70, 50, 77), (300, 512, 256)], ids=["small", "wide"])
@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16], ids=lambda d: np.dtype(d).name)
def test_spmm_half_output_rounding_is_exact(dtype, m, k, n, rng):
  """Half outputs are the float32 accumulators rounded once to nearest even (vector
  stores, NaN and inf included): bit-identical to XLA's rounding of the float32
  result (for "wide" the float32 reference takes the k-blocked kernel and the half
  types the row-strip one: the same sums in the same order)."""
  a = jst.random_csr(rng, m, k, 0.3, dtype=dtype)
  b = rng.standard_normal((k, n)).astype(np.float32)
  b[0, :6] = [np.nan, np.inf, -np.inf, 1e30, -1e30, 1e-30]  # rows using column 0 get these
  b = jnp.asarray(b, dtype)
  out = js.spmm(a, b)
  ref = js.spmm(a.with_values(a.values.astype(np.float32)), b.astype(np.float32)).astype(dtype)
  differ = np.asarray(out).view(np.uint16) != np.asarray(ref).view(np.uint16)
  both_nan = np.isnan(np.asarray(out, np.float32)) & np.isnan(np.asarray(ref, np.float32))
  assert np.isnan(np.asarray(out, np.float32)).any() and np.isinf(np.asarray(out, np.float32)).any()
  assert not np.any(differ & ~both_nan), f"{int((differ & ~both_nan).sum())} entries differ"


def test_spmm_eager_jit_matmul_agree(rng):
  a = jst.random_csr(rng, 37, 53, 0.3, empty_rows=0.3)
  b = _b(rng, 53, 16, np.float32)
  eager = js.spmm(a, b)
  np.testing.assert_array_equal(eager, jax.jit(js.spmm)(a, b))
  np.testing.assert_array_equal(eager, a @ b)
  ref, scale = jst.spmm_oracle(a, b)
  jst.assert_close(eager, ref, scale, np.float32)


@pytest.mark.parametrize("n", [1, 5, 8, 16, 20, 49, 129, 196])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_spmm_widths(n, dtype, rng):
  # Each kernel path by width: n = 1 (gathered SpMV), n <= 8 (256-bit vectors under
  # AVX-512), a masked last vector (5, 20, 49, 196), several accumulator sets for
  # one or two vectors (16, 20), and the k-blocked path with one leftover column
  # (129); half types below 16 columns run through the float kernels. Rows of ~90
  # nonzeros, some empty.
  a = jst.random_csr(rng, 23, 300, 0.3, dtype, empty_rows=0.2)
  b = _b(rng, 300, n, dtype)
  ref, scale = jst.spmm_oracle(a, b)
  jst.assert_close(jax.jit(js.spmm)(a, b), ref, scale, dtype, f"spmm n={n}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("density", [0.01, 0.04], ids=["unpacked", "packed"])
def test_spmm_column_blocks(density, dtype, rng):
  # A dense operand wider than the L2 panel (k x n x elem > 512 KiB) is split into
  # column blocks; its 4 or 8 KiB row stride is copied to a padded stride only when
  # each dense row is read by >= 32 nonzeros (about 36 at density 0.04, 9 at 0.01).
  # Rows of about 9 or 2.3 nonzeros stay on the row path under every instruction set.
  a = jst.random_csr(rng, 1024, 256, density, dtype, empty_rows=0.1)
  b = _b(rng, 256, 1024, dtype)
  ref, scale = jst.spmm_oracle(a, b)
  jst.assert_close(jax.jit(js.spmm)(a, b), ref, scale, dtype, f"spmm density={density}")


@pytest.mark.parametrize("where", ["swapped", "rotated", "duplicate"])
def test_spmm_unsorted_columns_take_the_row_path(where, rng):
  # A topology built inside jit is not validated, so columns may reach the kernel
  # out of order within a row. Wide enough for the k-blocked kernel, which needs
  # them sorted: the launcher's check must route this product to the row-strip
  # kernel. Rows start with a smaller column than the previous row ended with (a
  # decrease that is allowed); the longest row has its first and last columns
  # swapped, its last column moved to the front, or a repeated column.
  m, k, n = 40, 300, 130
  mask = jst.random_topology(rng, m, k, 0.5, empty_rows=0.2)
  ro = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int32)
  ci = np.nonzero(mask)[1].astype(np.int32)
  r = int(np.argmax(np.diff(ro)))
  s, e = ro[r], ro[r + 1]
  if where == "swapped":  # its first and last columns (in different k blocks)
    ci[s], ci[e - 1] = ci[e - 1], ci[s]
  elif where == "rotated":  # the last column moved to the front
    ci[s:e] = np.roll(ci[s:e], 1)
  else:
    ci[s + 5] = ci[s + 4]
  topo = js.Topology.build(ro, ci, (m, k), validate=False)
  values = jnp.asarray(rng.standard_normal(int(ro[-1])), jnp.float32)
  a = js.CSR._from_parts(values, topo)
  b = _b(rng, k, n, np.float32)
  ad = np.zeros((m, k))  # repeated entries add up, as in the kernels
  np.add.at(ad, (np.repeat(np.arange(m), np.diff(ro)), ci), np.asarray(values, np.float64))
  bd = jst.to_f64(b)
  jst.assert_close(jax.jit(js.spmm)(a, b), ad @ bd, np.abs(ad) @ np.abs(bd), np.float32,
                   f"spmm unsorted {where}")


def test_spmm_vector(rng):
  # b of rank 1 ([k]) gives [m]: n = 1.
  a = jst.random_csr(rng, 20, 31, 0.4)
  x = jnp.asarray(rng.standard_normal(31), jnp.float32)
  out = js.spmm(a, x)
  ref, scale = jst.spmm_oracle(a, x[:, None])
  jst.assert_close(out, ref[:, 0], scale[:, 0], np.float32)


def test_spmm_rmatmul(rng):
  a = jst.random_csr(rng, 20, 31, 0.4, np.float64)
  x = rng.standard_normal((5, 20))
  np.testing.assert_allclose(x @ a, x @ jst.dense_f64(a), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_a,batch_b", [((3,), (3,)), ((3,), ()), ((), (3,)), ((2, 3), (3,)),
                                              ((2, 1), (1, 4))])
@pytest.mark.parametrize("dtype,n", [(np.float32, 9), (jnp.bfloat16, 3)],
                         ids=["float32", "bfloat16-narrow"])
def test_spmm_batched(batch_a, batch_b, dtype, n, rng):
  # Leading dims of values and of b broadcast; one topology for the batch.
  a = jst.random_csr(rng, 17, 23, 0.3, dtype, batch=batch_a, empty_rows=0.2)
  b = _b(rng, 23, n, dtype, batch_b)
  out = jax.jit(js.spmm)(a, b)
  batch = np.broadcast_shapes(batch_a, batch_b)
  assert out.shape == batch + (17, n)
  ad, bd = jst.dense_f64(a), jst.to_f64(b)
  jst.assert_close(out, ad @ bd, np.abs(ad) @ np.abs(bd) + np.zeros(batch + (17, n)), dtype)


def test_spmm_vmap(rng):
  a = jst.random_csr(rng, 19, 24, 0.3, np.float32, empty_rows=0.2)
  vs = jnp.asarray(rng.standard_normal((4, a.nnz)), jnp.float32)
  bs = _b(rng, 24, 8, np.float32, (4,))
  f = lambda v, b: js.spmm(a.with_values(v), b)
  for in_axes, args in (((0, 0), (vs, bs)), ((0, None), (vs, bs[0])), ((None, 0), (vs[0], bs)),
                        ((1, 2), (vs.T, jnp.moveaxis(bs, 0, 2)))):
    out = jax.jit(jax.vmap(f, in_axes=in_axes))(*args)
    for i in range(4):
      v = vs[i] if in_axes[0] is not None else vs[0]
      b = bs[i] if in_axes[1] is not None else bs[0]
      ref, scale = jst.spmm_oracle(a.with_values(v), b)
      jst.assert_close(out[i], ref, scale, np.float32, f"vmap {in_axes} [{i}]")


def test_spmm_vmap_nested_and_batched_values(rng):
  # vmap over a CSR whose values already carry a batch dim (heads).
  a = jst.random_csr(rng, 12, 10, 0.4, np.float32, batch=(3,))
  vs = jnp.stack([a.values, 2 * a.values])
  b = _b(rng, 10, 5, np.float32)
  out = jax.vmap(lambda v: js.spmm(a.with_values(v), b))(vs)
  ad = jst.dense_f64(a)
  np.testing.assert_allclose(out[1], 2 * ad @ jst.to_f64(b), rtol=1e-5, atol=1e-5)


def test_spmm_vmap_over_topology_raises(rng):
  a = jst.random_csr(rng, 6, 6, 0.5, np.float32)
  data = jnp.stack([a.topology.data, a.topology.data])
  b = jnp.ones((6, 2), jnp.float32)
  with pytest.raises(NotImplementedError, match="share one topology"):
    jax.vmap(lambda d: js.spmm(js.CSR._from_parts(
        a.values, js.Topology(d, shape=a.shape)), b))(data)


@pytest.mark.parametrize("case", [c for c in jst.CASES if c.name in
                                  ("odd_empty_rows", "dense_row", "empty", "tiny")],
                         ids=lambda c: c.name)
def test_spmm_grads(case, rng):
  a = jst.case_csr(case, rng, np.float64)
  b = rng.standard_normal((case.k, 3))
  f = lambda v, b: js.spmm(a.with_values(v), b)
  check_grads(f, (a.values, b), order=2, modes=["fwd", "rev"])
  # And batched values with a shared b (the transpose sums over the batch).
  vb = rng.standard_normal((2, a.nnz))
  check_grads(f, (vb, b), order=2, modes=["fwd", "rev"])


def test_spmm_dlmc(rng, dlmc_files):
  files = dlmc_files
  f = jax.jit(js.spmm)
  for path in files:
    a = js.io.load_smtx(path, seed=1)
    b = _b(rng, a.shape[1], 40, np.float32)
    ref, scale = jst.spmm_oracle(a, b)
    jst.assert_close(f(a, b), ref, scale, np.float32, path)


def test_spmm_uses_ffi_on_cpu(rng):
  if jax.default_backend() != "cpu":
    pytest.skip("checks the CPU lowering")
  assert js.has_kernels("cpu"), "the CPU extension was not built"
  a = jst.random_csr(rng, 8, 8, 0.5)
  text = jax.jit(js.spmm).lower(a, jnp.ones((8, 4), jnp.float32)).as_text()
  assert "jaxsparse_spmm_cpu" in text


# -- bad input -----------------------------------------------------------------------
def test_spmm_bad_input(rng):
  a = jst.random_csr(rng, 5, 7, 0.5)
  with pytest.raises(TypeError, match="b must be"):
    js.spmm(a, jnp.ones((7, 2), jnp.int32))
  with pytest.raises(TypeError, match="b must be"):
    js.spmm(a, jnp.ones((7, 2), jnp.complex64))
  with pytest.raises(ValueError, match="inner dimensions"):
    js.spmm(a, jnp.ones((6, 2), jnp.float32))
  with pytest.raises(ValueError, match="batch dims"):
    js.spmm(a.with_values(jnp.ones((3, a.nnz))), jnp.ones((4, 7, 2), jnp.float32))
  with pytest.raises(TypeError, match="CSR"):
    js.spmm(jnp.ones((5, 7)), jnp.ones((7, 2)))


def test_spmm_kernel_rejects_bad_topology_under_jit():
  # Under jit the topology is traced and cannot be checked in Python: the
  # kernel's handler checks it and raises instead of reading out of bounds.
  if not js.has_kernels(jax.default_backend()):
    pytest.skip("no kernels on this platform")
  if jax.default_backend() != "cpu":
    pytest.skip("only the CPU handler can read the topology")

  @jax.jit
  def f(v, ro, ci, b):
    return js.spmm(js.CSR((v, ro, ci), shape=(2, 3)), b)

  v = jnp.ones(3, jnp.float32)
  b = jnp.ones((3, 2), jnp.float32)
  with pytest.raises(Exception, match="column"):
    f(v, jnp.array([0, 1, 3], jnp.int32), jnp.array([0, 1, 7], jnp.int32), b).block_until_ready()
  with pytest.raises(Exception, match="row_offsets"):
    f(v, jnp.array([0, 2, 1], jnp.int32), jnp.array([0, 1, 2], jnp.int32), b).block_until_ready()


def test_spmm_kernel_names_the_first_bad_index_past_one_scan_block():
  # The handler scans the index arrays in blocks of 4096 entries; a bad entry in
  # a later block must still be found and named exactly.
  if not js.has_kernels(jax.default_backend()) or jax.default_backend() != "cpu":
    pytest.skip("only the CPU handler can read the topology")

  @jax.jit
  def f(v, ro, ci, b):
    return js.spmm(js.CSR((v, ro, ci), shape=(ro.shape[0] - 1, 9000)), b)

  b = jnp.ones((9000, 2), jnp.float32)
  ci = np.arange(9000, dtype=np.int32)
  ci[5000], ci[7000] = -1, 9000
  with pytest.raises(Exception, match=r"column_indices\[5000\] = -1 is out of range"):
    f(jnp.ones(9000, jnp.float32), jnp.array([0, 9000], jnp.int32), jnp.asarray(ci),
      b).block_until_ready()
  ro = np.arange(5001, dtype=np.int32)
  ro[4501] = 4499
  with pytest.raises(Exception, match=r"row_offsets\[4501\] = 4499 < row_offsets\[4500\]"):
    f(jnp.ones(5000, jnp.float32), jnp.asarray(ro), jnp.zeros(5000, jnp.int32),
      b).block_until_ready()
