"""SPMD partitioning on 8 simulated CPU devices (see "Sharding" in DESIGN.md).

The checks live in `sharding_checks.py` and run in one subprocess: the device
count (`--xla_force_host_platform_device_count=8`) must be set before jax
starts its backend, which the other test modules in this process have done.
Each check compiles a sharded `jax.jit`, reads the compiled HLO for
collectives, and compares the values with one device.
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def results():
  env = dict(os.environ)
  # The subprocess imports the same jaxsparse as this process (installed, with its
  # kernels, in CI; the source tree in development).
  import jaxsparse
  pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(jaxsparse.__file__)))
  env["PYTHONPATH"] = os.pathsep.join(
      [pkg_parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, os.path.join(HERE, "sharding_checks.py")],
                        env=env, capture_output=True, text=True, timeout=600)
  if proc.returncode != 0:
    pytest.fail(f"sharding_checks.py failed:\n{proc.stderr[-5000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


# check name -> the collectives its compiled HLO may (must) contain.
EXPECTED = {
    # Forward, data parallel: nothing at all.
    "spmm_data_parallel": [],
    "spmm_shared_values_data_parallel": [],
    "sddmm_data_parallel": [],
    "softmax_data_parallel": [],
    "transpose_data_parallel": [],
    "attention_data_parallel": [],
    # Model parallel: heads sharded; SpMM column split.
    "attention_heads_sharded": [],
    "attention_data_and_heads_sharded": [],
    "spmm_column_split": [],
    "spmm_nt_token_split": [],
    # Its weight gradient contracts the sharded tokens: partial sddmm_tn values per
    # device and one all-reduce of them; the same for SDDMM's contraction sharded.
    "spmm_nt_grad_token_split": ["all-reduce"],
    "spmm_nt_grad_token_split_bfloat16": ["all-reduce"],
    "spmm_nt_grad_explicit_token_split": ["all-reduce"],
    "sddmm_contraction_split": ["all-reduce"],
    # Tokens that do not split evenly: gathered instead (the fallback).
    "spmm_nt_grad_uneven_tokens": ["all-gather", "all-gather"],
    "spmm_data_and_column_split": [],
    # Gradients w.r.t. sharded activations: nothing.
    "attention_grad_data_parallel": [],
    "attention_grad_heads_sharded": [],
    # The same with implementation="unfused" (the checks above run the fused default).
    "attention_band_split_data_and_heads_sharded": [],
    "attention_unfused_data_and_heads_sharded": [],
    "attention_unfused_grad_heads_sharded": [],
    # Gradient w.r.t. replicated (shared) sparse values under data parallel:
    # exactly the one all-reduce of the batch sum, no gather of activations.
    "grad_shared_values_data_parallel": ["all-reduce"],
    # Inside a user's shard_map: the body runs per device as written.
    "shard_map_user": [],
    "shard_map_grad": [],
    # Explicit-sharding mode (sharded types), data x heads, forward and gradient.
    "attention_explicit_sharding": [],
    # A mesh of one explicit and one auto axis: correct values, and on jax >= 0.11
    # the heads (auto axis) all-gathered (DESIGN.md, "Sharding", Limits); on 0.10
    # custom_partitioning shards them with no collective.
    "attention_mixed_explicit_auto": None,
    "spmm_explicit_data_and_column_split": [],
    "spmm_explicit_fallback_k_sharded": ["all-gather"],
    "sddmm_explicit_grad": [],
    # The fallback: sharding a dim that must be whole (b's k) gathers it.
    "spmm_fallback_k_sharded": ["all-gather"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_collectives_and_values(results, name):
  r = results[name]
  assert "error" not in r, r.get("error")
  expected = EXPECTED[name]
  if expected is None:  # the mixed mesh: which collectives depends on the jax version
    import jax
    expected = [] if tuple(jax.__version_info__[:2]) < (0, 11) else r["collectives"]
    assert all(c == "all-gather" for c in expected)
  assert r["collectives"] == expected, (
      f"{name}: unexpected collectives in the compiled HLO: {r['collectives']}")
  tol = r.get("tol", 1e-5)
  assert r["max_err"] <= tol, f"{name}: differs from one device by {r['max_err']} > {tol}"


def test_every_check_is_expected(results):
  assert set(results) == set(EXPECTED)
