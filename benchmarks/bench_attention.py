"""CPU benchmark of sparse (local-window) attention against dense masked attention.

jaxsparse.sparse_dot_product_attention(q, k, v, patterns.local(T, window)) (or the
--pattern: local + strided, Longformer, BigBird; then there is no dense_window) (its
default, the fused implementation; jaxsparse_unfused is implementation="unfused":
sddmm -> sparse_softmax -> spmm) against
  dense_mask    jax.nn.dot_product_attention(q, k, v, mask=M) with M the same
                [T, T] boolean local-window mask (XLA implementation);
  dense_window  jax.nn.dot_product_attention(q, k, v, local_window_size=window)
                (XLA builds the same mask internally).
Each is timed forward only and forward + backward (jax.grad of sum(out * g) with
respect to q, k and v), jitted, in one run. Peak memory is read from the
compiled executable's memory_analysis(): temp + arguments + outputs bytes (CPU
has no allocator statistics). Shapes: q, k, v [batch, T, heads, head_dim].

Defaults are the issue's target: T = 4096, 8 heads, head dim 64, window 256
(|i - j| <= 256, i.e. 513 keys per query away from the edges), batch 1, float32.

Timing as bench_cpu.py (_common.time_fn): warm-up, then the median over
--repeats of the mean time per call, in ms; x = peer / jaxsparse (> 1: jaxsparse
faster), mem_x = peer peak / jaxsparse peak.

  cd /tmp && PYTHONPATH=/work/main python /work/main/benchmarks/bench_attention.py
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

import jaxsparse as js

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as C  # noqa: E402


def peak_bytes(jitted, args, constants=0) -> dict:
  """temp + arguments + outputs of the compiled executable, plus `constants` bytes
  (a closed-over topology is a constant of the program, outside those three)."""
  ma = jitted.lower(*args).compile().memory_analysis()
  if ma is None:
    return {}
  d = dict(temp=int(ma.temp_size_in_bytes), args=int(ma.argument_size_in_bytes),
           out=int(ma.output_size_in_bytes), constants=int(constants))
  d["peak"] = d["temp"] + d["args"] + d["out"] + d["constants"]
  return d


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--T", type=int, default=4096)
  ap.add_argument("--heads", type=int, default=8)
  ap.add_argument("--head-dim", type=int, default=64)
  ap.add_argument("--window", type=int, default=256)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--causal", action="store_true", help="causal local window")
  ap.add_argument("--pattern", default="local",
                  choices=["local", "local+strided", "longformer", "bigbird"],
                  help="local: |i - j| <= window; local+strided: the causal window plus "
                       "every --stride-th key before it (Child et al. 2019, the example's "
                       "pattern); longformer: the window plus --global tokens; bigbird: "
                       "blocks of --block, 3 window blocks, --random random and --global "
                       "global blocks. All but local run the fused kernels on a band part "
                       "and the rest (the band split).")
  ap.add_argument("--stride", type=int, default=None, help="local+strided (default: window)")
  ap.add_argument("--global", dest="global_", type=int, default=None,
                  help="longformer: global tokens (default 16); bigbird: global blocks "
                       "(default 2)")
  ap.add_argument("--block", type=int, default=64, help="bigbird block")
  ap.add_argument("--random", type=int, default=3, help="bigbird random blocks per row")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--min-time", type=float, default=0.2)
  ap.add_argument("--min-calls", type=int, default=1)
  ap.add_argument("--out", default=os.path.join(HERE, "results", "cpu_attention.json"))
  args = ap.parse_args(argv)

  T, H, D, W, B = args.T, args.heads, args.head_dim, args.window, args.batch
  rng = np.random.default_rng(0)
  q, k, v, g = (jnp.asarray(rng.standard_normal((B, T, H, D)).astype(np.float32))
                for _ in range(4))
  pt = js.patterns
  local = args.pattern == "local"
  if local:
    csr = pt.local(T, W, causal=args.causal)
    desc = f"window={W}{', causal' if args.causal else ''}"
  elif args.pattern == "local+strided":
    stride = args.stride or W
    csr = pt.union(pt.local(T, W, causal=True), pt.strided(T, stride, causal=True))
    desc = f"local+strided, causal, window={W}, stride={stride}"
  elif args.pattern == "longformer":
    glob = 16 if args.global_ is None else args.global_
    csr = pt.longformer(T, W, glob)
    desc = f"longformer, window={W}, {glob} global tokens"
  else:
    glob = 2 if args.global_ is None else args.global_
    csr = pt.bigbird(T, args.block, args.random, glob)
    desc = f"bigbird, block={args.block}, {args.random} random, {glob} global blocks"
  topo = csr.topology
  mask_np = np.asarray(csr.todense() != 0)
  mask = jnp.asarray(mask_np)
  nnz = int(mask_np.sum())
  window_arg = (W, 0) if args.causal else (W, W)

  # jaxsparse closes over the topology, as a model does (a Flax module holds it): a
  # concrete topology can take the band split (a traced one cannot). The dense peers
  # get the mask as an argument, so XLA cannot fold a [T, T] constant into them.
  def f_js(q, k, v, _unused):
    return js.sparse_dot_product_attention(q, k, v, topo)  # the default: fused

  def f_js_unfused(q, k, v, _unused):
    return js.sparse_dot_product_attention(q, k, v, topo, implementation="unfused")

  def f_mask(q, k, v, mask):
    return jax.nn.dot_product_attention(q, k, v, mask=mask[None, None], implementation="xla")

  def f_window(q, k, v, _unused):
    return jax.nn.dot_product_attention(q, k, v, local_window_size=window_arg,
                                        is_causal=args.causal, implementation="xla")

  none = jnp.zeros((), jnp.float32)
  methods = {"jaxsparse": (f_js, none), "jaxsparse_unfused": (f_js_unfused, none),
             "dense_mask": (f_mask, mask)}
  if local:  # XLA builds the window mask itself
    methods["dense_window"] = (f_window, none)

  def fwdbwd(f):
    def loss(q, k, v, extra):
      return jnp.sum(f(q, k, v, extra) * g)
    return jax.grad(loss, argnums=(0, 1, 2))

  # Correctness: forward and gradients of both jaxsparse paths against dense_mask.
  ref_o = np.asarray(jax.jit(f_mask)(q, k, v, mask))
  ref_g = jax.jit(fwdbwd(f_mask))(q, k, v, mask)
  err_fwd = err_bwd = 0.0
  for f in (f_js, f_js_unfused):
    out_o = np.asarray(jax.jit(f)(q, k, v, none))
    err_fwd = max(err_fwd, float(np.abs(out_o - ref_o).max()))
    out_g = jax.jit(fwdbwd(f))(q, k, v, none)
    err_bwd = max(err_bwd, max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                               for a, b in zip(out_g, ref_g)))
  print(f"# max |jaxsparse - dense_mask| (fused and unfused): forward {err_fwd:.2e}, grads "
        f"{err_bwd:.2e}", file=sys.stderr)
  if err_fwd > 1e-3 or err_bwd > 1e-3:
    raise SystemExit("bench_attention: jaxsparse differs from the dense masked attention")

  # The topology (and with the band split, the parts operand of band_split.py): constants
  # of the program.
  from jaxsparse._src.band_split import band_split, gathers_whole
  from jaxsparse._src.fused_attention import _band_lanes
  split, split_data = band_split(topo, np.float32, _band_lanes())
  gather_whole = split is None and not local and gathers_whole(  # local: the band kernels
      topo.host("row_offsets"), topo.host("column_indices"), topo.shape, _band_lanes())
  constants = {"jaxsparse": int(topo.data.nbytes + (0 if split is None else split_data.nbytes)),
               "jaxsparse_unfused": int(topo.data.nbytes)}

  # Useful FLOPs: QK^T and PV at the nnz entries (forward), 2x that backward.
  flops_fwd = 2 * 2 * nnz * D * H * B
  rows = []
  for mode in ("forward", "forward+backward"):
    row = dict(mode=mode, times_ms={}, memory={}, ratio={}, mem_ratio={})
    for name, (f, extra) in methods.items():
      fn = jax.jit(f if mode == "forward" else fwdbwd(f))
      a = (q, k, v, extra)
      row["memory"][name] = peak_bytes(fn, a, constants.get(name, 0))
      print(f"# {mode} {name}", file=sys.stderr)
      row["times_ms"][name] = 1e3 * C.time_fn(fn, a, args.repeats, args.min_time, args.min_calls)
      jax.clear_caches()
    fl = flops_fwd * (1 if mode == "forward" else 3)
    row["useful_gflops"] = {m: fl / (t * 1e6) for m, t in row["times_ms"].items()}
    for p in [m for m in methods if m != "jaxsparse"]:
      row["ratio"][p] = row["times_ms"][p] / row["times_ms"]["jaxsparse"]
      pk, js_pk = row["memory"][p].get("peak"), row["memory"]["jaxsparse"].get("peak")
      row["mem_ratio"][p] = pk / js_pk if pk and js_pk else None
    rows.append(row)

  split_info = None if split is None else dict(
      band_nnz=split.band_nnz, rest_nnz=split.rest_nnz,
      note="the fused path ran the band split (the band on the band kernels)")
  import jaxlib
  meta = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              jax=jax.__version__, jaxlib=jaxlib.__version__, jaxsparse=js.__version__,
              python=platform.python_version(), cpu=C.cpu_model(),
              isa=js.cpu_instruction_set(), nproc=os.cpu_count(),
              kernels=js.has_kernels("cpu"), T=T, heads=H, head_dim=D, window=W, batch=B,
              causal=args.causal if local else args.pattern == "local+strided", pattern=desc,
              band_split=split_info, gather_whole=gather_whole, nnz=nnz,
              density=nnz / (T * T), dtype="float32",
              repeats=args.repeats, min_time_s=args.min_time,
              err_forward=err_fwd, err_grads=err_bwd,
              peak_memory="compiled memory_analysis(): temp + argument + output bytes, plus for "
                          "jaxsparse the topology operand (a constant of the program)",
              topology_mib={m: b / 2**20 for m, b in constants.items()},
              ratio="peer / jaxsparse (> 1: jaxsparse faster / smaller)",
              command=" ".join([sys.executable] + sys.argv))
  lines = [f"## Attention on CPU: T={T}, heads={H}, head_dim={D}, {desc}, batch={B} "
           f"(density {nnz / (T * T):.3f})", "",
           f"{meta['cpu']} ({meta['isa']} kernels), "
           f"{meta['nproc']} cores; jax {jax.__version__}; times: median ms; "
           "peak: compiled temp+args+outputs, MiB; x = method / jaxsparse (fused, the "
           "default).", "",
           "| mode | method | ms | time x | peak MiB | memory x |", "|---|---|---|---|---|---|"]
  if split_info:
    lines[2:2] = [f"Band split: {split.band_nnz} band entries, {split.rest_nnz} others.", ""]
  elif gather_whole:
    lines[2:2] = ["The gather kernels take the whole topology (no band split).", ""]
  for r in rows:
    for name in methods:
      t = r["times_ms"][name]
      mem = r["memory"][name].get("peak", float("nan")) / 2**20
      tx = r["ratio"].get(name, 1.0)
      mx = r["mem_ratio"].get(name, 1.0) or float("nan")
      lines.append(f"| {r['mode']} | {name} | {t:.1f} | {tx:.2f} | {mem:.0f} | {mx:.1f} |")
  print("\n".join(lines))
  C.write_json(args.out, dict(meta=meta, rows=rows))
  print(f"# wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
  main()
