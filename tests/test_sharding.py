"""Sharded over 4 (forced host) devices equals the single-device run.

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
    import jax, jax.numpy as jnp, numpy as np
    import pixeljax
    from tests import toy_models
    assert jax.device_count() == 4, jax.devices()
    predict = toy_models.small_cnn(channels=3, seed=4)
    images = np.random.default_rng(4).integers(0, 256, (10, 16, 16, 3))
    labels = np.asarray(predict(jnp.asarray(images, jnp.float32))).argmax(-1)
    settings = dict(key=jax.random.key(7), popsize=24, maxiter=8, pixels=2)
    one = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("images",))
    single = pixeljax.batched_attack(predict, images, labels, mesh=one,
                                     **settings)
    sharded = pixeljax.batched_attack(predict, images, labels, **settings)
    parts = list(pixeljax.stream_attack(predict, images, labels, slots=6,
                                        refill_every=2, **settings))
    order = np.argsort(np.concatenate([p[0] for p in parts]))
    report = {"mixed": bool(0 < single.success.sum() < len(images))}
    for field in pixeljax.AttackResult._fields:
      streamed = np.concatenate([getattr(p[1], field) for p in parts])[order]
      report[field] = [
          bool(np.array_equal(getattr(sharded, field), getattr(single, field))),
          bool(np.array_equal(streamed, getattr(single, field)))]
    print(json.dumps(report))
""")


def test_four_devices_give_the_single_device_results():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=4",
    JAX_PLATFORMS="cpu",
  )
  done = subprocess.run(
    [sys.executable, "-c", _SCRIPT],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report.pop("mixed")
  for field, (sharded_same, streamed_same) in report.items():
    assert sharded_same, f"sharded {field} differs"
    assert streamed_same, f"streamed (4 devices) {field} differs"
