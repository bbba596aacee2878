"""The CSR type: constructors, conversions, validation of bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import jaxsparse as js
from jaxsparse import testing as jst


def _example():
  # 3 x 4 with an empty middle row.
  values = np.array([1.0, 2.0, 3.0], np.float32)
  row_offsets = np.array([0, 2, 2, 3], np.int32)
  cols = np.array([0, 3, 1], np.int32)
  dense = np.array([[1, 0, 0, 2], [0, 0, 0, 0], [0, 3, 0, 0]], np.float64)
  return values, row_offsets, cols, dense


def test_constructor_and_properties():
  values, ro, ci, dense = _example()
  a = js.CSR((values, ro, ci), shape=(3, 4))
  assert a.shape == (3, 4) and a.nnz == 3 and a.dtype == np.float32
  np.testing.assert_array_equal(a.todense(), dense)
  np.testing.assert_array_equal(a.row_indices, [0, 2, 1])
  np.testing.assert_array_equal(a.T.todense(), dense.T)
  b = a.with_values(jnp.array([4.0, 5.0, 6.0]))
  np.testing.assert_array_equal(b.todense()[0], [4, 0, 0, 5])


def test_fromdense_from_mask_from_scipy_agree(rng):
  x = rng.standard_normal((9, 11)) * (rng.random((9, 11)) < 0.3)
  a = js.CSR.fromdense(jnp.asarray(x))
  np.testing.assert_array_equal(a.todense(), x)
  m = js.CSR.from_mask(x != 0, values=jnp.asarray(x))
  np.testing.assert_array_equal(m.values, a.values)
  s = js.CSR.from_scipy(sp.csr_array(x))
  np.testing.assert_array_equal(s.todense(), x)
  np.testing.assert_array_equal(s.to_scipy().toarray(), x)
  ones = js.CSR.from_mask(x != 0)
  assert ones.dtype == np.float32 and np.all(ones.values == 1)
  # Batched values from a dense [..., m, k] stack.
  stack = jnp.asarray(np.stack([x, 2 * x]))
  mb = js.CSR.from_mask(x != 0, values=stack)
  np.testing.assert_array_equal(mb.todense(), np.stack([x, 2 * x]))


def test_from_scipy_unsorted_duplicates():
  # scipy input may be unsorted / have duplicates: canonicalized, not rejected.
  s = sp.csr_array((np.array([1.0, 2.0, 3.0]), np.array([2, 0, 2]), np.array([0, 3])),
                   shape=(1, 3))
  np.testing.assert_array_equal(js.CSR.from_scipy(s).todense(), [[2.0, 0.0, 4.0]])


def test_fromdense_under_jit_with_capacity(rng):
  x = rng.standard_normal((7, 6)) * (rng.random((7, 6)) < 0.4)
  nnz = int((x != 0).sum())
  for cap in (nnz, nnz + 5):  # exact, and with padding past row_offsets[m]
    f = jax.jit(lambda x: js.CSR.fromdense(x, nnz=cap))
    a = f(jnp.asarray(x))
    assert a.nnz == cap
    np.testing.assert_array_equal(a.todense(), x)
    b = rng.standard_normal((6, 3))
    np.testing.assert_allclose(jax.jit(js.spmm)(a, b), x @ b, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(a.T.todense(), x.T)
    lhs, rhs = rng.standard_normal((7, 2)), rng.standard_normal((6, 2))
    s = js.sddmm(lhs, rhs, a)
    np.testing.assert_allclose(s.todense(), (lhs @ rhs.T) * (x != 0), atol=1e-12)
    np.testing.assert_array_equal(np.asarray(s.values)[int(a.row_offsets[-1]):], 0)
    sm = js.sparse_softmax(a)
    np.testing.assert_array_equal(np.asarray(sm.values)[int(a.row_offsets[-1]):], 0)


def test_load_smtx(dlmc_files):
  files = dlmc_files
  path = next(f for f in files if "initial_conv" in f)
  a = js.io.load_smtx(path, dtype=jnp.bfloat16, seed=3)
  with open(path) as f:
    m, k, nnz = (int(v) for v in f.readline().split(","))
  assert a.shape == (m, k) and a.nnz == nnz and a.dtype == jnp.bfloat16
  b = js.io.load_smtx(path, dtype=jnp.bfloat16, seed=3)
  np.testing.assert_array_equal(a.values, b.values)


def test_pytree_and_jit_roundtrip(rng):
  a = jst.random_csr(rng, 5, 6, 0.5)
  leaves, tree = jax.tree_util.tree_flatten(a)
  assert len(leaves) == 2  # values and the packed topology
  b = jax.jit(lambda a: a)(a)
  np.testing.assert_array_equal(b.todense(), a.todense())
  # Integer leaves get float0 tangents; only values are differentiable.
  g = jax.grad(lambda a: jnp.sum(a.todense() ** 2), allow_int=True)(a)
  np.testing.assert_allclose(g.values, 2 * a.values)


def test_topology_is_one_packed_leaf_and_its_transposed_view(rng):
  # The eight index arrays travel as one int32 leaf; .T reads the same leaf with
  # the forward and transposed arrays swapped.
  a = jst.random_csr(rng, 7, 5, 0.4, np.float32, empty_rows=0.3)
  t = a.topology
  assert len(jax.tree_util.tree_leaves(t)) == 1 and t.data.dtype == jnp.int32
  ref = js.CSR.from_scipy(a.to_scipy().T.tocsr())
  tt = t.T
  assert tt.T.transposed is False and tt.data is t.data and tt.shape == (5, 7)
  np.testing.assert_array_equal(tt.row_offsets, ref.row_offsets)
  np.testing.assert_array_equal(tt.column_indices, ref.column_indices)
  np.testing.assert_array_equal(tt.t_row_offsets, t.row_offsets)
  np.testing.assert_array_equal(tt.t_perm, t.t_perm_inv)
  np.testing.assert_array_equal(jnp.take(a.values, t.t_perm), ref.values)
  for name in t._fields:
    np.testing.assert_array_equal(tt.host(name), getattr(tt, name))
  # A closed-over topology is readable on the host under jit; a traced one is not.
  jax.jit(lambda x: x + int(t.host("row_offsets")[-1]))(1)
  with pytest.raises(ValueError, match="needs a concrete topology"):
    jax.jit(lambda t: t.host("row_offsets"))(t)
  with pytest.raises(ValueError, match="does not fit shape"):
    js.Topology(jnp.zeros((t.data.shape[0] - 1,), jnp.int32), shape=t.shape)


# -- bad input ----------------------------------------------------------------------
BAD = [
    # (description, values, row_offsets, column_indices, shape, exception, message)
    ("column out of range", [1., 2.], [0, 1, 2], [0, 4], (2, 4), ValueError, "out of range"),
    ("negative column", [1., 2.], [0, 1, 2], [0, -1], (2, 4), ValueError, "out of range"),
    ("unsorted row", [1., 2.], [0, 2, 2], [3, 1], (2, 4), ValueError, "sorted and unique"),
    ("duplicate in row", [1., 2.], [0, 2, 2], [1, 1], (2, 4), ValueError, "sorted and unique"),
    ("offsets decrease", [1., 2.], [0, 2, 1, 2], [0, 1], (3, 4), ValueError, "non-decreasing"),
    ("offsets not ending at nnz", [1., 2.], [0, 1, 1], [0, 1], (2, 4), ValueError, "end at nnz"),
    ("offsets not starting at 0", [1., 2.], [1, 1, 2], [0, 1], (2, 4), ValueError, "start at 0"),
    ("wrong offsets length", [1., 2.], [0, 2], [0, 1], (2, 4), ValueError, "m \\+ 1"),
    ("float indices", [1., 2.], [0., 1., 2.], [0, 1], (2, 4), TypeError, "integer dtype"),
    ("float column indices", [1., 2.], [0, 1, 2], [0., 1.], (2, 4), TypeError, "integer dtype"),
    ("values length", [1., 2., 3.], [0, 1, 2], [0, 1], (2, 4), ValueError, "values must have"),
    ("integer values", [1, 2], [0, 1, 2], [0, 1], (2, 4), TypeError, "values must be"),
    ("offsets overflow int32", [1., 2.], [0, 1, 2**31], [0, 1], (2, 4), ValueError,
     "overflow int32"),
    ("shape overflows int32", [1., 2.], [0, 1, 2], [0, 1], (2, 2**31), ValueError,
     "does not fit int32"),
    ("bad shape", [1., 2.], [0, 1, 2], [0, 1], (2,), ValueError, "shape must be"),
]


@pytest.mark.parametrize("desc,values,ro,ci,shape,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_constructor_rejects(desc, values, ro, ci, shape, exc, msg):
  with pytest.raises(exc, match=msg):
    js.CSR((np.asarray(values), np.asarray(ro), np.asarray(ci)), shape=shape)


def test_int64_indices_accepted_and_narrowed():
  a = js.CSR((np.ones(2, np.float32), np.array([0, 1, 2], np.int64), np.array([0, 1], np.int64)),
             shape=(2, 2))
  assert a.row_offsets.dtype == np.int32 and a.column_indices.dtype == np.int32


def test_other_constructor_errors():
  with pytest.raises(ValueError, match="2-D"):
    js.CSR.fromdense(jnp.ones((2, 2, 2)))
  with pytest.raises(TypeError, match="x must be"):
    js.CSR.fromdense(jnp.ones((2, 2), jnp.int32))
  with pytest.raises(ValueError, match="nnz=K"):
    jax.jit(lambda x: js.CSR.fromdense(x))(jnp.ones((2, 2)))
  with pytest.raises(ValueError, match="values must be dense"):
    js.CSR.from_mask(np.eye(3, dtype=bool), values=jnp.ones((4,)))
  with pytest.raises(ValueError, match="bad .smtx header"):
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".smtx", delete=False) as f:
      f.write("garbage\n0\n\n")
    js.io.load_smtx(f.name)
