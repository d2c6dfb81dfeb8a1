"""Shared test set-up."""

import importlib.util
import os

import pytest

# The data tests isolate themselves from PIXELJAX_DATA; keep the caller's value
# for the tests that read the real data set.
if os.environ.get("PIXELJAX_DATA"):
  os.environ.setdefault(
    "PIXELJAX_DATA_REAL", os.path.abspath(os.environ["PIXELJAX_DATA"])
  )


def pytest_configure(config):
  """Imports ART once, in the main process, on a machine that lacks its config.

  ART writes ~/.art/config.json on its first import, and two processes doing
  that at once race on the file (the loser fails with a NameError in
  art/config.py). The test workers would each import it first; doing it here,
  before they start, leaves them a file to read.
  """
  del config
  is_worker = "PYTEST_XDIST_WORKER" in os.environ
  art_config = os.path.expanduser(os.path.join("~", ".art", "config.json"))
  if is_worker or os.path.exists(art_config):
    return
  if importlib.util.find_spec("art") is not None:
    import art  # noqa: F401


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Environment for subprocess runs: no data set, a fresh cache folder."""
  env = dict(os.environ)
  env.pop("PIXELJAX_DATA", None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env["PIXELJAX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
  return env
