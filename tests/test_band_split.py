"""The band split of the fused attention (jaxsparse/_src/band_split.py): topologies
that are a band plus scattered entries (local + strided, Longformer, BigBird) run the
band kernels on the band and the row kernels on the rest, combined in the CPU
lowering. Checked: which topologies split and into what; the split path against
float64 (the unfused path, the same mask and dropout draw) and against the unsplit
fused path, forward, gradients and JVPs, under jit and vmap; a traced topology does
not split; and the row kernels' item order (heads innermost, NOTES change 45) changes
no bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import patterns
from jaxsparse._src.band_split import band_split, gathers_whole, split_host
from jaxsparse._src.csr import as_topology
from jaxsparse.attention import sparse_dot_product_attention as sdpa
from jaxsparse.testing import tolerance


def _host(topo):
  t = as_topology(topo, "test")
  return t, t.host("row_offsets"), t.host("column_indices")


def _entries(ro, ci):
  rows = np.repeat(np.arange(len(ro) - 1), np.diff(ro))
  return rows, np.asarray(ci[:ro[-1]])


SPLIT = {
    "local+strided": lambda: patterns.union(patterns.local(96, 40, causal=True),
                                            patterns.strided(96, 12, causal=True)),
    "longformer": lambda: patterns.longformer(80, 16, 3),
    # blocks of 12: its 8- and 16-row blocks straddle BigBird's (blocks of 16 run whole
    # on the gather kernels: test_gather_whole)
    "bigbird": lambda: patterns.bigbird(96, 12, 1, 1),
    "rectangular": lambda: js.CSR.from_mask(  # a band through (i, i / 2) plus two columns
        np.array([[abs(j - i // 2) <= 14 or j in (3, 50) for j in range(60)]
                  for i in range(100)])),
}


@pytest.mark.parametrize("name", list(SPLIT))
@pytest.mark.parametrize("lanes", [8, 16])
def test_split_parts(name, lanes):
  """The parts operand holds the band, a band the kernels take, and the rest, every
  other entry; the positions map each part's entries to the whole topology's storage
  order."""
  t, ro, ci = _host(SPLIT[name]())
  split, data = band_split(t, np.float32, lanes)
  assert split is not None and split.band_nnz >= 0.25 * ro[-1] and split.rest_nnz > 0
  assert band_split(t, np.float32, lanes)[0] is split and hash(split) == hash(split)
  data = np.asarray(data)
  rows, cols = _entries(ro, ci)
  for part in ("band", "rest"):
    p = js.Topology(split.take(data, part), shape=t.shape)
    pos = split.take(data, part + "_pos")
    p_rows, p_cols = _entries(p.host("row_offsets"), p.host("column_indices"))
    np.testing.assert_array_equal(p_rows, rows[pos])
    np.testing.assert_array_equal(p_cols, cols[pos])
    # the segments the kernels get point at the part inside the operand
    offset, size = split.segments(part, "column_indices")
    np.testing.assert_array_equal(data[offset:offset + size], p.host("column_indices"))
  np.testing.assert_array_equal(
      np.sort(np.concatenate([split.take(data, "band_pos"), split.take(data, "rest_pos")])),
      np.arange(ro[-1]))
  band = js.Topology(split.take(data, "band"), shape=t.shape)
  bro, bci = band.host("row_offsets"), band.host("column_indices")
  lo, hi = bci[bro[:-1]], bci[bro[1:] - 1]
  assert np.all(np.diff(bro) > 0)
  assert np.all(hi - lo + 1 == np.diff(bro))          # contiguous rows
  assert np.all(np.diff(lo) >= 0) and np.all(np.diff(hi) >= 0)


def test_no_split(monkeypatch):
  """No split for a band already (local window), a random mask (no band of a quarter of the
  entries), a row without entries, nnz = 0, a window too narrow for 16-row blocks, a
  traced topology, float64, no band kernels, or JAXSPARSE_ATTN_BAND_SPLIT=0."""
  rng = np.random.default_rng(0)
  holed = np.array(SPLIT["longformer"]().todense() != 0)
  holed[30] = False
  for topo, lanes in ((patterns.local(64, 20), 16),
                      (js.CSR.from_mask(rng.random((64, 64)) < 0.3), 16),
                      (js.CSR.from_mask(holed), 16),
                      (js.CSR.from_mask(np.zeros((5, 6), bool)), 16),
                      (patterns.union(patterns.local(256, 24, causal=True),
                                      patterns.strided(256, 24, causal=True)), 16)):
    t, ro, ci = _host(topo)
    assert split_host(ro, ci, t.shape, lanes) is None
  t = as_topology(SPLIT["longformer"](), "test")
  assert band_split(t, np.float32, 16)[0] is not None
  assert band_split(t, np.float64, 16) == (None, None)
  assert band_split(t, np.float32, 0) == (None, None)
  monkeypatch.setenv("JAXSPARSE_ATTN_BAND_SPLIT", "0")
  assert band_split(t, np.float32, 16) == (None, None)
  monkeypatch.delenv("JAXSPARSE_ATTN_BAND_SPLIT")
  seen = []
  jax.jit(lambda d: seen.append(band_split(js.Topology(d, shape=t.shape), np.float32, 16)))(
      t.data)
  assert seen == [(None, None)]


@pytest.mark.parametrize("lanes", [8, 16])
def test_gather_whole(lanes, monkeypatch):
  """BigBird with blocks of a multiple of the lanes runs whole on the gather kernels
  (no split): its rows in each block of lanes share their columns. The split patterns,
  whose rows shift or interleave within a block, do not; nor with
  JAXSPARSE_CPU_ATTN_GATHER=0, which then splits BigBird."""
  t, ro, ci = _host(patterns.bigbird(128, 16, 2, 1))
  assert gathers_whole(ro, ci, t.shape, lanes)
  assert split_host(ro, ci, t.shape, lanes) is None
  assert band_split(t, np.float32, lanes) == (None, None)
  for name in SPLIT:
    s, sro, sci = _host(SPLIT[name]())
    assert not gathers_whole(sro, sci, s.shape, lanes)
  assert not gathers_whole(ro, ci, t.shape, 0)
  monkeypatch.setenv("JAXSPARSE_CPU_ATTN_GATHER", "0")
  assert not gathers_whole(ro, ci, t.shape, lanes)
  assert split_host(ro, ci, t.shape, lanes) is not None


def _needs_band_kernels():
  if js.cpu_instruction_set() not in ("avx2", "avx512"):
    pytest.skip("the band split needs the band kernels (AVX2 or AVX-512)")


def _fused(topo, **kw):
  attn = lambda q, k, v: sdpa(q, k, v, topo, implementation="fused", **kw)  # noqa: E731
  return attn


def _calls(f, *args):
  """How many forward and backward kernel calls the jitted gradient of f lowers to."""
  hlo = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a)), argnums=(0, 1, 2))).lower(*args).as_text()
  return hlo.count("jaxsparse_attention_fwd_cpu"), hlo.count("jaxsparse_attention_bwd_cpu")


def _run(attn, args, ct):
  f = jax.jit(attn)
  g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v) * ct), argnums=(0, 1, 2)))
  return [np.asarray(f(*args))] + [np.asarray(x) for x in g(*args)]


def _unsplit(monkeypatch, fn):
  """fn() traced with the split off (new jitted functions)."""
  monkeypatch.setenv("JAXSPARSE_ATTN_BAND_SPLIT", "0")
  try:
    return fn()
  finally:
    monkeypatch.delenv("JAXSPARSE_ATTN_BAND_SPLIT")


@pytest.mark.parametrize("name,opts", [
    ("local+strided", "plain"), ("local+strided", "is_causal"), ("longformer", "mask"),
    ("bigbird", "dropout"), ("rectangular", "plain"), ("longformer", "gqa"),
    ("bigbird", "mask_dropout_per_head")])
def test_split_matches_float64(rng, monkeypatch, name, opts):
  _needs_band_kernels()
  topo = SPLIT[name]()
  m, n = topo.shape
  heads, kv_heads, d = (4, 2, 24) if opts == "gqa" else (2, 2, 32)
  q = jnp.asarray(rng.standard_normal((2, m, heads, d)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((2, n, kv_heads, d)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((2, n, kv_heads, d)), jnp.float32)
  ct = jnp.asarray(rng.standard_normal((2, m, heads, d)), jnp.float32)
  kw = {}
  if opts == "is_causal":
    kw = dict(is_causal=True)
  elif opts == "mask":
    kw = dict(mask=jnp.asarray(rng.random((2, 1, m, n)) < 0.7))
  elif opts == "dropout":
    kw = dict(dropout_rate=0.2, dropout_rng=jax.random.key(3))
  elif opts == "mask_dropout_per_head":
    kw = dict(mask=jnp.asarray(rng.random((1, heads, m, n)) < 0.8), dropout_rate=0.3,
              dropout_rng=jax.random.key(4), broadcast_dropout=False)
  args = (q, k, v)
  assert _calls(_fused(topo, **kw), *args) == (2, 2)     # the band and the rest
  split = _run(_fused(topo, **kw), args, ct)
  assert _unsplit(monkeypatch, lambda: _calls(_fused(topo, **kw), *args)) == (1, 1)
  whole = _unsplit(monkeypatch, lambda: _run(_fused(topo, **kw), args, ct))
  with jax.enable_x64(True):
    args64 = tuple(x.astype(np.float64) for x in args)
    u = lambda q, k, v: sdpa(q, k, v, topo, implementation="unfused", **kw)  # noqa: E731
    ref = _run(u, args64, ct.astype(np.float64))
  tol = tolerance(np.float32) * (1 + d) * 8
  for a, b in zip(split, ref):
    assert a.dtype == np.float32
    np.testing.assert_allclose(a.astype(np.float64), b, rtol=tol,
                               atol=tol * max(1.0, float(np.abs(b).max())))
  for a, b in zip(split, whole):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_split_jvp_vmap_and_traced_topology(rng, monkeypatch):
  """Forward mode and second derivatives go through the primitives' own rules (the
  split is a lowering detail); vmap keeps the split; a topology passed into jit as
  an argument is traced, so it takes one call, with the same values."""
  _needs_band_kernels()
  topo = SPLIT["local+strided"]()
  m = topo.shape[0]
  q, k, v, tq, tk, tv = (jnp.asarray(rng.standard_normal((2, m, 2, 16)), jnp.float32)
                         for _ in range(6))
  attn = _fused(topo)
  out, t_out = jax.jit(lambda *a: jax.jvp(attn, a[:3], a[3:]))(q, k, v, tq, tk, tv)
  out_u, t_out_u = _unsplit(monkeypatch, lambda: jax.jit(
      lambda *a: jax.jvp(attn, a[:3], a[3:]))(q, k, v, tq, tk, tv))
  np.testing.assert_allclose(out, out_u, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(t_out, t_out_u, rtol=1e-4, atol=1e-4)
  hvp = lambda q: jax.grad(lambda q: jnp.sum(jnp.sin(  # noqa: E731
      jax.grad(lambda q: jnp.sum(jnp.sin(attn(q, k, v))))(q))))(q)
  np.testing.assert_allclose(jax.jit(hvp)(q), _unsplit(monkeypatch, lambda: jax.jit(hvp)(q)),
                             rtol=1e-4, atol=1e-4)
  qb = jnp.stack([q, 2 * q])
  vm = jax.jit(jax.vmap(attn, in_axes=(0, None, None)))
  assert vm.lower(qb, k, v).as_text().count("jaxsparse_attention_fwd_cpu") == 2
  np.testing.assert_allclose(vm(qb, k, v)[1], jax.jit(attn)(2 * q, k, v), rtol=1e-6, atol=1e-6)
  t = as_topology(topo, "test")
  traced = jax.jit(lambda data, q, k, v: sdpa(q, k, v, js.Topology(data, shape=t.shape)))
  assert traced.lower(t.data, q, k, v).as_text().count("jaxsparse_attention_fwd_cpu") == 1
  np.testing.assert_allclose(traced(t.data, q, k, v), out, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("layout", ["api", "gqa", "broadcast"])
def test_row_kernel_item_order_changes_no_bit(rng, monkeypatch, layout):
  """The row kernels run the items of the API's [batch, seq, heads, d] with the heads
  innermost; JAXSPARSE_CPU_ATTN_ORDER=0 (read per call) runs them batch entry by
  batch entry. Each item is computed alone, so the results are bitwise equal."""
  m = n = 37
  mask = rng.random((m, n)) < 0.3
  mask[[4, 20]] = False
  topo = js.CSR.from_mask(mask)
  heads, kv_heads = (6, 2) if layout == "gqa" else (3, 3)
  q = jnp.asarray(rng.standard_normal((2, m, heads, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1 if layout == "broadcast" else 2, n, kv_heads, 16)),
                  jnp.float32)
  v = jnp.asarray(rng.standard_normal((2, n, kv_heads, 16)), jnp.float32)
  ct = jnp.asarray(rng.standard_normal((2, m, heads, 16)), jnp.float32)
  kw = dict(mask=jnp.asarray(rng.random((2, heads, m, n)) < 0.8), dropout_rate=0.2,
            dropout_rng=jax.random.key(1), broadcast_dropout=False)
  f = jax.jit(_fused(topo, **kw))
  g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(_fused(topo, **kw)(q, k, v) * ct),
                       argnums=(0, 1, 2)))
  res = {}
  for order in ("1", "0"):
    monkeypatch.setenv("JAXSPARSE_CPU_ATTN_ORDER", order)
    res[order] = [np.asarray(f(q, k, v))] + [np.asarray(x) for x in g(q, k, v)]
  for a, b in zip(res["1"], res["0"]):
    assert np.array_equal(a, b)


@pytest.mark.parametrize("layout,dtype,d,causal", [
    ("api", jnp.float32, 16, False), ("gqa", jnp.float32, 40, True),
    ("broadcast", jnp.bfloat16, 32, False), ("api", jnp.float32, 72, True)])
def test_row_kernel_stored_weights_change_no_bit(rng, monkeypatch, layout, dtype, d, causal):
  """The row kernels' backward stores each entry's two weights in pass 1 for pass 2
  where they fit JAXSPARSE_CPU_ATTN_BWD_WEIGHTS bytes (read per call; 0: never), and
  recomputes them otherwise. The weights are the same values, taken in the same order,
  so dq, dk and dv are bitwise equal, with masks, dropout and causal rows too."""
  m, n = 41, 37
  mask = rng.random((m, n)) < 0.3
  mask[[4, 20]] = False
  mask[:, 7] = False
  topo = js.CSR.from_mask(mask)
  heads, kv_heads = (6, 2) if layout == "gqa" else (3, 3)
  q = jnp.asarray(rng.standard_normal((2, m, heads, d)), dtype)
  k = jnp.asarray(rng.standard_normal((1 if layout == "broadcast" else 2, n, kv_heads, d)), dtype)
  v = jnp.asarray(rng.standard_normal((2, n, kv_heads, d)), dtype)
  ct = jnp.asarray(rng.standard_normal((2, m, heads, d)), dtype)
  kw = dict(mask=jnp.asarray(rng.random((2, heads, m, n)) < 0.8), dropout_rate=0.2,
            dropout_rng=jax.random.key(1), broadcast_dropout=False, is_causal=causal)
  g = jax.jit(jax.grad(lambda q, k, v: jnp.sum((_fused(topo, **kw)(q, k, v) * ct).astype(
      jnp.float32)), argnums=(0, 1, 2)))
  res = {}
  for limit in ("1e12", "0"):
    monkeypatch.setenv("JAXSPARSE_CPU_ATTN_BWD_WEIGHTS", limit)
    res[limit] = [np.asarray(x.astype(jnp.float32)) for x in g(q, k, v)]
  for a, b in zip(res["1e12"], res["0"]):
    assert np.all(np.isfinite(a)) and np.any(a != 0)
    assert np.array_equal(a, b)
