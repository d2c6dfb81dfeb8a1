"""Searches sharded over 4 (forced host) devices, directly and streamed, give
the single-device results (tests/test_distributed.py runs every search over
2 processes x 2 devices).

The device count of a JAX process is fixed at start-up, so the check runs in
a subprocess with XLA_FLAGS set.
"""

import json
import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    import pixeljax
    from tests import test_regression as regression
    assert jax.device_count() == 4, jax.devices()
    stored = np.load(regression.STORED)
    runs = {name: regression.run_case(name) for name in DIRECT}
    runs.update({name + " streamed": regression.stream_case(
        name, slots=5, refill_every=2) for name in STREAMED})
    report = {}
    for run, result in runs.items():
      name = run.split()[0]
      for field in regression.STORED_FIELDS:
        report[f"{run} {field}"] = regression.same_field(
            field, getattr(result, field), stored[f"{name}/{field}"])
    print(json.dumps(report))
""")
# Cases of tests/test_regression.py, run directly or streamed over 4 devices
# against its stored single-device results.
DIRECT = ("de_1px",)
STREAMED = ("corner", "sparse_rs_3px_targeted", "seeded_1px")


def test_four_devices_give_the_single_device_results():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=4",
    JAX_PLATFORMS="cpu",
  )
  done = subprocess.run(
    [
      sys.executable,
      "-c",
      f"DIRECT = {DIRECT!r}\nSTREAMED = {STREAMED!r}\n{_SCRIPT}",
    ],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert len(report) == (len(DIRECT) + len(STREAMED)) * 11
  assert all(report.values()), [run for run, same in report.items() if not same]
