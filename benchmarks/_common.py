"""Shared parts of bench_cpu.py and bench_gpu.py: the workload list, the timing
loop, the float64 oracles and correctness checks, the per-workload run, the
geometric-mean summaries, the Markdown tables and the JSON writing.

Not a module of the jaxsparse package: the scripts import it from their own
directory (they put it on sys.path, which `python -P` leaves out).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp
import scipy.sparse

import jaxsparse as js
from jaxsparse import testing as jst

SDDMM_D = 64
SYNTH_SPARSITIES = (0.50, 0.70, 0.80, 0.90, 0.95, 0.98, 0.99)
SYNTH_SPARSITIES_QUICK = (0.70, 0.90, 0.99)
DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
          "bfloat16": jnp.bfloat16}
OPS = ("spmm", "sddmm", "softmax")


# -- workloads --------------------------------------------------------------------
def read_rn50_ns(root: str) -> dict[str, int]:
  path = os.path.join(root, "rn50_batchsizes.txt")
  ns = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        name, n = line.split(",")
        ns[name.strip()] = int(n)
  return ns


def short_name(path: str, root: str) -> str:
  """`method/target/layer` with the long layer names abbreviated."""
  rel = os.path.relpath(path, root)
  parts = rel[:-len(".smtx")].split(os.sep)
  layer = parts[-1]
  for a, b in (("body_encoder_layer_", "enc"), ("body_decoder_layer_", "dec"),
               ("_self_attention_multihead_attention_", "_attn_"),
               ("_fully_connected", ""), ("bottleneck_projection_", "bnproj_"),
               ("bottleneck_", "bn"), ("_block_group_projection_block_group", "_projbg"),
               ("_block_group", "_bg"), ("magnitude_pruning", "mag"),
               ("random_pruning", "rand"), ("l0_regularization", "l0"),
               ("variational_dropout", "vd"), ("extended_magnitude_pruning", "extmag")):
    layer = layer.replace(a, b)
  method = parts[1] if len(parts) > 3 else ""
  for a, b in (("extended_magnitude_pruning", "extmag"), ("magnitude_pruning", "mag"),
               ("random_pruning", "rand"), ("l0_regularization", "l0"),
               ("variational_dropout", "vd")):
    method = method.replace(a, b)
  target = parts[2] if len(parts) > 3 else ""
  return "/".join(p for p in (method, target, layer) if p)


QUICK_PICKS = (
    "transformer/magnitude_pruning/0.7/body_encoder_layer_0_self_attention_multihead_attention_q",
    "transformer/magnitude_pruning/0.98/body_encoder_layer_0_self_attention_multihead_attention_q",
    "transformer/magnitude_pruning/0.9/body_decoder_layer_0_ffn_conv1",
    "rn50/magnitude_pruning/0.9/bottleneck_2_block_group3_5_1",
    "rn50/magnitude_pruning/0.98/bottleneck_2_block_group3_5_1",
    "rn50/magnitude_pruning/0.9/final_dense",
)


def dlmc_workloads(root: str, op: str, quick: bool, prog: str = "bench",
                   model: str | None = None) -> list[dict]:
  files = jst.dlmc_files(root, model)
  if not files:
    raise SystemExit(f"{prog}: no .smtx files under {root!r}")
  if quick:
    files = [f for f in files if any(p in os.path.relpath(f, root) for p in QUICK_PICKS)]
  rn50_ns = None
  out = []
  for path in files:
    rel = os.path.relpath(path, root)
    model = rel.split(os.sep)[0]
    shape, _, cols = js.io.read_smtx(path)
    nnz = int(cols.shape[0])
    base = dict(model=model, path=rel, name=short_name(path, root), shape=list(shape),
                nnz=nnz, sparsity=1.0 - nnz / (shape[0] * shape[1]),
                target_sparsity=_target(rel))
    if op != "spmm":
      out.append(dict(base, N=SDDMM_D if op == "sddmm" else None, batch=None))
      continue
    if model == "transformer":
      for n in (256, 2048):
        out.append(dict(base, N=n, batch=None))
    elif model == "rn50":
      if rn50_ns is None:
        rn50_ns = read_rn50_ns(root)
      layer = os.path.basename(path)[:-len(".smtx")]
      if layer not in rn50_ns:
        raise SystemExit(f"{prog}: layer {layer!r} of {rel} is not in rn50_batchsizes.txt")
      for batch in (1, 8):
        out.append(dict(base, N=rn50_ns[layer] * batch, batch=batch))
    else:
      print(f"# skipping {rel}: unknown model {model!r}", file=sys.stderr)
  return out


def _target(rel: str):
  try:
    return float(rel.split(os.sep)[2])
  except (IndexError, ValueError):
    return None


def synthetic_workloads(op: str, quick: bool) -> list[dict]:
  out = []
  for s in (SYNTH_SPARSITIES_QUICK if quick else SYNTH_SPARSITIES):
    out.append(dict(model="synthetic", path=None, name=f"uniform_1024_{round(s * 100)}",
                    shape=[1024, 1024], nnz=None, sparsity=None, target_sparsity=s,
                    N={"spmm": 256, "sddmm": SDDMM_D}.get(op), batch=None))
  return out


def load_matrix(w: dict, root: str, dtype) -> js.CSR:
  if w["path"] is not None:
    return js.io.load_smtx(os.path.join(root, w["path"]), dtype=dtype, seed=0)
  rng = np.random.default_rng(round(w["target_sparsity"] * 1000))
  mask = jst.random_topology(rng, *w["shape"], 1.0 - w["target_sparsity"])
  nnz = int(mask.sum())
  w["nnz"] = nnz
  w["sparsity"] = 1.0 - nnz / (w["shape"][0] * w["shape"][1])
  values = rng.standard_normal(nnz).astype(np.float32)
  return js.CSR.from_mask(mask, values=jnp.asarray(values, dtype))


# -- timing -----------------------------------------------------------------------
def time_fn(fn, args, repeats: int, min_time: float, min_calls: int) -> float:
  """Median over `repeats` of the mean time of one call, in seconds.

  One warm-up call (compiles), one call to estimate the time, then `repeats`
  repeats of n back-to-back calls, each followed by block_until_ready, with n
  chosen so that a repeat lasts >= min_time and n >= min_calls.
  """
  return time_fns({"fn": (fn, args)}, repeats, min_time, min_calls)["fn"]


def time_fns(fns: dict, repeats: int, min_time: float, min_calls: int) -> dict:
  """time_fn for several methods at once, their repeats interleaved.

  `fns` maps a name to (fn, args). Each is warmed up and its call count chosen as
  in time_fn; then each of the `repeats` rounds times every method once, in turn,
  so a slow spell of the shared machine hits all of them alike and the ratios
  between them hold better than with one method's repeats after another's.
  Returns {name: median seconds per call}.
  """
  calls = {}
  for name, (fn, args) in fns.items():
    jax.block_until_ready(fn(*args))                   # warm-up: compile
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    est = max(time.perf_counter() - t0, 1e-7)
    calls[name] = max(min_calls, math.ceil(min_time / est))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, (fn, args) in fns.items():
      n = calls[name]
      t0 = time.perf_counter()
      for _ in range(n):
        jax.block_until_ready(fn(*args))
      times[name].append((time.perf_counter() - t0) / n)
  return {name: statistics.median(ts) for name, ts in times.items()}


# -- inputs and float64 oracles ----------------------------------------------------
# The oracles are float64 numpy/scipy (jax may run without x64, so no jnp.float64).
# Each `*_inputs` returns the jax inputs and `check(method, out, tol_dtype=None)`,
# which raises AssertionError when `out` differs from the oracle by more than the
# jaxsparse.testing tolerance of `tol_dtype` (default: the inputs' dtype).
def np64(x) -> np.ndarray:
  return np.asarray(x).astype(np.float64)


def mask_positions(a: js.CSR):
  ro = np.asarray(a.row_offsets)
  rows = np.repeat(np.arange(a.shape[0]), np.diff(ro))
  return rows, np.asarray(a.column_indices)


def scipy_csr(a: js.CSR, dtype=np.float64):
  return scipy.sparse.csr_array(
      (np64(a.values).astype(dtype), np.asarray(a.column_indices), np.asarray(a.row_offsets)),
      shape=a.shape)


def spmm_inputs(a: js.CSR, w: dict, dtype):
  """`(b, a64, check)`: b [k, N] in dtype, a64 the float64 scipy CSR of a."""
  m, k = a.shape
  n = w["N"]
  rng = np.random.default_rng(1)
  b = jnp.asarray(rng.standard_normal((k, n)), dtype)
  b64 = np64(b)                            # the oracle sees the rounded inputs
  a64 = scipy_csr(a)
  expected = a64 @ b64
  scale = abs(a64) @ np.abs(b64)

  def check(method, out, tol_dtype=None):
    jst.assert_close(np64(out).reshape(m, n), expected, scale, tol_dtype or dtype,
                     f"spmm [{method}]")

  return b, a64, check


def sddmm_inputs(a: js.CSR, dtype):
  """`(lhs, rhs, mask, indices, check)` for d = SDDMM_D; dense outputs are
  gathered at the mask before the check."""
  m, n = a.shape
  d = SDDMM_D
  rng = np.random.default_rng(1)
  lhs = jnp.asarray(rng.standard_normal((m, d)), dtype)
  rhs = jnp.asarray(rng.standard_normal((n, d)), dtype)
  rows, cols = mask_positions(a)
  prod = np64(lhs)[rows] * np64(rhs)[cols]                       # [nnz, d]
  expected, scale = prod.sum(-1), np.abs(prod).sum(-1)
  del prod
  mask = np.zeros((m, n), np.float32)
  mask[rows, cols] = 1
  mask = jnp.asarray(mask, dtype)
  indices = jnp.asarray(np.stack([rows, cols], axis=1).astype(np.int32))

  def check(method, out, tol_dtype=None):
    out = np64(out)
    if out.ndim == 2 and out.shape == (m, n):
      out = out[rows, cols]
    jst.assert_close(out.reshape(-1), expected, scale, tol_dtype or dtype, f"sddmm [{method}]")

  return lhs, rhs, mask, indices, check


def softmax_inputs(a: js.CSR, dtype):
  """`(x, mask, check)`: x the dense [m, n] values (0 off the mask) in dtype,
  mask bool; dense outputs are gathered at the mask before the check."""
  m, n = a.shape
  rows, cols = mask_positions(a)
  v64 = np64(a.values)
  rowmax = np.full(m, -np.inf)
  np.maximum.at(rowmax, rows, v64)
  e = np.exp(v64 - rowmax[rows])
  expected = e / np.bincount(rows, e, minlength=m)[rows]
  x = np.zeros((m, n), np.float64)
  x[rows, cols] = v64
  mask = np.zeros((m, n), bool)
  mask[rows, cols] = True

  def check(method, out, tol_dtype=None):
    out = np64(out)
    if out.ndim == 2 and out.shape == (m, n):
      out = out[rows, cols]
    jst.assert_close(out.reshape(-1), expected, np.ones(expected.size), tol_dtype or dtype,
                     f"softmax [{method}]")

  return jnp.asarray(x, dtype), jnp.asarray(mask), check


def softmax_peers(a: js.CSR, x, mask) -> dict:
  """`{method: (jitted fn, args)}` for softmax: jaxsparse and masked dense."""
  return {
      "jaxsparse": (jax.jit(lambda c: js.sparse_softmax(c).values), (a,)),
      "dense": (jax.jit(lambda v, msk: jax.nn.softmax(jnp.where(msk, v, -jnp.inf), axis=-1)),
                (x, mask)),
  }


def work_of(op: str, a: js.CSR, w: dict, dtype) -> float:
  """Useful FLOPs (spmm: 2*nnz*N, sddmm: 2*nnz*d) or bytes (softmax: 2*nnz*itemsize)."""
  if op == "spmm":
    return 2.0 * a.nnz * w["N"]
  if op == "sddmm":
    return 2.0 * a.nnz * SDDMM_D
  return 2.0 * a.nnz * np.dtype(dtype).itemsize


UNIT = {"spmm": "GFLOP/s", "sddmm": "GFLOP/s", "softmax": "GB/s"}
UNIT_DOC = {"spmm": "useful GFLOP/s = 2*nnz*N / time",
            "sddmm": f"useful GFLOP/s = 2*nnz*d / time, d = {SDDMM_D}",
            "softmax": "GB/s of values read + written = 2*nnz*itemsize / time (bytes, not FLOPs)"}


# -- run ------------------------------------------------------------------------------
def run_workload(w, root, args, dtype, setup, peers, prog="bench", isolated=(), calls=1):
  """Checks and times jaxsparse and its peers on one workload; returns the row.

  Peers in `isolated` are timed after the interleaved rounds of the others, in
  rounds of their own: interleaved, a peer whose calls allocate hundreds of MB
  (BCOO matmul gathers nnz x N values) slowed the methods timed after it.

  `setup(a, w, dtype) -> ({method: (fn, args)}, check, work)`; `check(method, out)`
  raises AssertionError if `out` is wrong. jaxsparse must be right (else abort);
  a wrong peer is warned about, a failing peer recorded in row["errors"].
  row["rate"] is work / time / 1e9; row["ratio"][p] = time of p / time of jaxsparse.
  """
  a = load_matrix(w, root, dtype)
  fns, check, work = setup(a, w, dtype)
  # Correctness before timing: jaxsparse must match the float64 oracle.
  fn, fargs = fns["jaxsparse"]
  try:
    check("jaxsparse", fn(*fargs))
  except AssertionError as e:
    raise SystemExit(f"{prog}: ABORT: jaxsparse {args.op} is wrong on {w['name']} "
                     f"(N={w['N']}): {e}") from None
  row = dict(w, times_ms={}, rate={}, ratio={}, errors={}, warnings={})
  timed = {"jaxsparse": fns["jaxsparse"]}
  for method, (fn, fargs) in fns.items():
    if method == "jaxsparse":
      continue
    try:
      try:
        check(method, fn(*fargs))
      except AssertionError as e:
        row["warnings"][method] = str(e)
        print(f"# WARNING: {method} differs from the oracle on {w['name']}: {e}",
              file=sys.stderr)
    except Exception as e:  # a peer that fails (out of memory, unsupported) is recorded
      row["errors"][method] = f"{type(e).__name__}: {e}"[:300]
      print(f"# {method} failed on {w['name']}: {row['errors'][method]}", file=sys.stderr)
      continue
    timed[method] = (fn, fargs)
  together = {k: v for k, v in timed.items() if k not in isolated}
  apart = {k: v for k, v in timed.items() if k in isolated}
  for group in (together, apart):
    for method, t in time_fns(group, args.repeats, args.min_time, args.min_calls).items():
      t /= calls
      row["times_ms"][method] = t * 1e3
      row["rate"][method] = work / t / 1e9
  tj = row["times_ms"]["jaxsparse"]
  for method in peers:
    if method in row["times_ms"]:
      row["ratio"][method] = row["times_ms"][method] / tj
  return row


# -- summaries and tables --------------------------------------------------------------
def geomean(xs):
  xs = [x for x in xs if x is not None and x > 0]
  return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def group_key(row, op):
  if row["model"] == "rn50" and op == "spmm":
    return f"rn50 batch={row['batch']}"
  if op == "spmm":
    return f"{row['model']} N={row['N']}"
  return row["model"]


def summaries(rows, op, peers):
  """Geomean of the ratio to each peer per model, per N / batch (spmm) and overall."""
  peers = [p for p in peers if any(p in r["ratio"] for r in rows)]
  groups: dict[str, list] = {}
  for r in rows:
    groups.setdefault(r["model"], []).append(r)
  if op == "spmm":
    for r in rows:
      groups.setdefault(group_key(r, op), []).append(r)
  groups["all"] = rows
  out = []
  for name, rs in groups.items():
    out.append(dict(group=name, count=len(rs),
                    geomean_ratio={p: geomean([r["ratio"].get(p) for r in rs]) for p in peers}))
  return out


def fmt(x, spec=".3g"):
  return "-" if x is None else format(x, spec)


def table_peers(rows, peers):
  return [p for p in peers if any(p in r["times_ms"] or p in r["errors"] for r in rows)]


def rows_table(rows, op, peers, rate_cols, peer_label=None):
  """Markdown lines of the per-workload table.

  rate_cols: [(header, row -> cell text)] after the jaxsparse time column;
  peer_label(p): the column header prefix of peer p (default p).
  """
  peer_label = peer_label or (lambda p: p)
  ncol = {"spmm": "N", "sddmm": "d", "softmax": "N"}[op]
  head = ["model", "matrix", "shape", "nnz", "sparsity", ncol, "jaxsparse ms"]
  head += [h for h, _ in rate_cols]
  for p in peers:
    head += [f"{peer_label(p)} ms", f"{peer_label(p)} x"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["model"], r["name"], f"{r['shape'][0]}x{r['shape'][1]}", str(r["nnz"]),
             f"{100 * r['sparsity']:.1f}%",
             "-" if r["N"] is None else (f"{r['N']} (b{r['batch']})" if r["batch"] else
                                         str(r["N"])),
             fmt(r["times_ms"]["jaxsparse"])]
    cells += [f(r) for _, f in rate_cols]
    for p in peers:
      if p in r["errors"]:
        cells += ["failed", "-"]
      else:
        cells += [fmt(r["times_ms"].get(p)), fmt(r["ratio"].get(p), ".2f")]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def summary_table(summary, peers, peer_label=None):
  peer_label = peer_label or (lambda p: p)
  sp = [p for p in peers if summary and p in summary[0]["geomean_ratio"]]
  lines = ["| group | workloads | " + " | ".join(peer_label(p) for p in sp) + " |",
           "|" + "---|" * (2 + len(sp))]
  for s in summary:
    lines.append(f"| {s['group']} | {s['count']} | " +
                 " | ".join(fmt(s["geomean_ratio"][p], ".2f") for p in sp) + " |")
  return lines


def plot(rows, op, path, meta, peers, where="CPU"):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(9, 4.5))
  markers = {"transformer": "o", "rn50": "s", "synthetic": "^"}
  colors = {"dense": "tab:blue", "bcsr": "tab:orange", "scipy": "tab:green",
            "bcoo_sampled": "tab:red", "bcoo": "tab:red"}
  for p in peers:
    for model, mk in markers.items():
      pts = sorted((100 * r["sparsity"], r["ratio"][p]) for r in rows
                   if r["model"] == model and p in r["ratio"])
      if pts:
        xs, ys = zip(*pts)
        ax.scatter(xs, ys, marker=mk, color=colors.get(p), alpha=0.6, label=f"vs {p} ({model})")
    # The geomean over all workloads at each (rounded) sparsity, as a line per peer.
    bins: dict[int, list] = {}
    for r in rows:
      if p in r["ratio"]:
        bins.setdefault(round(100 * r["sparsity"]), []).append(r["ratio"][p])
    if bins:
      xs = sorted(bins)
      ax.plot(xs, [geomean(bins[x]) for x in xs], color=colors.get(p), lw=1.5,
              label=f"vs {p}: geomean")
  ax.axhline(1.0, color="k", lw=1)
  ax.set_yscale("log")
  ax.set_xlabel("sparsity (%)")
  ax.set_ylabel("speedup of jaxsparse (peer time / jaxsparse time)")
  ax.set_title(f"jaxsparse {op} on {where} ({meta['path']}, {meta['dtype']})")
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the points
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  print(f"# wrote {path}", file=sys.stderr)


# -- metadata and output -------------------------------------------------------------
def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)
