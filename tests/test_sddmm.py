"""SDDMM against a float64 oracle: awkward topologies, DLMC, dtypes, eager/jit/vmap, grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import testing as jst
from jaxsparse.testing import check_grads

DTYPES = [np.float32, np.float64, np.float16, jnp.bfloat16]


def _dense(rng, shape, dtype):
  return jnp.asarray(rng.standard_normal(shape), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", jst.CASES, ids=lambda c: c.name)
def test_sddmm_cases(case, dtype, rng):
  a = jst.case_csr(case, rng, dtype)
  # d = 37: odd, past a vector width; d = 1 in test_sddmm_d1.
  lhs, rhs = _dense(rng, (case.m, 37), dtype), _dense(rng, (case.k, 37), dtype)
  out = jax.jit(js.sddmm)(lhs, rhs, a)
  assert isinstance(out, js.CSR) and out.values.dtype == np.dtype(dtype)
  ref, scale = jst.sddmm_oracle(lhs, rhs, a)
  jst.assert_close(out.values, ref, scale, dtype, f"sddmm {case.name}")


@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, jnp.bfloat16], ids=lambda d: np.dtype(d).name)
def test_sddmm_head_dims(d, dtype, rng):
  # The head dims compiled as constants, with rows long enough (~48 nonzeros) for
  # the groups of 8 that prefetch the next group's rhs rows; some rows empty.
  a = jst.random_csr(rng, 20, 120, 0.4, dtype, empty_rows=0.2)
  lhs, rhs = _dense(rng, (20, d), dtype), _dense(rng, (120, d), dtype)
  ref, scale = jst.sddmm_oracle(lhs, rhs, a)
  jst.assert_close(jax.jit(js.sddmm)(lhs, rhs, a).values, ref, scale, dtype, f"sddmm d={d}")


def test_sddmm_d1(rng):
  a = jst.random_csr(rng, 9, 14, 0.4)
  lhs, rhs = _dense(rng, (9, 1), np.float32), _dense(rng, (14, 1), np.float32)
  ref, scale = jst.sddmm_oracle(lhs, rhs, a)
  jst.assert_close(js.sddmm(lhs, rhs, a).values, ref, scale, np.float32)


@pytest.mark.parametrize("batch_l,batch_r", [((3,), (3,)), ((3,), ()), ((), (3,)), ((2, 3), (1, 3))])
def test_sddmm_batched(batch_l, batch_r, rng):
  a = jst.random_csr(rng, 15, 21, 0.3, empty_rows=0.2)
  lhs, rhs = _dense(rng, batch_l + (15, 8), np.float32), _dense(rng, batch_r + (21, 8), np.float32)
  out = jax.jit(js.sddmm)(lhs, rhs, a)
  batch = np.broadcast_shapes(batch_l, batch_r)
  assert out.values.shape == batch + (a.nnz,)
  ref, scale = jst.sddmm_oracle(np.broadcast_to(jst.to_f64(lhs), batch + (15, 8)),
                                np.broadcast_to(jst.to_f64(rhs), batch + (21, 8)), a)
  jst.assert_close(out.values, ref, scale, np.float32)


def test_sddmm_vmap(rng):
  a = jst.random_csr(rng, 16, 12, 0.35)
  ls, rs = _dense(rng, (4, 16, 6), np.float32), _dense(rng, (4, 12, 6), np.float32)
  f = lambda l, r: js.sddmm(l, r, a).values
  for in_axes in ((0, 0), (0, None), (None, 0)):
    out = jax.jit(jax.vmap(f, in_axes=in_axes))(ls if in_axes[0] is not None else ls[0],
                                                rs if in_axes[1] is not None else rs[0])
    for i in range(4):
      ref, scale = jst.sddmm_oracle(ls[i] if in_axes[0] is not None else ls[0],
                                    rs[i] if in_axes[1] is not None else rs[0], a)
      jst.assert_close(out[i], ref, scale, np.float32, f"vmap {in_axes} [{i}]")


@pytest.mark.parametrize("case", [c for c in jst.CASES if c.name in
                                  ("odd_empty_rows", "dense_row", "empty", "single_col")],
                         ids=lambda c: c.name)
def test_sddmm_grads(case, rng):
  a = jst.case_csr(case, rng, np.float64)
  lhs, rhs = rng.standard_normal((case.m, 3)), rng.standard_normal((case.k, 3))
  check_grads(lambda l, r: js.sddmm(l, r, a).values, (lhs, rhs), order=2, modes=["fwd", "rev"])
  # Batched lhs with a shared rhs.
  check_grads(lambda l, r: js.sddmm(l, r, a).values, (rng.standard_normal((2, case.m, 3)), rhs),
              order=2, modes=["fwd", "rev"])


def test_sddmm_dlmc(rng, dlmc_files):
  files = dlmc_files
  f = jax.jit(js.sddmm)
  for path in files:
    a = js.io.load_smtx(path)
    lhs, rhs = _dense(rng, (a.shape[0], 32), np.float32), _dense(rng, (a.shape[1], 32), np.float32)
    ref, scale = jst.sddmm_oracle(lhs, rhs, a)
    jst.assert_close(f(lhs, rhs, a).values, ref, scale, np.float32, path)


def test_sddmm_uses_ffi_on_cpu(rng):
  if jax.default_backend() != "cpu":
    pytest.skip("checks the CPU lowering")
  a = jst.random_csr(rng, 8, 8, 0.5)
  text = jax.jit(js.sddmm).lower(jnp.ones((8, 4)), jnp.ones((8, 4)), a).as_text()
  assert "jaxsparse_sddmm_cpu" in text


def test_sddmm_bad_input(rng):
  a = jst.random_csr(rng, 5, 7, 0.5)
  f32 = jnp.float32
  with pytest.raises(ValueError, match="feature dims"):
    js.sddmm(jnp.ones((5, 3), f32), jnp.ones((7, 4), f32), a)
  with pytest.raises(ValueError, match="lhs must be"):
    js.sddmm(jnp.ones((6, 3), f32), jnp.ones((7, 3), f32), a)
  with pytest.raises(ValueError, match="rhs must be"):
    js.sddmm(jnp.ones((5, 3), f32), jnp.ones((8, 3), f32), a)
  with pytest.raises(TypeError, match="lhs must be"):
    js.sddmm(jnp.ones((5, 3), jnp.int32), jnp.ones((7, 3), f32), a)
  with pytest.raises(TypeError, match="rhs must be"):
    js.sddmm(jnp.ones((5, 3), f32), jnp.ones((7, 3), jnp.complex64), a)
  with pytest.raises(ValueError, match="batch dims"):
    js.sddmm(jnp.ones((2, 5, 3), f32), jnp.ones((3, 7, 3), f32), a)
  with pytest.raises(TypeError, match="topology"):
    js.sddmm(jnp.ones((5, 3), f32), jnp.ones((7, 3), f32), jnp.ones((5, 7)))
