"""The peer benchmark: exact torch rebuilds of the victims, and its code path.

Needs the optional extra: pip install -e ".[test,peers]" "torch==2.13.0".
"""

import json

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

_REASON = (
  'needs the optional peers extra: pip install -e ".[peers]" "torch==2.13.0"'
)
torch = pytest.importorskip("torch", reason=_REASON)
pytest.importorskip("torchattacks", reason=_REASON)
pytest.importorskip("art", reason=_REASON)

from benchmarks import peer_runs  # noqa: E402
from benchmarks import peers  # noqa: E402
from benchmarks import torch_victims  # noqa: E402
from pixeljax import models  # noqa: E402


def _randomize(model: nnx.Module, seed: int) -> nnx.Module:
  """Gives batch-norm scales, biases and statistics random values too, so a
  wrong mapping of any of them shows in the logits."""
  rng = np.random.default_rng(seed)
  draws = {
    "var": lambda s: rng.uniform(0.5, 2.0, s),
    "scale": lambda s: rng.uniform(0.5, 1.5, s),
    "mean": lambda s: rng.normal(0.0, 0.2, s),
    "bias": lambda s: rng.normal(0.0, 0.2, s),
  }
  flat = []
  for path, variable in nnx.to_flat_state(nnx.state(model)):
    value = variable.get_value()
    if path[-1] in draws:
      value = jnp.asarray(draws[path[-1]](value.shape), jnp.float32)
    flat.append((path, variable.replace(value)))
  nnx.update(model, nnx.from_flat_state(flat))
  return model


def _images(count: int, seed: int = 0) -> np.ndarray:
  return (
    np.random.default_rng(seed)
    .integers(0, 256, (count, 32, 32, 3))
    .astype(np.uint8)
  )


@pytest.mark.parametrize("name", ["smallcnn", "allconv", "nin", "vgg16"])
def test_rebuild_gives_the_same_logits(name):
  model = _randomize(models.create_model(name, rngs=nnx.Rngs(1)), seed=2)
  images = _images(2)
  # Eager (not jitted) JAX: no compile time for the big models.
  expected = np.asarray(
    models.make_predict(model)(jnp.asarray(images, jnp.float32))
  )
  rebuilt = torch_victims.to_torch(model)
  with torch.no_grad():
    logits = rebuilt(
      torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)
    ).numpy()
  assert logits.shape == expected.shape == (2, 10)
  np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_peer_scale_is_the_same_pixels():
  images = _images(3, seed=1)
  model = _randomize(models.create_model("smallcnn", rngs=nnx.Rngs(0)), 3)
  unit = peer_runs.to_unit_nchw(images)
  assert unit.shape == (3, 3, 32, 32) and float(unit.max()) <= 1.0
  np.testing.assert_array_equal(peer_runs.from_unit_nchw(unit), images)
  gap = peers.logit_gap(
    models.make_predict(model),
    torch_victims.Pixels01(torch_victims.to_torch(model)),
    images,
  )
  assert gap <= 1e-4


def test_counting_module_counts_images():
  counting = torch_victims.CountingModule(torch.nn.Identity())
  counting(torch.zeros(5, 3, 2, 2))
  counting(torch.zeros(2, 3, 2, 2))
  assert counting.evaluations == 7


def test_to_torch_rejects_other_models():
  with pytest.raises(TypeError, match="SmallCNN"):
    torch_victims.to_torch(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


def test_benchmark_runs_every_tool(tmp_path):
  model = _randomize(models.create_model("smallcnn", rngs=nnx.Rngs(0)), 4)
  predict = models.make_predict(model)
  images = _images(2, seed=5)
  labels = np.asarray(jnp.argmax(predict(jnp.asarray(images, jnp.float32)), -1))
  popsize, maxiter = 10, 1
  rows, gap = peers.run_benchmark(
    model,
    images,
    labels,
    pixel_counts=[1],
    popsize=popsize,
    maxiter=maxiter,
    forward_seconds=0.1,
    log=lambda *_: None,
  )
  assert gap <= 1e-4
  assert [row["tool"] for row in rows] == list(peers.TOOLS)
  for row in rows:
    assert len(row["success"]) == 2
    # Never more than d pixels changed; a success really fools the model.
    assert all(c <= 1 for c in row["changed_pixels"])
    assert 0.0 <= row["success_rate"] <= 1.0
    assert row["evaluations"] > 0 and row["seconds"] > 0
  by_tool = {row["tool"]: row for row in rows}
  # pixeljax: at most popsize * (maxiter + 1) candidates, plus 2 checks each.
  assert by_tool["pixeljax"]["evaluations"] <= 2 * (popsize * (maxiter + 1) + 2)
  assert by_tool["pixeljax"]["pixeljax_speedup"] == 1.0
  # ART fixes its population at 400 // 5 * 5 = 400, whatever popsize says.
  assert by_tool["art"]["evaluations"] >= 400 * len(images)

  payload = {
    "stamp": {
      "device": "cpu",
      "platform": "cpu",
      "date": "today",
      "jax": "x",
      "cpu_count": 2,
    },
    "versions": {"torch": "x", "torchattacks": "x", "art": "x"},
    "settings": {
      "command": "test",
      "images": 2,
      "popsize": popsize,
      "maxiter": maxiter,
      "load_average": {"start": 1.0, "end": 1.0},
      "victim": {
        "architecture": "smallcnn",
        "weights": "random",
        "test_accuracy": None,
      },
    },
    "tool_settings": {"pixeljax": "paper"},
    "logit_gap": gap,
    "rows": rows,
  }
  markdown = peers.render_markdown(payload)
  assert markdown.count("\n| 1 |") == 3
  peers.plot(payload, str(tmp_path / "peers.png"))
  assert (tmp_path / "peers.png").stat().st_size > 0


def test_victim_names_a_shipped_model():
  model, victim = peers.load_victim(None, "allconv")
  assert isinstance(model, models.AllConv)
  assert victim["architecture"] == "allconv"
  assert victim["weights"] == "shipped pixeljax/weights/allconv"
  assert 0.5 < victim["test_accuracy"] <= 1.0
  with pytest.raises(FileNotFoundError, match="--weights runs/no_such_net"):
    peers.load_victim(None, "no_such_net")


def test_main_attacks_the_shipped_victim_it_names(tmp_path):
  peers.main(
    [
      "--victim",
      "allconv",
      "--images",
      "1",
      "--pixels",
      "1",
      "--popsize",
      "4",
      "--maxiter",
      "1",
      "--tools",
      "pixeljax,pixeljax-torch",
      "--forward-seconds",
      "0.05",
      "--name",
      "peers_test",
      "--results-dir",
      str(tmp_path),
    ]
  )
  payload = json.loads((tmp_path / "peers_test.json").read_text())
  assert payload["settings"]["victim"]["architecture"] == "allconv"
  assert payload["logit_gap"] <= peers.LOGIT_TOLERANCE
  assert [row["tool"] for row in payload["rows"]] == [
    "pixeljax",
    "pixeljax-torch",
  ]
  # The same model, attacked with the same search, fools the same image.
  assert payload["rows"][0]["success"] == payload["rows"][1]["success"]
