"""CPU benchmark of jaxsparse against its peers on the DLMC sample.

Ops (`--op`):
  spmm     C = A @ B, A sparse [m, k] (a DLMC topology, random values), B dense
           [k, N]. Peers: dense XLA matmul on the dense A, jax.experimental.sparse
           BCSR, scipy.sparse.csr_array (numpy). Unit: useful GFLOP/s = 2*nnz*N / t.
  sddmm    the entries of lhs @ rhs.T at A's nonzeros; lhs [m, d], rhs [n, d] with
           d = 64 (fixed, not N). Peers: dense (lhs @ rhs.T) * mask in XLA,
           jax.experimental.sparse.bcoo_dot_general_sampled. scipy has no SDDMM:
           skipped. Unit: useful GFLOP/s = 2*nnz*d / t.
  softmax  row-wise softmax over A's stored values (one value batch). Peer: dense
           masked jax.nn.softmax(where(mask, x, -inf)). jax.experimental.sparse has
           no sparse softmax (no bcoo_reduce_max): skipped. Unit: GB/s of values
           read + written = 2*nnz*itemsize / t (not FLOP/s).

Workloads: every .smtx under the DLMC root; transformer matrices at N = 256 and
2048; rn50 matrices at N = (the layer's N from rn50_batchsizes.txt) x batch 1
and 8. `--synthetic` adds random uniform 1024x1024 topologies at 50..99%
sparsity with N = 256. sddmm and softmax do not depend on N: one row per matrix.

Timing: one warm-up call (compiles), then `--repeats` repeats; each repeat runs
n back-to-back calls (each followed by block_until_ready) with n chosen so the
repeat lasts >= 0.1 s and n >= 3; the time of a repeat is its mean per call and
the reported time is the median over repeats, in ms. The repeats of jaxsparse and
its peers are interleaved (round by round), so a slow spell of a shared machine
hits all of them alike. ratio = peer_time / jaxsparse_time (> 1: jaxsparse is
faster).

`--in-graph K`: each method runs as K calls on K different inputs inside one jitted
lax.fori_loop (see in_graph); the reported time is per call.

Before timing, jaxsparse's result is checked against a float64 oracle with the
per-dtype tolerance of jaxsparse.testing on every workload (abort if wrong);
peers are checked too (a warning if wrong).

The workload list, timing loop, oracles, geomeans, tables and JSON writing are
shared with bench_gpu.py in _common.py (imported from this directory).

Run from outside the repository so the installed layout is what is imported:
  cd /tmp && PYTHONPATH=/work/main python /work/main/benchmarks/bench_cpu.py --quick
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
import scipy

import jaxsparse as js
from jaxsparse import testing as jst

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)    # _common.py, also under `python -P`
import _common as C  # noqa: E402
from _common import SDDMM_D, DTYPES, UNIT, UNIT_DOC  # noqa: E402

PEERS = {
    "spmm": ("dense", "bcsr", "bcoo", "scipy"),
    "sddmm": ("dense", "bcoo_sampled"),
    "softmax": ("dense",),
}
# Timed after the other methods' interleaved rounds (see _common.run_workload): with
# BCOO interleaved, the transformer geomean vs BCSR was 1.92x / 1.81x (N = 256 /
# 2048) against 2.36x / 2.32x without it, in one session (benchmarks/NOTES.md, change 26).
ISOLATED = ("bcoo",)
SKIPPED = {
    "spmm": {},
    "sddmm": {"scipy": "scipy.sparse has no native SDDMM"},
    "softmax": {"bcoo": "jax.experimental.sparse has no sparse softmax (no bcoo_reduce_max)",
                "scipy": "scipy.sparse has no sparse softmax"},
}
PEER_DOC = {
    "dense": {"spmm": "jax.jit(jnp.matmul) on the dense A",
              "sddmm": "jax.jit((lhs @ rhs.T) * mask)",
              "softmax": "jax.jit(jax.nn.softmax(where(mask, x, -inf)))"},
    "bcsr": {"spmm": "jax.jit(BCSR @ b), jax.experimental.sparse"},
    "bcoo": {"spmm": "jax.jit(BCOO @ b), jax.experimental.sparse (sorted, unique indices)"},
    "bcoo_sampled": {"sddmm": "jax.jit(bcoo_dot_general_sampled)"},
    "scipy": {"spmm": "scipy.sparse.csr_array @ b (numpy, single thread)"},
}


# -- per-op setup: returns {method: (fn, args)}, a check function and the work --------
# A peer whose estimated working set exceeds this is skipped (recorded in the row's
# errors) rather than run: the rn50 layers at N = 12544 x 8 would need gigabytes.
PEER_MEMORY_LIMIT = 8e9


def _too_big(name, est_bytes):
  def fail(*_):
    raise MemoryError(f"skipped: estimated {est_bytes / 1e9:.1f} GB > "
                      f"{PEER_MEMORY_LIMIT / 1e9:.0f} GB for {name}")
  return fail


def setup_spmm(a: js.CSR, w: dict, dtype):
  b, a64, check = C.spmm_inputs(a, w, dtype)
  m, k = a.shape
  n = w["N"]
  item = np.dtype(dtype).itemsize
  dense_est = (m * k + k * n + m * n) * item
  gather_est = 2 * a.nnz * n * item + (k + m) * n * item  # gathered rows of b per nonzero
  fns = {"jaxsparse": (jax.jit(js.spmm), (a, b))}
  if dense_est <= PEER_MEMORY_LIMIT:
    fns["dense"] = (jax.jit(jnp.matmul), (jnp.asarray(a64.toarray(), dtype), b))
  else:
    fns["dense"] = (_too_big("dense", dense_est), ())
  bcsr = jsparse.BCSR((a.values, a.column_indices, a.row_offsets), shape=a.shape)
  fns["bcsr"] = ((jax.jit(lambda x, y: x @ y), (bcsr, b)) if gather_est <= PEER_MEMORY_LIMIT
                 else (_too_big("bcsr", gather_est), ()))
  offsets = np.asarray(a.row_offsets)
  nnz = int(offsets[-1])
  coo = np.stack([np.repeat(np.arange(m, dtype=np.int32), np.diff(offsets)),
                  np.asarray(a.column_indices)[:nnz]], axis=1)
  bcoo = jsparse.BCOO((a.values[:nnz], jnp.asarray(coo)), shape=a.shape, indices_sorted=True,
                      unique_indices=True)
  fns["bcoo"] = ((jax.jit(lambda x, y: x @ y), (bcoo, b)) if gather_est <= PEER_MEMORY_LIMIT
                 else (_too_big("bcoo", gather_est), ()))
  if dtype in (np.float32, np.float64, np.float16):
    fns["scipy"] = (lambda x, y: x @ y, (C.scipy_csr(a, dtype), np.asarray(b)))
  return fns, check, C.work_of("spmm", a, w, dtype)


def setup_sddmm(a: js.CSR, w: dict, dtype):
  lhs, rhs, mask, indices, check = C.sddmm_inputs(a, dtype)
  topo = a.topology
  fns = {
      "jaxsparse": (jax.jit(lambda l, r, t: js.sddmm(l, r, t).values), (lhs, rhs, topo)),
      "dense": (jax.jit(lambda l, r, msk: (l @ r.T) * msk), (lhs, rhs, mask)),
      "bcoo_sampled": (jax.jit(lambda l, r, idx: jsparse.bcoo_dot_general_sampled(
          l, r, idx, dimension_numbers=(([1], [1]), ([], [])))), (lhs, rhs, indices)),
  }
  return fns, check, C.work_of("sddmm", a, w, dtype)


def setup_softmax(a: js.CSR, w: dict, dtype):
  x, mask, check = C.softmax_inputs(a, dtype)
  fns = C.softmax_peers(a, x, mask)
  return fns, check, C.work_of("softmax", a, w, dtype)


SETUP = {"spmm": setup_spmm, "sddmm": setup_sddmm, "softmax": setup_softmax}


# -- in-graph timing (--in-graph K) ------------------------------------------------------
# Per method, the positions of the arguments that change from call to call: the
# activations (sddmm: lhs and rhs; spmm: the dense B) or softmax's values. The sparse
# operand (topology, mask, indices; spmm's dense A: a pruned layer's weights) stays the
# same.
VARYING = {
    "spmm": {"jaxsparse": (1,), "dense": (1,), "bcsr": (1,), "bcoo": (1,)},
    "sddmm": {"jaxsparse": (0, 1), "dense": (0, 1), "bcoo_sampled": (0, 1)},
    "softmax": {"jaxsparse": (0,), "dense": (0,)},
}
IN_GRAPH_SKIPPED = {"scipy": "not a JAX op: it has no in-graph form"}


def in_graph(fn, args, varying, k):
  """A jitted g(*args) that runs fn K times in a lax.fori_loop, the i-th time with the
  arguments at positions `varying` scaled by 1 + (K - 1 - i) / K (so the last call sees
  the originals and is checked like one call), and returns the last call's output.

  The scale depends on the loop counter, so XLA can neither hoist a call (or part of
  one: with sddmm's rhs fixed it hoisted bcoo_dot_general_sampled's gather of the rhs
  rows) out of the loop nor merge the K calls into one (a chain of identical calls in
  one jit is merged: benchmarks/NOTES.md, session 10); the loop runs them one after
  another, each on inputs just written, as an op inside a model sees its
  activations. The time of g / K is what one call costs inside a compiled model,
  without JAX's per-call dispatch. The scaling (one elementwise pass over each varying
  argument; XLA may fuse it into a peer's first op, never into jaxsparse's custom call)
  and the loop's bookkeeping are in every method's time: `loop_floor` times them alone.
  """
  out_shape = jax.eval_shape(fn, *args)

  @jax.jit
  def g(*all_args):
    def scaled(x, i):  # in float32, or float64 for float64 (the last call is exact)
      ct = jnp.promote_types(x.dtype, jnp.float32)
      return (x.astype(ct) * (1 + (k - 1 - i).astype(ct) / k)).astype(x.dtype)

    def body(i, _):
      return fn(*[scaled(x, i) if j in varying else x for j, x in enumerate(all_args)])
    init = jax.tree.map(lambda sd: jnp.zeros(sd.shape, sd.dtype), out_shape)
    return jax.lax.fori_loop(0, k, body, init)

  return g, args


def loop_floor(args, varying, k):
  """The loop of `in_graph` with the call replaced by returning the scaled arguments,
  so each iteration writes them out as it does for an op's operand (returning one
  element of each let XLA compute only that element)."""
  return in_graph(lambda *xs: tuple(xs[j] for j in varying), args, varying, k)


def in_graph_setup(op, k):
  def setup(a, w, dtype):
    if op == "softmax":  # the values vary; the topology is a constant of the jitted fn
      x, mask, check = C.softmax_inputs(a, dtype)
      fns = {"jaxsparse": (jax.jit(lambda v: js.sparse_softmax(a.with_values(v)).values),
                           (a.values,)),
             "dense": C.softmax_peers(a, x, mask)["dense"]}
      work = C.work_of(op, a, w, dtype)
    else:
      fns, check, work = SETUP[op](a, w, dtype)
    fns = {m: in_graph(fn, args, VARYING[op][m], k) for m, (fn, args) in fns.items()
           if m in VARYING[op]}
    # The loop alone, with jaxsparse's varying arguments (not checked; not a peer).
    fns["loop_floor"] = loop_floor(fns["jaxsparse"][1], VARYING[op]["jaxsparse"], k)

    def check_or_skip(method, out, tol_dtype=None):
      if method != "loop_floor":
        check(method, out, tol_dtype)   # the last call's inputs are the originals

    return fns, check_or_skip, work

  return setup


# -- linearity sweep -------------------------------------------------------------------
SWEEP_DENSITIES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
SWEEP_NS = (64, 128, 256, 512, 1024, 2048, 4096)


def _fit(xs, ts):
  """Least-squares t = a + b*x, its R^2, and the log-log slope d log t / d log x."""
  xs, ts = np.asarray(xs, float), np.asarray(ts, float)
  b, a = np.polyfit(xs, ts, 1)
  pred = a + b * xs
  r2 = 1 - np.sum((ts - pred) ** 2) / np.sum((ts - ts.mean()) ** 2)
  slope = np.polyfit(np.log(xs), np.log(ts), 1)[0]
  return dict(intercept_ms=float(a), per_unit_ms=float(b), r2=float(r2), loglog_slope=float(slope))


def sweep(args, dtype):
  """jaxsparse spmm time against nnz (1024 x 1024 uniform, N = 256, density 1..50%)
  and against n (1024 x 1024 at 90% sparsity, N = 64..4096), with dense XLA's time
  for reference; fits of t against nnz and against N."""
  rng = np.random.default_rng(0)

  def one(density, n):
    mask = rng.random((1024, 1024)) < density
    a = js.CSR.from_mask(mask, values=jnp.asarray(rng.standard_normal(int(mask.sum())), dtype))
    b = jnp.asarray(rng.standard_normal((1024, n)), dtype)
    t = C.time_fn(jax.jit(js.spmm), (a, b), args.repeats, args.min_time, args.min_calls)
    td = C.time_fn(jax.jit(jnp.matmul), (jnp.asarray(a.todense()), b), args.repeats,
                   args.min_time, args.min_calls)
    row = dict(density=density, nnz=a.nnz, N=n, time_ms=t * 1e3, dense_ms=td * 1e3,
               gflops=2 * a.nnz * n / t / 1e9, dense_gflops_full=2 * 1024 * 1024 * n / td / 1e9)
    print(f"# sweep density={density} N={n}: {row['time_ms']:.3f} ms, {row['gflops']:.0f} GFLOP/s",
          file=sys.stderr)
    return row

  by_nnz = [one(d, 256) for d in SWEEP_DENSITIES]
  by_n = [one(0.1, n) for n in SWEEP_NS]
  fits = dict(time_vs_nnz=_fit([r["nnz"] for r in by_nnz], [r["time_ms"] for r in by_nnz]),
              time_vs_N=_fit([r["N"] for r in by_n], [r["time_ms"] for r in by_n]))
  return dict(by_nnz=by_nnz, by_N=by_n, fits=fits)


def sweep_markdown(res):
  lines = ["## jaxsparse spmm linearity sweep (1024 x 1024 uniform random, float32)", "",
           "| density | nnz | N | jaxsparse ms | GFLOP/s | dense ms | dense GFLOP/s (all FLOPs) |",
           "|---|---|---|---|---|---|---|"]
  for r in res["by_nnz"] + res["by_N"]:
    lines.append(f"| {r['density']} | {r['nnz']} | {r['N']} | {r['time_ms']:.3f} | "
                 f"{r['gflops']:.0f} | {r['dense_ms']:.3f} | {r['dense_gflops_full']:.0f} |")
  lines.append("")
  for k, f in res["fits"].items():
    lines.append(f"- {k}: t = {f['intercept_ms']:.3g} ms + {f['per_unit_ms']:.3g} ms per unit, "
                 f"R^2 = {f['r2']:.4f}, log-log slope {f['loglog_slope']:.2f}")
  return "\n".join(lines)


def sweep_plot(res, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axs = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, x, label in ((axs[0], "by_nnz", "nnz", "nnz (N = 256)"),
                            (axs[1], "by_N", "N", "N (10% dense)")):
    rs = res[key]
    ax.plot([r[x] for r in rs], [r["time_ms"] for r in rs], "o-", label="jaxsparse")
    ax.plot([r[x] for r in rs], [r["dense_ms"] for r in rs], "s--", label="dense XLA")
    ax.set_xlabel(label)
    ax.set_ylabel("ms")
    ax.legend()
    ax.grid(alpha=0.3)
  fig.suptitle("jaxsparse spmm on CPU: time against nnz and N (1024 x 1024, float32)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


# -- run ------------------------------------------------------------------------------
def run_workload(w, root, args, dtype):
  peers = PEERS[args.op]

  base = in_graph_setup(args.op, args.in_graph) if args.in_graph else SETUP[args.op]

  def setup(a, w, dtype):  # only the chosen peers (--peers) are checked and timed
    fns, check, work = base(a, w, dtype)
    return ({k: v for k, v in fns.items() if k in ("jaxsparse", "loop_floor") or k in peers},
            check, work)

  return C.run_workload(w, root, args, dtype, setup, peers, prog="bench_cpu", isolated=ISOLATED,
                        calls=args.in_graph or 1)


def summaries(rows, op):
  return C.summaries(rows, op, PEERS[op])


def skipped_peers(op, dtype_name, in_graph=0):
  out = dict(SKIPPED[op])
  if in_graph:
    out.update({p: v for p, v in IN_GRAPH_SKIPPED.items() if p in PEERS[op]})
  if op == "spmm" and dtype_name == "bfloat16":
    out["scipy"] = "numpy has no bfloat16"
  return out


def markdown(rows, summary, op, meta):
  unit = UNIT[op]
  peers = C.table_peers(rows, PEERS[op])
  path = "C++ FFI kernels" if meta["kernels"] else "jax.numpy reference lowering, no kernels"
  where = (f"; in-graph: {meta['in_graph']} calls on different inputs in one jitted lax.fori_loop, "
           "time per call" if meta.get("in_graph") else "")
  lines = [f"## jaxsparse {op} on CPU ({path}; {meta['dtype']}{where})", "",
           f"{meta['cpu']} ({meta['isa']} kernels), "
           f"{meta['nproc']} cores; jax {meta['jax']}; {UNIT_DOC[op]}; "
           "times are medians in ms; x = peer time / jaxsparse time (> 1: jaxsparse faster).",
           ""]
  cols = [(unit, lambda r: C.fmt(r["rate"]["jaxsparse"]))]
  if meta.get("in_graph"):
    cols.append(("loop ms", lambda r: C.fmt(r["times_ms"].get("loop_floor"))))
  lines += C.rows_table(rows, op, peers, cols)
  if meta.get("in_graph"):
    lines += ["", "loop ms: the same loop with the call replaced by writing out the scaled "
              "inputs (the scaling and the loop alone); it is inside every method's time."]
  lines += ["", "Geometric mean of x (peer time / jaxsparse time):", ""]
  lines += C.summary_table(summary, PEERS[op])
  skipped = meta["skipped_peers"]
  if skipped:
    lines += [""] + [f"Skipped peer {k}: {v}." for k, v in skipped.items()]
  return "\n".join(lines)


def plot(rows, op, path, meta):
  C.plot(rows, op, path, meta, PEERS[op], where="CPU")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--op", choices=("spmm", "sddmm", "softmax"), default="spmm")
  ap.add_argument("--dlmc", default=None, help="DLMC root (default: jaxsparse.testing.dlmc_root())")
  ap.add_argument("--no-dlmc", action="store_true", help="skip the DLMC matrices")
  ap.add_argument("--synthetic", action="store_true",
                  help="add random uniform 1024x1024 matrices at 50..99%% sparsity")
  ap.add_argument("--model", choices=["transformer", "rn50"], default=None,
                  help="only this DLMC model (default: both)")
  ap.add_argument("--quick", action="store_true",
                  help="a handful of matrices, 3 repeats, shorter repeats")
  ap.add_argument("--peers", default=None,
                  help="comma-separated subset of the op's peers to time (default: all), "
                       "e.g. --peers bcsr for a pairwise run")
  ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
  ap.add_argument("--repeats", type=int, default=None, help="repeats (default 7, quick 3)")
  ap.add_argument("--min-time", type=float, default=None,
                  help="minimum seconds per repeat (default 0.1, quick 0.05)")
  ap.add_argument("--min-calls", type=int, default=3, help="minimum calls per repeat")
  ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/cpu_<op>.json)")
  ap.add_argument("--plot", default=None, help="PNG of speedup vs sparsity per peer")
  ap.add_argument("--in-graph", type=int, default=0, metavar="K",
                  help="time each method as K calls on K different inputs inside one jitted "
                       "lax.fori_loop (the cost of the op inside a compiled model, without the "
                       "per-call dispatch); times are per call; default JSON "
                       "results/cpu_<op>_in_graph.json")
  ap.add_argument("--sweep", action="store_true",
                  help="spmm only: time against nnz and against N (linearity); writes "
                       "results/cpu_sweep.json (or --out) and --plot")
  args = ap.parse_args(argv)
  if args.peers is not None:
    chosen = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    unknown = [p for p in chosen if p not in PEERS[args.op]]
    if unknown or not chosen:
      raise SystemExit(f"bench_cpu: --peers for --op {args.op} takes a subset of "
                       f"{','.join(PEERS[args.op])}; got {args.peers!r}")
    PEERS[args.op] = chosen
  args.repeats = args.repeats or (3 if args.quick else 7)
  args.min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.1)
  suffix = "_in_graph" if args.in_graph else ""
  out_path = args.out or os.path.join(HERE, "results", f"cpu_{args.op}{suffix}.json")
  dtype = DTYPES[args.dtype]
  if args.dtype == "float64":
    jax.config.update("jax_enable_x64", True)

  if jax.default_backend() != "cpu":
    raise SystemExit(f"bench_cpu: jax's default backend is {jax.default_backend()!r}; run with "
                     "JAX_PLATFORMS=cpu")
  if args.sweep:
    res = sweep(args, dtype)
    res["meta"] = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                       jax=jax.__version__, cpu=C.cpu_model(),
                       isa=js.cpu_instruction_set(), nproc=os.cpu_count(),
                       kernels=js.has_kernels("cpu"), dtype=args.dtype,
                       command=" ".join([sys.executable] + sys.argv))
    print(sweep_markdown(res))
    C.write_json(args.out or os.path.join(HERE, "results", "cpu_sweep.json"), res)
    if args.plot:
      sweep_plot(res, args.plot)
    return
  kernels = js.has_kernels("cpu")
  path_name = "C++ FFI kernels" if kernels else "jax.numpy reference lowering (no kernels built)"
  print(f"# jaxsparse CPU path: {path_name}", file=sys.stderr)

  root = args.dlmc or jst.dlmc_root()
  workloads = []
  if not args.no_dlmc:
    if root is None:
      raise SystemExit("bench_cpu: no DLMC root found; pass --dlmc PATH or --no-dlmc")
    workloads += C.dlmc_workloads(root, args.op, args.quick, prog="bench_cpu", model=args.model)
  if args.synthetic:
    workloads += C.synthetic_workloads(args.op, args.quick)
  if not workloads:
    raise SystemExit("bench_cpu: no workloads (use --synthetic with --no-dlmc)")

  rows = []
  t_start = time.time()
  for i, w in enumerate(workloads):
    size = {"spmm": f"N={w['N']}", "sddmm": f"d={w['N']}"}.get(args.op, "")
    print(f"# [{i + 1}/{len(workloads)}] {w['model']} {w['name']} {size}", file=sys.stderr)
    rows.append(run_workload(w, root, args, dtype))
    jax.clear_caches()
  summary = summaries(rows, args.op)

  import jaxlib
  meta = dict(
      date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      op=args.op, dtype=args.dtype, jax=jax.__version__, jaxlib=jaxlib.__version__,
      jaxsparse=js.__version__, numpy=np.__version__, scipy=scipy.__version__,
      python=platform.python_version(), cpu=C.cpu_model(),
      isa=js.cpu_instruction_set(), nproc=os.cpu_count(),
      affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      kernels=kernels, path="kernels" if kernels else "reference",
      command=" ".join([sys.executable] + sys.argv),
      dlmc_root=root, quick=args.quick, repeats=args.repeats, min_time_s=args.min_time,
      min_calls=args.min_calls, unit=UNIT_DOC[args.op],
      sddmm_d=SDDMM_D if args.op == "sddmm" else None,
      peers={p: PEER_DOC[p][args.op] for p in PEERS[args.op]},
      timed_apart=[p for p in ISOLATED if p in PEERS[args.op]],
      skipped_peers=skipped_peers(args.op, args.dtype, args.in_graph), in_graph=args.in_graph,
      ratio="peer_time / jaxsparse_time (>1: jaxsparse faster)",
      wall_s=round(time.time() - t_start, 1))
  print(markdown(rows, summary, args.op, meta))
  C.write_json(out_path, dict(meta=meta, summary=summary, rows=rows))
  print(f"# wrote {out_path}", file=sys.stderr)
  if args.plot:
    plot(rows, args.op, args.plot, meta)


if __name__ == "__main__":
  main()
