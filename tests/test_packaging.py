"""What a plain `pip install -e .` must bring for the promised features."""

import json
import pathlib
import subprocess
import sys
import textwrap
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _dependencies():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  return {
    line.split(">")[0].split("=")[0].split("[")[0].strip().lower()
    for line in project["dependencies"]
  }


def test_the_compile_cache_dependency_is_declared():
  # jax imports filelock lazily; other packages (torch) often bring it, so a
  # test environment alone would not notice it missing from a plain install.
  assert "filelock" in _dependencies()


def test_a_rerun_finds_its_programs_in_the_compile_cache(tmp_path, env):
  script = textwrap.dedent("""
      import json, pathlib, warnings
      warnings.simplefilter("error")  # a cache that cannot work warns
      import jax, jax.numpy as jnp
      from pixeljax import cli
      cli.enable_compile_cache()
      x = jnp.ones((64, 64))
      jax.jit(lambda x: jnp.sin(x) @ x.T)(x).block_until_ready()
      cache = pathlib.Path(jax.config.jax_compilation_cache_dir)
      print(json.dumps(sorted(p.name for p in cache.iterdir())))
  """)
  done = subprocess.run(
    [sys.executable, "-c", script],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  names = json.loads(done.stdout.strip().splitlines()[-1])
  assert any(name.startswith("jit_") for name in names), names
