"""Training: a few steps lower the loss; a run checkpoints, resumes exactly,
and writes its weights and card."""

import dataclasses
import json
import os
import pathlib

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image
import pytest

from pixeljax import train as T
from pixeljax.data import load_cifar10
from pixeljax.models import create_model
from pixeljax.models import load_weights
from pixeljax.models import make_predict


# VGG16 (20M parameters, dropout 0.5) needs a gentler rate on a batch of 8.
@pytest.mark.parametrize(
  "name,lr",
  [("smallcnn", 0.05), ("allconv", 0.05), ("nin", 0.05), ("vgg16", 0.005)],
)
def test_steps_lower_the_loss_on_a_fixed_batch(name, lr):
  steps = 4
  model = create_model(name, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  cfg = T.TrainConfig(
    model=name, epochs=1, lr=lr, schedule="cosine", warmup_epochs=0
  ).resolved()
  tx = T.make_optimizer(cfg, steps_per_epoch=steps + 1)
  train_step, _ = T.make_steps(graphdef, tx, seed=0, do_augment=False)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(8, dtype=np.int64) % 10
  idx = np.arange(8, dtype=np.int32)
  state, losses = (params, rest, tx.init(params)), []
  for step in range(steps):
    *state, loss, _ = train_step(*state, images, labels, idx, step)
    losses.append(float(loss))
  assert losses[-1] < losses[0] - 0.1, losses


def test_augment_crops_and_flips_on_device():
  x = jnp.arange(2 * 32 * 32 * 3, dtype=jnp.float32).reshape(2, 32, 32, 3)
  out = T.augment(jax.random.key(1), x)
  assert out.shape == x.shape and out.dtype == x.dtype
  assert not jnp.array_equal(out, x)
  # Every output row holds a shifted (maybe flipped) window of an input row or
  # zeros.
  assert set(np.unique(out[0]).tolist()) <= set(np.unique(x[0]).tolist()) | {
    0.0
  }


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
  """A 10-class image-folder tree: 48 train and 20 test images."""
  monkeypatch.setenv("PIXELJAX_CACHE", str(tmp_path / "cache"))
  rng = np.random.default_rng(0)
  for split, n in (("train", 48), ("test", 20)):
    for i in range(n):
      c = i % 10
      d = tmp_path / "data" / split / f"class{c}"
      d.mkdir(parents=True, exist_ok=True)
      img = np.clip(rng.normal(25 * c, 30, (32, 32, 3)), 0, 255).astype(
        np.uint8
      )
      Image.fromarray(img).save(d / f"{i:04d}.png")
  return str(tmp_path / "data")


def _config(data, out, model_name="smallcnn", **kw):
  return T.TrainConfig(
    model=model_name,
    out=str(out),
    data=data,
    batch_size=16,
    progress=False,
    **kw,
  )


def test_resume_continues_exactly(tiny_cifar, tmp_path, monkeypatch):
  straight = T.train(_config(tiny_cifar, tmp_path / "a", epochs=2))

  save = T.save_checkpoint

  def save_then_die(*args):
    save(*args)
    raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

  monkeypatch.setattr(T, "save_checkpoint", save_then_die)
  with pytest.raises(KeyboardInterrupt):
    T.train(_config(tiny_cifar, tmp_path / "b", epochs=2))
  monkeypatch.setattr(T, "save_checkpoint", save)
  meta = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
  assert meta["epoch"] == 1 and meta["step"] == 3 and meta["rng"]["seed"] == 0

  resumed = T.train(_config(tiny_cifar, tmp_path / "b", epochs=2, resume=True))
  timing = ("seconds", "images_per_s")
  strip = lambda h: {k: v for k, v in h.items() if k not in timing}  # noqa: E731
  assert [strip(h) for h in resumed.history] == [
    strip(h) for h in straight.history
  ]
  assert resumed.test_accuracy == straight.test_accuracy
  a = nnx.state(straight.model, nnx.Param)
  b = nnx.state(resumed.model, nnx.Param)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_main_writes_weights_and_card(tiny_cifar, tmp_path):
  argv = [
    "--model",
    "smallcnn",
    "--out",
    str(tmp_path / "run"),
    "--data",
    tiny_cifar,
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--limit-train",
    "32",
    "--limit-test",
    "10",
    "--quiet",
  ]
  result = T.main(argv)
  card = json.loads(result.card_path.read_text())
  assert (
    card["architecture"] == "smallcnn"
    and card["test_accuracy"] == result.test_accuracy
  )
  assert (
    card["eval_data"]["num_images"] == 10
    and card["train_data"]["num_images"] == 32
  )
  assert card["training_command"] == "python -m pixeljax.train " + " ".join(
    argv
  )
  machine = card["training"]["host"]
  assert machine["cpu"] and machine["cpu_count"] == os.cpu_count()
  assert (tmp_path / "run" / "smallcnn.safetensors").exists()


def test_bad_config():
  with pytest.raises(ValueError, match="model: expected one of"):
    T.TrainConfig(model="resnet").resolved()
  with pytest.raises(ValueError, match="schedule"):
    T.TrainConfig(schedule="step").resolved()
  with pytest.raises(ValueError, match="weights_dtype: expected one of"):
    T.TrainConfig(weights_dtype="bfloat16").resolved()


def test_label_smoothing_is_the_cross_entropy_against_smoothed_targets():
  model = create_model("smallcnn", rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(8, dtype=np.int64) % 10
  # The step's loss is taken before its update: the logits of the model as it
  # is.
  logits = nnx.merge(graphdef, params, rest, copy=True)(
    jnp.asarray(images, jnp.float32)
  )
  cfg = T.TrainConfig(model="smallcnn", epochs=1, lr=0.01).resolved()
  tx = T.make_optimizer(cfg, steps_per_epoch=2)
  train_step, _ = T.make_steps(
    graphdef, tx, seed=0, do_augment=False, label_smoothing=0.2
  )
  state = (params, rest, tx.init(params))
  *_, loss, _ = train_step(
    *state, images, labels, np.arange(8, dtype=np.int32), 0
  )
  # 0.8 on the label, 0.2 spread over the 10 classes.
  targets = jax.nn.one_hot(labels, 10) * 0.8 + 0.02
  smoothed = float(optax.softmax_cross_entropy(logits, targets).mean())
  plain = float(
    optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  )
  assert (
    float(loss) == pytest.approx(smoothed, rel=1e-5)
    and abs(smoothed - plain) > 0.01
  )


def test_time_limit_stops_after_an_epoch_and_resume_finishes(
  tiny_cifar, tmp_path
):
  cut = T.train(
    _config(tiny_cifar, tmp_path / "run", epochs=3, time_limit=1e-6)
  )
  assert not cut.complete and cut.card_path is None and len(cut.history) == 1
  assert (
    json.loads((tmp_path / "run" / "checkpoint.json").read_text())["epoch"] == 1
  )
  assert not (tmp_path / "run" / "smallcnn.json").exists()
  done = T.train(_config(tiny_cifar, tmp_path / "run", epochs=3, resume=True))
  assert done.complete and [h["epoch"] for h in done.history] == [1, 2, 3]
  assert done.card_path == tmp_path / "run" / "smallcnn.json"


def test_resume_refuses_a_checkpoint_of_another_recipe(tiny_cifar, tmp_path):
  T.train(_config(tiny_cifar, tmp_path / "run", epochs=2, time_limit=1e-6))
  with pytest.raises(
    ValueError, match=r"another recipe \(lr: checkpoint 0.15, now 0.3\)"
  ):
    T.train(
      _config(tiny_cifar, tmp_path / "run", epochs=2, lr=0.3, resume=True)
    )


@pytest.mark.parametrize(
  "bf16, weights_dtype", [(True, "float32"), (False, "float16")]
)
def test_card_accuracy_is_the_network_as_stored(
  tiny_cifar, tmp_path, bf16, weights_dtype
):
  """After bfloat16 training, or rounding to float16 for storage, the card's
  accuracy is that of the network that loads from the files."""
  result = T.train(
    _config(
      tiny_cifar,
      tmp_path / "run",
      epochs=1,
      bf16=bf16,
      weights_dtype=weights_dtype,
    )
  )
  card = json.loads(result.card_path.read_text())
  model, _ = load_weights(result.card_path)
  for returned, loaded in zip(
    jax.tree.leaves(nnx.state(result.model)), jax.tree.leaves(nnx.state(model))
  ):
    np.testing.assert_array_equal(returned, loaded)
  test = load_cifar10("test", source=tiny_cifar)
  logits = make_predict(model)(jnp.asarray(test.images, jnp.float32))
  accuracy = float(np.mean(np.asarray(logits.argmax(-1)) == test.labels))
  assert card["test_accuracy"] == result.test_accuracy == accuracy
  assert "highest" in card["test_accuracy_precision"]
  assert card["dtype"] == weights_dtype
  assert card["training"]["config"]["bf16"] is bf16


def test_adversarial_fine_tuning_starts_from_the_card(tiny_cifar, tmp_path):
  first = T.train(_config(tiny_cifar, tmp_path / "first", epochs=1))
  card = str(first.card_path)
  tuned = T.train(
    _config(
      tiny_cifar,
      tmp_path / "tuned",
      epochs=1,
      lr=1e-9,
      adversarial=0.5,
      adv_candidates=2,
      init=card,
    )
  )
  # A learning rate of 1e-9: the weights stay where the card left them.
  for a, b in zip(
    jax.tree.leaves(nnx.state(first.model, nnx.Param)),
    jax.tree.leaves(nnx.state(tuned.model, nnx.Param)),
  ):
    np.testing.assert_allclose(a, b, atol=1e-5)
  config = json.loads(tuned.card_path.read_text())["training"]["config"]
  assert config["adversarial"] == 0.5 and config["init"] == card
  with pytest.raises(ValueError, match="init: .* holds a smallcnn"):
    T.train(_config(tiny_cifar, tmp_path / "x", init=card, model_name="nin"))
  with pytest.raises(ValueError, match="adversarial: expected a share"):
    T.TrainConfig(adversarial=1.5).resolved()


def test_train_program_turns_ynnpack_off_unless_told(monkeypatch):
  """`pixeljax train` sets XLA's CPU option before JAX starts, adding to the
  user's XLA_FLAGS and leaving their own YNNPACK setting alone."""
  from pixeljax.xla_options import NO_YNNPACK
  from pixeljax.xla_options import prefer_xla_cpu_convolutions

  monkeypatch.delenv("XLA_FLAGS", raising=False)
  prefer_xla_cpu_convolutions()
  assert os.environ["XLA_FLAGS"] == NO_YNNPACK
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  prefer_xla_cpu_convolutions()
  assert os.environ["XLA_FLAGS"].split() == [
    "--xla_force_host_platform_device_count=2",
    NO_YNNPACK,
  ]
  mine = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
  monkeypatch.setenv("XLA_FLAGS", mine)
  prefer_xla_cpu_convolutions()
  assert os.environ["XLA_FLAGS"] == mine


def test_resume_reads_options_a_checkpoint_lacks_as_the_recipe_defaults():
  """A checkpoint written before an option existed resumes when the option
  keeps the model's recipe value, and is refused when it does not."""
  cfg = T.TrainConfig(model="smallcnn").resolved()
  saved = {k: getattr(cfg, k) for k in T._RECIPE if k != "label_smoothing"}
  T._check_resume(saved, cfg, pathlib.Path("run"))
  smoothed = dataclasses.replace(cfg, label_smoothing=0.1)
  with pytest.raises(ValueError, match="label_smoothing: checkpoint 0.0, now"):
    T._check_resume(saved, smoothed, pathlib.Path("run"))
