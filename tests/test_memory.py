"""Peak memory follows the model chunk, not N x popsize x image size."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    import pixeljax
    from tests import toy_models
    predict = toy_models.small_cnn(channels=3)
    images = np.random.default_rng(0).integers(0, 256, (64, 224, 224, 3))
    result = pixeljax.batched_attack(
        predict, images.astype(np.uint8), np.zeros(64, np.int64),
        key=jax.random.key(0), popsize=400, maxiter=1, early_stop=False,
        batch_size=64)
    # VmHWM: this process's own peak. ru_maxrss can carry over the peak of
    # the process that forked it (the test run).
    status = open("/proc/self/status").read().split("VmHWM:")[1]
    peak = int(status.split()[0]) * 1024
    print(json.dumps({"peak_bytes": peak,
                      "queries": int(result.queries.sum())}))
""")


@pytest.mark.slow
def test_224px_attack_of_64_images_stays_within_a_few_gib():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(
    [sys.executable, "-c", _SCRIPT],
    cwd=root,
    capture_output=True,
    text=True,
    timeout=600,
    check=True,
  )
  report = json.loads(done.stdout.strip().splitlines()[-1])
  # Every candidate image of one generation: 64 x 400 x 224 x 224 x 3 floats.
  materialised = 64 * 400 * 224 * 224 * 3 * 4
  assert materialised > 14 * 2**30  # 15.4 GB
  assert report["queries"] == 64 * 400 * 2
  print(f"peak RSS {report['peak_bytes'] / 2**30:.2f} GiB")
  assert report["peak_bytes"] < 3 * 2**30
