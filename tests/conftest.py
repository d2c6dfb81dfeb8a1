"""Shared test set-up."""

import os

import pytest

# The data tests isolate themselves from PIXELJAX_DATA; keep the caller's value
# for the tests that read the real data set.
if os.environ.get("PIXELJAX_DATA"):
  os.environ.setdefault(
    "PIXELJAX_DATA_REAL", os.path.abspath(os.environ["PIXELJAX_DATA"])
  )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Environment for subprocess runs: no data set, a fresh cache folder."""
  env = dict(os.environ)
  env.pop("PIXELJAX_DATA", None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env["PIXELJAX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
  return env
