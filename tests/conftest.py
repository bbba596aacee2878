import os
import subprocess
import sys

# The suite's time on a CPU is mostly XLA compiling thousands of small programs
# (~50 ms each on the 2-core development machine). Its LLVM optimization and the
# new fusion emitters only make XLA's own code faster to run; the jaxsparse
# kernels are the same either way. Without them each compile takes about half the
# time. Set before the first backend starts, inherited by the xdist workers and
# the tests' subprocesses; JAXSPARSE_TEST_XLA_DEFAULTS=1 keeps XLA's defaults.
# An XLA that does not know a flag aborts the process, so a subprocess tries the
# flags first.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def _use_fast_compile():
  if (os.environ.get("JAXSPARSE_TEST_XLA_DEFAULTS") == "1"
      or "JAXSPARSE_TEST_FAST_COMPILE" in os.environ):  # decided already (xdist controller)
    return
  platforms = os.environ.get("JAX_PLATFORMS", "")
  use = platforms in ("", "cpu")
  if use:
    flags = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.numpy.ones(1).block_until_ready()"],
        env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"), capture_output=True,
        timeout=120)
    use = probe.returncode == 0
    if use:
      os.environ["XLA_FLAGS"] = flags
  os.environ["JAXSPARSE_TEST_FAST_COMPILE"] = "1" if use else "0"


_use_fast_compile()
# Several xdist workers would each claim most of a GPU's memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

# Gradients are checked in float64.
jax.config.update("jax_enable_x64", True)


def pytest_sessionstart(session):
  # On a GPU machine, JAXSPARSE_REQUIRE_GPU=1 turns "no GPU" into a failure
  # instead of a silent CPU run.
  if os.environ.get("JAXSPARSE_REQUIRE_GPU") == "1" and jax.default_backend() != "gpu":
    raise pytest.UsageError(
        f"JAXSPARSE_REQUIRE_GPU=1 but jax's default backend is {jax.default_backend()!r}")


@pytest.fixture
def rng():
  import numpy as np
  return np.random.default_rng(0)


@pytest.fixture
def dlmc_files():
  """The DLMC sample's 38 .smtx files ($JAXSPARSE_DLMC or ../shared/dlmc beside the
  repository). Without them the test is skipped, saying why; with
  JAXSPARSE_REQUIRE_DLMC=1 (set by .ci/run) it fails instead."""
  from jaxsparse import testing as jst
  files = jst.dlmc_files()
  if len(files) < 38:
    msg = (f"DLMC sample not found (found {len(files)} of 38 .smtx files): set "
           "JAXSPARSE_DLMC to the dlmc folder")
    if os.environ.get("JAXSPARSE_REQUIRE_DLMC") == "1":
      pytest.fail(msg)
    pytest.skip(msg)
  return files


def platform():
  return jax.default_backend()
