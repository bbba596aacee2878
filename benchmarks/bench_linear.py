"""CPU benchmark of weight-sparse linear layers in training: a transformer FFN block
`x + SparseLinear(h -> d)(gelu(SparseLinear(d -> h)(x)))` (jaxsparse.flax's forward,
`sparse_linear_apply`, on uniform random topologies at --sparsities), jitted value_and_grad of a mean squared error,
against the same block in dense XLA (`flax.nnx.Linear`'s math, `x @ W`), and
against jax.experimental.sparse BCOO kernels (`x @ W` with W a BCOO, differentiable
in its values). The "transposed" row is jaxsparse's layout before the tokens-major
kernels (spmm on x.T, the result transposed back; the backward an SDDMM and an SpMM
on transposed operands), kept as the ablation of NOTES change 53.

Every method computes the same function of the same weights; the losses and the
gradients w.r.t. the first layer's weights are checked against the dense block's
(at the kept entries) before timing. Timing as bench_cpu.py (_common.time_fns: the
median over --repeats of the mean time of one call, the methods' repeats
interleaved, BCOO's timed apart afterwards with at most 3 repeats); x = peer time /
jaxsparse time (> 1: jaxsparse faster).

  cd /tmp && PYTHONPATH=/work/main python /work/main/benchmarks/bench_linear.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp
from jax.experimental import sparse as jsparse
from flax import nnx

import jaxsparse as js
import jaxsparse.flax  # noqa: F401
from jaxsparse._src.csr import CSR
from jaxsparse._src.spmm import spmm
from jaxsparse.flax.linear import sparse_linear_apply

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as C  # noqa: E402

METHODS = ("jaxsparse", "transposed", "dense", "bcoo")


def block_losses(d, h, sparsity, tgt):
  """{method: (loss(params, x), params)} for one FFN block, all with the same weights."""
  l1 = js.flax.SparseLinear(d, h, sparsity=sparsity, use_bias=False, rngs=nnx.Rngs(0))
  l2 = js.flax.SparseLinear(h, d, sparsity=sparsity, use_bias=False, rngs=nnx.Rngs(1))
  k1, k2 = l1.sparse_kernel_t(), l2.sparse_kernel_t()   # W^T in CSR, [out, in]
  t1, t2 = k1.topology, k2.topology
  w1, w2 = jnp.asarray(l1.dense_kernel()), jnp.asarray(l2.dense_kernel())

  def mse(y, x):
    return jnp.mean((x + y - tgt) ** 2)

  def sparse_loss(p, x):  # the layers' own forward (spmm_nt), as a function of the values
    lin = lambda v, t, x: sparse_linear_apply(x, v, None, t, None)  # noqa: E731
    return mse(lin(p[1], t2, jax.nn.gelu(lin(p[0], t1, x))), x)

  def transposed_loss(p, x):
    lin = lambda v, t, x: spmm(CSR._from_parts(v, t), x.T).T  # noqa: E731
    return mse(lin(p[1], t2, jax.nn.gelu(lin(p[0], t1, x))), x)

  def dense_loss(p, x):
    return mse(jax.nn.gelu(x @ p[0]) @ p[1], x)

  def bcoo_of(w):
    b = jsparse.BCOO.fromdense(w)
    return b.data, b.indices

  i1, i2 = bcoo_of(w1)[1], bcoo_of(w2)[1]

  def bcoo_loss(p, x):
    m1 = jsparse.BCOO((p[0], i1), shape=(d, h))
    m2 = jsparse.BCOO((p[1], i2), shape=(h, d))
    return mse(jax.nn.gelu(x @ m1) @ m2, x)

  return {
      "jaxsparse": (sparse_loss, (k1.values, k2.values)),
      "transposed": (transposed_loss, (k1.values, k2.values)),
      "dense": (dense_loss, (w1, w2)),
      "bcoo": (bcoo_loss, (bcoo_of(w1)[0], bcoo_of(w2)[0])),
  }, (k1, w1, i1)


def first_layer_grad_dense(method, g, k1, i1, d, h):
  """The gradient w.r.t. the first layer as a dense [d, h] array (float64)."""
  g0 = np.asarray(g[0], np.float64)
  if method == "dense":
    return g0
  out = np.zeros((d, h))
  if method == "bcoo":
    idx = np.asarray(i1)
    out[idx[:, 0], idx[:, 1]] = g0
    return out
  return np.asarray(k1.with_values(jnp.asarray(g0, jnp.float32)).todense(), np.float64).T


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--tokens", type=int, default=4096, help="batch x sequence, flattened")
  ap.add_argument("--d", type=int, default=512, help="model width")
  ap.add_argument("--h", type=int, default=2048, help="hidden width")
  ap.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95, 0.98])
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--min-time", type=float, default=0.3)
  ap.add_argument("--no-bcoo", action="store_true", help="skip the BCOO peer (slow)")
  ap.add_argument("--out", default=os.path.join(HERE, "results", "cpu_linear.json"))
  args = ap.parse_args(argv)
  t_start = time.perf_counter()
  n, d, h = args.tokens, args.d, args.h
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
  tgt = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
  methods = [m for m in METHODS if not (args.no_bcoo and m == "bcoo")]
  rows = []
  for sp in args.sparsities:
    fns, (k1, w1, i1) = block_losses(d, h, sp, tgt)
    jitted = {m: (jax.jit(jax.value_and_grad(fns[m][0])), (fns[m][1], x)) for m in methods}
    # Check: the same loss and first-layer gradient as the dense block (at the kept
    # entries; the dense gradient is nonzero elsewhere too).
    ref_loss, ref_g = jitted["dense"][0](*jitted["dense"][1])
    keep = np.asarray(w1) != 0
    ref_g1 = np.asarray(ref_g[0], np.float64)
    errors = {}
    for m in methods:
      loss, g = jitted[m][0](*jitted[m][1])
      g1 = first_layer_grad_dense(m, g, k1, i1, d, h)
      scale = np.abs(ref_g1[keep]).max()
      errors[m] = dict(loss=abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)),
                       grad=float(np.abs(g1[keep] - ref_g1[keep]).max() / scale))
      if errors[m]["loss"] > 1e-4 or errors[m]["grad"] > 1e-3:
        raise SystemExit(f"bench_linear: {m} differs from dense at sparsity {sp}: {errors[m]}")
    # BCOO is timed apart, after the others: its calls take seconds and churn GBs of
    # memory, and interleaved it slowed whichever method ran next by up to 3x.
    times = C.time_fns({m: f for m, f in jitted.items() if m != "bcoo"}, args.repeats,
                       args.min_time, 1)
    if "bcoo" in jitted:
      times["bcoo"] = C.time_fns({"bcoo": jitted["bcoo"]}, min(args.repeats, 3), 0.0, 1)["bcoo"]
    t_js = times["jaxsparse"]
    row = dict(sparsity=sp, nnz=[int(k1.nnz), int(fns["jaxsparse"][1][1].shape[0])],
               times_ms={m: 1e3 * t for m, t in times.items()},
               ratio={m: t / t_js for m, t in times.items() if m != "jaxsparse"},
               errors=errors)
    rows.append(row)
    print(f"# sparsity {sp}: " + ", ".join(f"{m} {1e3 * t:.2f} ms" for m, t in times.items()),
          file=sys.stderr)

  import jaxlib
  meta = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              jax=jax.__version__, jaxlib=jaxlib.__version__, jaxsparse=js.__version__,
              python=platform.python_version(), cpu=C.cpu_model(),
              isa=js.cpu_instruction_set(), nproc=os.cpu_count(),
              kernels=js.has_kernels("cpu"), tokens=n, d=d, h=h, dtype="float32",
              repeats=args.repeats, min_time_s=args.min_time,
              timed="jitted value_and_grad of the FFN block's MSE (both layers' weights)",
              timed_apart=["bcoo"],
              ratio="peer / jaxsparse (> 1: jaxsparse faster)",
              command=" ".join([sys.executable] + sys.argv),
              wall_s=round(time.perf_counter() - t_start, 1))
  lines = [f"## Sparse FFN block training step on CPU: {n} tokens, {d} -> {h} -> {d}", "",
           f"{meta['cpu']} ({meta['isa']} kernels), {meta['nproc']} cores; jax "
           f"{jax.__version__}; float32; median ms of a jitted value_and_grad.", "",
           "| sparsity | jaxsparse ms | " + " | ".join(f"{m} ms" for m in methods[1:]) + " | " +
           " | ".join(f"x {m}" for m in methods[1:]) + " |",
           "|---|---|" + "---|" * (2 * (len(methods) - 1))]
  for r in rows:
    t = r["times_ms"]
    lines.append(f"| {r['sparsity']:.2f} | {t['jaxsparse']:.2f} | " +
                 " | ".join(f"{t[m]:.2f}" for m in methods[1:]) + " | " +
                 " | ".join(f"{r['ratio'][m]:.2f}" for m in methods[1:]) + " |")
  print("\n".join(lines))
  C.write_json(args.out, dict(meta=meta, rows=rows))
  print(f"# wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
  main()
