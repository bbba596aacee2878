import os

import jax
import pytest

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
