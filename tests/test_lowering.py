"""The CUDA lowering is wired (checked on the CPU by lowering for 'cuda'), and
the reference lowering agrees with the kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import testing as jst
from jaxsparse._src import ffi


def _all_ops(a, b, lhs, rhs):
  s = js.sddmm(lhs, rhs, a)
  p = js.sparse_softmax(s)
  return js.spmm(p, b).sum() + js.transpose(p).values.sum()


def test_cuda_lowering_is_wired(rng):
  a = jst.random_csr(rng, 16, 16, 0.3)
  args = (a, jnp.ones((16, 8), jnp.float32), jnp.ones((16, 4), jnp.float32),
          jnp.ones((16, 4), jnp.float32))
  f = jax.jit(jax.grad(lambda lhs, *r: _all_ops(r[0], r[1], lhs, r[2]), argnums=0))
  lowered = f.trace(args[2], a, args[1], args[3]).lower(lowering_platforms=("cuda",))
  text = lowered.as_text()
  if not ffi.has_kernels("cuda"):
    pytest.fail("jaxsparse was built without the CUDA extension (nvcc missing?)")
  for op in ("spmm", "sddmm", "softmax", "softmax_grad", "permute"):
    assert f"jaxsparse_{op}_cuda" in text, op


def test_tokens_major_ops_lower_for_cuda_through_spmm_and_sddmm(rng):
  # spmm_nt and sddmm_tn have CPU kernels only; on CUDA they lower to the spmm and
  # sddmm kernels between XLA transposes (forward and backward).
  from jaxsparse._src.spmm import spmm_nt
  a = jst.random_csr(rng, 16, 12, 0.3)
  g = jax.jit(jax.grad(lambda v, x: jnp.sin(spmm_nt(a.with_values(v), x)).sum(), argnums=(0, 1)))
  text = g.trace(a.values, jnp.ones((8, 12), jnp.float32)).lower(
      lowering_platforms=("cuda",)).as_text()
  if not ffi.has_kernels("cuda"):
    pytest.fail("jaxsparse was built without the CUDA extension (nvcc missing?)")
  assert "jaxsparse_spmm_cuda" in text and "jaxsparse_sddmm_cuda" in text
  assert "_nt_" not in text and "_tn_" not in text


def test_reference_matches_kernels(rng):
  # The jnp reference (default lowering on platforms without kernels) and the
  # platform kernels compute the same thing.
  from jaxsparse._src.sddmm import _sddmm_reference, sddmm_p
  from jaxsparse._src.softmax import _softmax_reference, sparse_softmax_p
  from jaxsparse._src.spmm import _spmm_reference, spmm_p
  a = jst.random_csr(rng, 33, 29, 0.3, np.float32, batch=(2,), empty_rows=0.2)
  t = a.topology.arrays
  tp = a.topology.params
  b = jnp.asarray(rng.standard_normal((1, 29, 7)), jnp.float32)
  l = jnp.asarray(rng.standard_normal((2, 33, 5)), jnp.float32)
  r = jnp.asarray(rng.standard_normal((1, 29, 5)), jnp.float32)
  np.testing.assert_allclose(jax.jit(_spmm_reference, static_argnames=("shape", "transposed"))(
      a.values, b, *t, **tp), spmm_p.bind(a.values, b, *t, **tp),
      rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.jit(_sddmm_reference, static_argnames=("shape", "transposed"))(
      l, r, *t, **tp), sddmm_p.bind(l, r, *t, **tp), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.jit(_softmax_reference, static_argnames=("shape", "transposed"))(
      a.values, *t, **tp), sparse_softmax_p.bind(a.values, *t, **tp),
      rtol=1e-6, atol=1e-7)
  # The tokens-major forms.
  from jaxsparse._src.sddmm import _sddmm_tn_reference, sddmm_tn_p
  from jaxsparse._src.spmm import _spmm_nt_reference, spmm_nt_p
  x = jnp.swapaxes(b, 1, 2)
  np.testing.assert_allclose(jax.jit(_spmm_nt_reference, static_argnames=("shape", "transposed"))(
      a.values, x, *t, **tp), spmm_nt_p.bind(a.values, x, *t, **tp), rtol=1e-5, atol=1e-5)
  lt, rt = jnp.swapaxes(l, 1, 2), jnp.swapaxes(r, 1, 2)
  np.testing.assert_allclose(jax.jit(_sddmm_tn_reference, static_argnames=("shape", "transposed"))(
      lt, rt, *t, **tp), sddmm_tn_p.bind(lt, rt, *t, **tp), rtol=1e-5, atol=1e-5)
  # The transposed view of the same packed topology (a.T's values on it).
  tt = a.topology.T
  vt = jnp.take(a.values, a.topology.t_perm, axis=-1)
  bt = jnp.asarray(rng.standard_normal((1, 33, 4)), jnp.float32)
  np.testing.assert_allclose(jax.jit(_spmm_reference, static_argnames=("shape", "transposed"))(
      vt, bt, *tt.arrays, **tt.params), spmm_p.bind(vt, bt, *tt.arrays, **tt.params),
      rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("segments, msg", [
    ([0, 3, 4, 5, 9, 3], "column_indices = topology\\[4 : \\+5\\] does not lie inside"),
    ([0, 3, -1, 5, 9, 3], "column_indices = topology\\[-1 : \\+5\\] does not lie inside"),
    ([0, 3, 3, 5], "segments attribute has 4 entries, expected 6"),
])
def test_kernel_rejects_bad_topology_segments(segments, msg):
  # The kernels take the packed topology whole; each array is an (offset, size)
  # pair that must lie inside it.
  if not js.has_kernels("cpu"):
    pytest.fail("jaxsparse was built without the CPU kernels")
  data = jnp.zeros((8,), jnp.int32)
  out = jax.ShapeDtypeStruct((1, 2, 3), jnp.float32)
  call = jax.ffi.ffi_call("jaxsparse_spmm_cpu", out)
  with pytest.raises(Exception, match=msg):
    jax.block_until_ready(call(jnp.ones((1, 5), jnp.float32), data,
                               jnp.ones((1, 4, 3), jnp.float32),
                               segments=np.array(segments, np.int64)))
