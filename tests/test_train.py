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
import safetensors.numpy

from pixeljax import cli
from pixeljax import errors
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


def _tiny_run_argv(data, out, *options):
  """One quick SmallCNN epoch on 32 images of `data` into `out`."""
  return [
    "--model",
    "smallcnn",
    "--out",
    str(out),
    "--data",
    data,
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--limit-train",
    "32",
    "--limit-test",
    "10",
    *options,
    "--quiet",
  ]


def test_main_writes_weights_and_card(tiny_cifar, tmp_path):
  argv = _tiny_run_argv(tiny_cifar, tmp_path / "run")
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


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
  "field, value",
  [
    ("lr", NAN),
    ("lr", -1.0),
    ("lr", 0.0),
    ("lr", INF),
    ("weight_decay", -1e-4),
    ("weight_decay", NAN),
    ("momentum", 1.0),
    ("momentum", NAN),
    ("warmup_epochs", INF),
    ("label_smoothing", 1.0),
    ("label_smoothing", NAN),
    ("adversarial", NAN),
    ("time_limit", NAN),
    ("time_limit", INF),
    ("seed", -1),
    ("seed", T.MAX_SEED + 1),
    ("epochs", 0),
    ("limit_train", 0),
  ],
)
def test_config_refuses_numbers_out_of_range(field, value):
  with pytest.raises(ValueError, match=f"^{field}: expected .*got"):
    T.TrainConfig(out="run", **{field: value}).resolved()


def test_config_refuses_numbers_of_another_type():
  with pytest.raises(
    TypeError, match="lr: expected a finite number > 0, got str"
  ):
    T.TrainConfig(lr="0.1").resolved()
  with pytest.raises(TypeError, match="seed: expected an int"):
    T.TrainConfig(seed=1.0).resolved()
  cfg = T.TrainConfig(seed=T.MAX_SEED, lr=1, momentum=0.0).resolved()
  assert cfg.seed == T.MAX_SEED and cfg.lr == 1


@pytest.mark.parametrize(
  "option, value",
  [
    ("--lr", "nan"),
    ("--lr", "-1"),
    ("--time-limit", "nan"),
    ("--weight-decay", "inf"),
    ("--momentum", "-0.5"),
    ("--label-smoothing", "1"),
    ("--warmup-epochs", "-1"),
    ("--seed", "9223372036854775808"),
    ("--seed", str(T.MAX_SEED + 1)),
    ("--epochs", "1.5"),
  ],
)
def test_train_command_refuses_bad_numbers_at_parse_time(option, value, capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(["train", "--model", "smallcnn", "--out", "x", option, value])
  assert exit_.value.code == errors.EXIT_USAGE
  assert f"argument {option}: expected" in capsys.readouterr().err


def test_the_seed_range_is_what_jax_tells_apart():
  """Seeds past 2**32 - 1 would silently train as smaller ones."""
  data = lambda seed: np.asarray(jax.random.key_data(jax.random.key(seed)))  # noqa: E731
  assert not np.array_equal(data(T.MAX_SEED), data(0))
  np.testing.assert_array_equal(data(T.MAX_SEED + 1), data(0))
  order = np.random.default_rng([T.MAX_SEED, 1]).permutation(4)
  assert sorted(order) == [0, 1, 2, 3]


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


@pytest.mark.parametrize(
  "flags, ynnpack",
  [
    ("", True),  # XLA's default
    ("--xla_force_host_platform_device_count=2", True),
    ("--xla_cpu_experimental_ynn_fusion_type=", False),
    ("--xla_cpu_experimental_ynn_fusion_type=individual_dot", False),
    ("--xla_cpu_experimental_ynn_fusion_type=individual_convolution", True),
  ],
)
def test_reads_whether_ynnpack_runs_the_convolutions(
  flags, ynnpack, monkeypatch
):
  """train_ops takes XLA's own kernel gradient only where YNNPACK does not
  run the convolutions: the process's XLA_FLAGS say."""
  from pixeljax.xla_options import ynnpack_runs_cpu_convolutions

  monkeypatch.setenv("XLA_FLAGS", flags)
  assert ynnpack_runs_cpu_convolutions() is ynnpack


def test_resume_reads_options_a_checkpoint_lacks_as_the_recipe_defaults():
  """A checkpoint written before an option existed resumes when the option
  keeps the model's recipe value, and is refused when it does not."""
  cfg = T.TrainConfig(model="smallcnn").resolved()
  saved = {k: getattr(cfg, k) for k in T._RECIPE if k != "label_smoothing"}
  T._check_resume(saved, cfg, pathlib.Path("run"))
  smoothed = dataclasses.replace(cfg, label_smoothing=0.1)
  with pytest.raises(ValueError, match="label_smoothing: checkpoint 0.0, now"):
    T._check_resume(saved, smoothed, pathlib.Path("run"))


def _poisoned_steps(monkeypatch, from_step):
  """make_steps whose train step returns a NaN loss from step `from_step`."""
  make_steps = T.make_steps

  def poisoned(*args, **kwargs):
    train_step, eval_step = make_steps(*args, **kwargs)

    def step(*inputs):
      *state, loss, correct = train_step(*inputs)
      nan = inputs[-1] >= from_step
      return (*state, loss * np.float32("nan") if nan else loss, correct)

    return step, eval_step

  monkeypatch.setattr(T, "make_steps", poisoned)


def test_a_nan_loss_stops_training_and_keeps_the_last_checkpoint(
  tiny_cifar, tmp_path, monkeypatch
):
  # 48 images in batches of 16: 3 steps an epoch; steps 3.. (epoch 2) are NaN.
  _poisoned_steps(monkeypatch, from_step=3)
  out = tmp_path / "run"
  with pytest.raises(
    T.DivergedError,
    match=r"loss became nan at step 4 \(epoch 2, its step 1 of 3\).*lower "
    r"learning rate \(lr, --lr; this run's peak is 0.15\)",
  ):
    T.train(_config(tiny_cifar, out, epochs=2))
  meta = json.loads((out / "checkpoint.json").read_text())
  assert meta["epoch"] == 1 and len(meta["history"]) == 1
  arrays = safetensors.numpy.load_file(out / "checkpoint.safetensors")
  assert all(np.isfinite(a).all() for a in arrays.values())
  assert not (out / "smallcnn.json").exists()


def test_check_diverged_sees_non_finite_weights_under_finite_losses():
  run = T._Run(None, None, None, None, batch=16, steps_per_epoch=2)
  cfg = T.TrainConfig(lr=0.5)
  losses = [jnp.float32(2.3), jnp.float32(2.2)]
  finite = [{"w": jnp.ones(3)}, {"count": jnp.zeros((), jnp.int32)}]
  T._check_diverged(cfg, run, 0, 72.0, losses, finite)
  weights = [{"w": jnp.array([1.0, jnp.inf, 0.0])}]
  with pytest.raises(T.DivergedError, match="the weights.*epoch 3.*0.5"):
    T._check_diverged(cfg, run, 2, 72.0, losses, weights)
  losses[1] = jnp.float32("inf")
  with pytest.raises(T.DivergedError, match="loss became inf at step 6"):
    T._check_diverged(cfg, run, 2, float("inf"), losses, finite)


def test_a_diverging_learning_rate_writes_nothing(tiny_cifar, tmp_path, capsys):
  out = tmp_path / "run"
  argv = ["train", *_tiny_run_argv(tiny_cifar, out, "--lr", "1e30")]
  assert cli.main(argv) == errors.EXIT_USAGE
  assert "training diverged" in capsys.readouterr().err
  assert list(out.iterdir()) == []


def _resume_argv(data, out):
  return [
    "--model",
    "smallcnn",
    "--out",
    str(out),
    "--data",
    data,
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--quiet",
    "--resume",
  ]


def _damage(kind, out, cfg):
  """Writes a checkpoint of `cfg` to `out`, damaged as `kind` says."""
  meta = dict(
    epoch=1,
    step=3,
    config=dataclasses.asdict(cfg),
    history=[dict(epoch=1, loss=2.3, test_acc=0.1, seconds=1.0)],
  )
  out.mkdir()
  if kind == "nan weights":  # the arrays of a real run, its weights NaN
    _, state = T._build(cfg, T._load_data(cfg))
    params = jax.tree.map(lambda p: p * np.nan, state[0])
    T.save_checkpoint(out, (params, *state[1:]), meta)
    return
  text = json.dumps(meta)
  tensors = safetensors.numpy.save({"params['w']": np.zeros(64, np.float32)})
  if kind == "no config":
    text = json.dumps({k: v for k, v in meta.items() if k != "config"})
  elif kind == "truncated json":
    text = text[: len(text) // 2]
  elif kind == "truncated arrays":
    tensors = tensors[: len(tensors) // 2]
  (out / "checkpoint.json").write_text(text)
  if kind != "no arrays":
    (out / "checkpoint.safetensors").write_bytes(tensors)


@pytest.mark.parametrize(
  "kind, damaged",
  [
    ("truncated arrays", "checkpoint.safetensors"),
    ("no arrays", "checkpoint.safetensors"),
    ("other arrays", "checkpoint.safetensors"),
    ("nan weights", "checkpoint.safetensors"),
    ("no config", "checkpoint.json"),
    ("truncated json", "checkpoint.json"),
  ],
)
def test_resume_names_a_damaged_checkpoint(
  kind, damaged, tiny_cifar, tmp_path, capsys
):
  out = tmp_path / "run"
  argv = _resume_argv(tiny_cifar, out)
  cfg = T.TrainConfig(**vars(T._parser().parse_args(argv))).resolved()
  _damage(kind, out, cfg)
  assert cli.main(["train", *argv]) == errors.EXIT_INPUT
  err = capsys.readouterr().err
  assert f"cannot resume from {out / damaged}: " in err
  assert (
    "to start over, delete checkpoint.json and checkpoint.safetensors in "
    f"{out}, or train into another --out"
  ) in err
  with pytest.raises(ValueError, match="resume: cannot resume"):
    T.train(cfg)


def test_a_bad_init_card_is_a_file_error(tiny_cifar, tmp_path, capsys):
  card = tmp_path / "card.json"
  card.write_text("{not json")
  argv = ["train", "--model", "smallcnn", "--out", str(tmp_path / "run")]
  argv += ["--data", tiny_cifar, "--init", str(card), "--quiet"]
  assert cli.main(argv) == errors.EXIT_INPUT
  assert f"init: cannot load {card}" in capsys.readouterr().err
