"""CPU benchmark of one autoregressive decoding step: jaxsparse.flax.SparseMultiHeadAttention
(topology patterns.local(T, window, causal=True)) against flax.nnx.MultiHeadAttention
decoding the same weights with the same window as a mask.

Both modules hold a cache of T positions. The step is timed at positions --positions
(the cache index is set directly; the cache holds random keys and values and is
donated to the jitted step, so it is updated in place). The sparse
step gathers the query row's window (at most window + 1 keys); the dense step attends
over the whole cache with the mask. The outputs are checked against each other
before timing. Timing as bench_cpu.py (_common.time_fn): the median over --repeats of
the mean time of one jitted step, in ms; x = dense / jaxsparse.

  cd /tmp && PYTHONPATH=/work/main python /work/main/benchmarks/bench_decode.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

import numpy as np

import jax
import jax.numpy as jnp
from flax import nnx

import jaxsparse as js
import jaxsparse.flax  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as C  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--T", type=int, default=4096, help="cache length")
  ap.add_argument("--heads", type=int, default=8)
  ap.add_argument("--head-dim", type=int, default=64)
  ap.add_argument("--window", type=int, default=256)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--positions", type=int, nargs="+", default=[255, 2048, 4095])
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--min-time", type=float, default=0.2)
  ap.add_argument("--out", default=os.path.join(HERE, "results", "cpu_decode.json"))
  args = ap.parse_args(argv)

  T, H, D, W, B = args.T, args.heads, args.head_dim, args.window, args.batch
  F = H * D
  topo = js.patterns.local(T, W, causal=True)
  i = np.arange(T)
  window = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] <= W)

  sparse = js.flax.SparseMultiHeadAttention(H, F, topology=topo, rngs=nnx.Rngs(0))
  dense = nnx.MultiHeadAttention(H, F, decode=False, rngs=nnx.Rngs(1))
  # Same weights, own buffers (the jitted steps donate the modules).
  nnx.update(dense, jax.tree.map(lambda a: jnp.array(a, copy=True), nnx.state(sparse, nnx.Param)))
  rng = np.random.default_rng(0)
  for m in (sparse, dense):
    m.init_cache((B, T, F))
  ck = jnp.asarray(rng.standard_normal(sparse.cached_key[...].shape), jnp.float32)
  cv = jnp.asarray(rng.standard_normal(sparse.cached_value[...].shape), jnp.float32)

  # The module (its cache) is donated, so the cache is updated in place as in a real
  # decoding loop; each timed call writes position `pos` again.
  @nnx.jit(donate_argnums=0)
  def step_sparse(m, x):
    return m(x, decode=True)

  @nnx.jit(donate_argnums=0)
  def step_dense(m, x, mask):
    return m(x, mask=mask, decode=True)

  for m in (sparse, dense):  # each its own buffers: donation consumes them
    m.cached_key[...] = jnp.array(ck, copy=True)
    m.cached_value[...] = jnp.array(cv, copy=True)

  def reset(m, pos):
    m.cache_index[...] = jnp.asarray(pos, m.cache_index[...].dtype)

  x = jnp.asarray(rng.standard_normal((B, 1, F)), jnp.float32)
  rows = []
  for pos in args.positions:
    mask = jnp.asarray(window[pos])[None, None, None, :]
    reset(sparse, pos)
    reset(dense, pos)
    out_s = step_sparse(sparse, x)
    out_d = step_dense(dense, x, mask)
    err = float(jnp.max(jnp.abs(out_s - out_d)))
    if err > 1e-4:
      raise SystemExit(f"bench_decode: sparse and dense steps differ by {err} at {pos}")

    def run_sparse():
      reset(sparse, pos)  # keep the cache index fixed across timed calls
      return step_sparse(sparse, x)

    def run_dense():
      reset(dense, pos)
      return step_dense(dense, x, mask)

    t_s = C.time_fn(lambda: run_sparse(), (), args.repeats, args.min_time, 1)
    t_d = C.time_fn(lambda: run_dense(), (), args.repeats, args.min_time, 1)
    keys = int(window[pos].sum())
    rows.append(dict(position=pos, keys_in_window=keys, max_abs_diff=err,
                     times_ms=dict(jaxsparse=1e3 * t_s, dense=1e3 * t_d),
                     ratio=dict(dense=t_d / t_s)))
    print(f"# position {pos}: jaxsparse {1e3 * t_s:.3f} ms, dense {1e3 * t_d:.3f} ms",
          file=sys.stderr)

  import jaxlib
  meta = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              jax=jax.__version__, jaxlib=jaxlib.__version__, jaxsparse=js.__version__,
              python=platform.python_version(), cpu=C.cpu_model(),
              isa=js.cpu_instruction_set(), nproc=os.cpu_count(),
              kernels=js.has_kernels("cpu"), T=T, heads=H, head_dim=D, window=W, batch=B,
              dtype="float32", repeats=args.repeats, min_time_s=args.min_time,
              timed="one jitted decode step (q/k/v/out projections included; cache donated) "
                    "plus setting the cache index, for both",
              ratio="dense / jaxsparse (> 1: jaxsparse faster)",
              command=" ".join([sys.executable] + sys.argv))
  lines = [f"## One decoding step on CPU: cache T={T}, heads={H}, head_dim={D}, causal "
           f"window={W}, batch={B}", "",
           f"{meta['cpu']} ({meta['isa']} kernels), "
           f"{meta['nproc']} cores; jax {jax.__version__}; median ms.", "",
           "| position | keys attended | jaxsparse ms | dense + mask ms | x |",
           "|---|---|---|---|---|"]
  for r in rows:
    t = r["times_ms"]
    lines.append(f"| {r['position']} | {r['keys_in_window']} | {t['jaxsparse']:.3f} | "
                 f"{t['dense']:.3f} | {r['ratio']['dense']:.2f} |")
  print("\n".join(lines))
  C.write_json(args.out, dict(meta=meta, rows=rows))
  print(f"# wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
  main()
