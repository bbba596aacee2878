"""jaxsparse.pruning: magnitude masks, the polynomial schedule, lottery-ticket
rewinding, sparsify, and the lottery-ticket example."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxsparse import pruning
from jaxsparse.flax.linear import SparseLinear

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _highest_matmul_precision():
  # Dense references must not use TF32/bf16 passes on GPUs (the 1e-5 tolerances).
  with jax.default_matmul_precision("highest"):
    yield


def params_tree(seed=0):
  r = np.random.default_rng(seed)
  return {"a": {"kernel": jnp.asarray(r.normal(size=(10, 7)), jnp.float32),
                "bias": jnp.asarray(r.normal(size=(7,)), jnp.float32)},
          "b": [jnp.asarray(r.normal(size=(7, 3)) * 5, jnp.float32),
                jnp.asarray(r.normal(size=(2, 3, 4)), jnp.float32)]}


def kernels(tree):
  return [tree["a"]["kernel"], tree["b"][0], tree["b"][1]]


class MLP(nnx.Module):
  def __init__(self, rngs, use_bias=True):
    self.layers = nnx.List([nnx.Linear(8, 16, rngs=rngs),
                            nnx.Linear(16, 12, use_bias=use_bias, rngs=rngs)])
    self.out = nnx.Linear(12, 4, bias_init=nnx.initializers.normal(1.0), rngs=rngs)

  def __call__(self, x):
    for layer in self.layers:
      x = jax.nn.relu(layer(x))
    return self.out(x)


# -- magnitude masks -----------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_layer_masks_exact_and_largest(sparsity):
  params = params_tree()
  masks = pruning.magnitude_masks(params, sparsity, scope="layer")
  assert jax.tree.structure(masks) == jax.tree.structure(params)
  assert bool(jnp.all(masks["a"]["bias"]))                        # biases are not pruned
  for w, m in zip(kernels(params), kernels(masks)):
    w, m = np.abs(np.asarray(w)), np.asarray(m)
    assert m.shape == w.shape and m.dtype == bool
    assert int((~m).sum()) == round(sparsity * w.size)
    if 0 < m.sum() < m.size:
      assert w[m].min() >= w[~m].max()


@pytest.mark.parametrize("sparsity", [0.25, 0.8, 0.98])
def test_global_masks_exact_and_largest(sparsity):
  params = params_tree()
  masks = pruning.magnitude_masks(params, sparsity, scope="global")
  w = np.concatenate([np.abs(np.asarray(k)).ravel() for k in kernels(params)])
  m = np.concatenate([np.asarray(k).ravel() for k in kernels(masks)])
  assert int((~m).sum()) == round(sparsity * w.size)
  assert w[m].min() >= w[~m].max()
  # The scaled-up layer keeps more than its share: global is not per layer.
  per_layer = [1 - np.asarray(k).mean() for k in kernels(masks)]
  assert max(per_layer) - min(per_layer) > 0.05
  assert pruning.mask_sparsity(masks) == pytest.approx(round(sparsity * w.size) / w.size)


def test_masks_nested_under_jit_and_nnx_inputs():
  params = params_tree()
  m1 = pruning.magnitude_masks(params, 0.5)
  # Train-like perturbation; previously pruned entries stay pruned.
  moved = jax.tree.map(lambda p: p + 0.5 * jnp.sign(p), pruning.apply_masks(params, m1))
  m2 = jax.jit(lambda p, m: pruning.magnitude_masks(p, 0.8, masks=m))(moved, m1)
  for a, b in zip(kernels(m1), kernels(m2)):
    assert not np.any(np.asarray(b) & ~np.asarray(a))
  model = MLP(nnx.Rngs(0))
  from_module = pruning.magnitude_masks(model, 0.7, scope="global")
  from_state = pruning.magnitude_masks(nnx.state(model, nnx.Param), 0.7, scope="global")
  for a, b in zip(jax.tree.leaves(from_module), jax.tree.leaves(from_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  n = sum(l.kernel[...].size for l in (*model.layers, model.out))
  assert pruning.mask_sparsity(from_state) == pytest.approx(round(0.7 * n) / n)


@pytest.mark.parametrize("sparsity", [-0.01, 1.0, 2, None])
def test_bad_sparsity_and_scope(sparsity):
  with pytest.raises(ValueError, match="sparsity"):
    pruning.magnitude_masks(params_tree(), sparsity)
  with pytest.raises(ValueError, match="sparsity"):
    pruning.sparsify(MLP(nnx.Rngs(0)), sparsity if sparsity is not None else 1.0)


def test_bad_scope():
  with pytest.raises(ValueError, match="scope"):
    pruning.magnitude_masks(params_tree(), 0.5, scope="model")
  with pytest.raises(ValueError, match="scope"):
    pruning.sparsify(MLP(nnx.Rngs(0)), 0.5, scope="model")


def test_mask_updates_keep_pruned_weights_zero():
  params = params_tree()
  masks = pruning.magnitude_masks(params, 0.6)
  params = pruning.apply_masks(params, masks)
  tx = optax.chain(optax.adamw(1e-2, weight_decay=0.1), pruning.mask_updates(masks))
  state = tx.init(params)
  loss = lambda p: sum(jnp.sum((x - 1.0) ** 2) for x in jax.tree.leaves(p))
  for _ in range(3):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  for w, m in zip(kernels(params), kernels(masks)):
    assert np.all(np.asarray(w)[~np.asarray(m)] == 0)
    assert np.all(np.asarray(w)[np.asarray(m)] != 0)


# -- polynomial schedule -------------------------------------------------------------------
def test_polynomial_schedule():
  kw = dict(initial_sparsity=0.1, final_sparsity=0.9, begin_step=100, end_step=1100)
  assert pruning.polynomial_sparsity(100, **kw) == pytest.approx(0.1)
  assert pruning.polynomial_sparsity(1100, **kw) == pytest.approx(0.9)
  assert pruning.polynomial_sparsity(0, **kw) == pytest.approx(0.1)
  assert pruning.polynomial_sparsity(5000, **kw) == pytest.approx(0.9)
  assert pruning.polynomial_sparsity(600, **kw) == pytest.approx(0.9 - 0.8 * 0.5 ** 3)
  steps = np.arange(0, 1300, 7)
  vals = np.array([pruning.polynomial_sparsity(int(s), **kw) for s in steps])
  assert np.all(np.diff(vals) >= 0)
  assert np.all(np.diff(vals[(steps > 100) & (steps < 1100)]) > 0)
  arr = jax.jit(lambda s: pruning.polynomial_sparsity(s, **kw))(jnp.asarray(steps))
  np.testing.assert_allclose(np.asarray(arr), vals, rtol=1e-6, atol=1e-6)
  lin = pruning.polynomial_sparsity(600, **kw, exponent=1)
  assert lin == pytest.approx(0.5)
  with pytest.raises(ValueError, match="end_step"):
    pruning.polynomial_sparsity(0, initial_sparsity=0, final_sparsity=0.5, begin_step=5,
                                end_step=5)
  with pytest.raises(ValueError, match="final_sparsity"):
    pruning.polynomial_sparsity(0, initial_sparsity=0, final_sparsity=1.0, begin_step=0,
                                end_step=5)


# -- lottery tickets -------------------------------------------------------------------------
def test_lottery_ticket_rewind_restores_init():
  model = MLP(nnx.Rngs(0))
  saved = pruning.snapshot(model)
  x = jax.random.normal(jax.random.key(1), (32, 8), jnp.float32)
  y = jax.random.normal(jax.random.key(2), (32, 4), jnp.float32)
  opt = nnx.Optimizer(model, optax.adam(1e-1), wrt=nnx.Param)
  for _ in range(5):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    opt.update(model, grads)
  trained = nnx.state(model, nnx.Param)
  rewound, masks = pruning.prune_and_rewind(trained, saved, 0.75, scope="layer")
  for (path, w0), (_, wt), (_, m), (_, wr) in zip(
      *(jax.tree_util.tree_flatten_with_path(t)[0] for t in (saved, trained, masks, rewound))):
    w0, wt, m, wr = (np.asarray(a) for a in (w0, wt, m, wr))
    assert not np.allclose(w0, wt)                                 # training moved it
    if w0.ndim == 2:
      np.testing.assert_array_equal(wr[m], w0[m])                  # survivors: init values
      assert np.all(wr[~m] == 0)
      assert int((~m).sum()) == round(0.75 * m.size)
      assert np.abs(wt)[m].min() >= np.abs(wt)[~m].max()          # chosen by trained |w|
    else:
      np.testing.assert_array_equal(wr, w0)                        # biases rewound
  # Apply to the model and retrain with masks kept.
  nnx.update(model, rewound)
  opt = nnx.Optimizer(model, optax.chain(optax.adam(1e-1), pruning.mask_updates(masks)),
                      wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
  opt.update(model, grads)
  for k, m in zip((model.layers[0].kernel, model.layers[1].kernel, model.out.kernel),
                  (masks["layers"][0]["kernel"], masks["layers"][1]["kernel"],
                   masks["out"]["kernel"])):
    assert np.all(np.asarray(k[...])[~np.asarray(m)] == 0)


# -- sparsify ------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_sparsify_matches_pruned_dense(scope):
  model = MLP(nnx.Rngs(0), use_bias=False)
  model.shared = model.out                                        # one layer, two references
  x = jax.random.normal(jax.random.key(1), (2, 5, 8), jnp.float32)
  before = model(x)
  sparse = pruning.sparsify(model, 0.8, scope=scope)
  np.testing.assert_allclose(np.asarray(model(x)), np.asarray(before))   # input untouched
  assert isinstance(model.out, nnx.Linear)
  layers = [*sparse.layers, sparse.out]
  assert all(isinstance(l, SparseLinear) for l in layers) and sparse.shared is sparse.out
  assert sparse.layers[1].bias is None and sparse.out.bias is not None
  masks = pruning.magnitude_masks(model, 0.8, scope=scope)
  nnx.update(model, pruning.apply_masks(nnx.state(model, nnx.Param), masks))
  for d, s in zip([*model.layers, model.out], layers):
    np.testing.assert_array_equal(np.asarray(s.dense_kernel()), np.asarray(d.kernel[...]))
    if d.bias is not None:
      np.testing.assert_array_equal(np.asarray(s.bias[...]), np.asarray(d.bias[...]))
  np.testing.assert_allclose(np.asarray(sparse(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
  sizes = [d.kernel[...].size for d in [*model.layers, model.out]]
  expected = (sum(sizes) - round(0.8 * sum(sizes)) if scope == "global"
              else sum(n - round(0.8 * n) for n in sizes))
  assert sum(l.nnz for l in layers) == expected


def test_sparsify_keeps_nonzeros_and_single_linear():
  model = MLP(nnx.Rngs(0))
  masks = pruning.magnitude_masks(model, 0.9, scope="global")
  nnx.update(model, pruning.apply_masks(nnx.state(model, nnx.Param), masks))
  sparse = pruning.sparsify(model)                                 # sparsity=None: nonzeros
  x = jax.random.normal(jax.random.key(1), (7, 8), jnp.float32)
  np.testing.assert_allclose(np.asarray(sparse(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
  n = sum(l.kernel[...].size for l in (*model.layers, model.out))
  assert sum(l.nnz for l in (*sparse.layers, sparse.out)) == n - round(0.9 * n)
  single = pruning.sparsify(model.out, 0.5)
  assert isinstance(single, SparseLinear) and single.nnz == 24


# -- the example ---------------------------------------------------------------------------
def test_lottery_ticket_example_quick():
  # The example imports the same jaxsparse as this process (installed or not).
  import jaxsparse
  pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(jaxsparse.__file__)))
  env = dict(os.environ, PYTHONPATH=pkg_parent + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "lottery_ticket.py"),
                         "--quick"], capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  out = proc.stdout
  assert "sparsity" in out and "sparse ms" in out and "dense ms" in out
  rows = [l for l in out.splitlines() if l.strip().startswith(("0 |", "1 |", "2 |"))]
  assert len(rows) == 3, out
  assert "90.0" in rows[1] and "98.00%" in rows[2], out
