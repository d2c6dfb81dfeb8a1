"""Trains a victim network on CIFAR-10 with optax.

SGD with Nesterov momentum, weight decay on the kernels, a cosine (with linear
warm-up) or one-cycle learning-rate schedule, random-crop (pad 4) and
horizontal-flip augmentation done on the device inside the jitted step, and
optional bfloat16 compute. After every epoch a checkpoint (safetensors of
params, batch statistics and optimizer state, plus a JSON with epoch, step and
seed) is written to `--out`, and `--resume` continues from it exactly: the
data order and every random key are functions of (seed, epoch, step). A loss
or weight that becomes NaN or infinite stops the run (DivergedError) before
that epoch's checkpoint, so that the last one stays finite.

    python -m pixeljax.train --model allconv --out runs/allconv

trains with the model's defaults (`DEFAULTS`), CPU recipes meant to beat the
paper's accuracies (AllConv 86.9%, NiN 87.4%, VGG16 83.4%): 16-20 epochs of
cosine SGD with label smoothing 0.1, about 2.3-2.8 hours each on 2 CPU cores.
AllConv's reached 87.05% and VGG16's 87.70% (their cards, in
benchmarks/results/victims, hold the commands and histories); NiN's 20 epochs
reached 86.50%, under the paper's figure, and two fine-tunes from those
weights (`--init`, 8 and then 10 epochs from a peak learning rate of 0.05)
took it to 87.55%.
The final weights and their card go to `--out/<model>.json` + safetensors;
the card's test accuracy is that of the network as stored (evaluated in
float32 at full matmul precision, also after a `--bf16` run, and after the
rounding of `--weights-dtype float16`, which halves the files). `--time-limit S`
stops after the last epoch that fits in S seconds (checkpoint kept, no final
weights): rerun with `--resume` to continue. `--label-smoothing` smooths the
targets of the cross-entropy (the fast CIFAR-10 recipes use 0.1 to 0.2).

    PIXELJAX_DATA=../shared/data/cifar10-jpeg.tar.gz \
      nice python -m pixeljax.train --model smallcnn --out runs/smallcnn

is the CPU stand-in victim shipped in pixeljax/weights/: 5 epochs, 76.9% on
the 10,000 test images (JPEG copy), about 12 CPU-minutes on 2 cores.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Sequence
import dataclasses
import functools
import json
import math
import numbers
import os
import pathlib
import sys
import time
from typing import Any
from typing import NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import safetensors.numpy
from tqdm import tqdm

from pixeljax import errors
from pixeljax import host
from pixeljax.adversarial import one_pixel_examples
from pixeljax.data import load_cifar10
from pixeljax.files import write_atomic
from pixeljax.huge_pages import restart_with_huge_pages
from pixeljax.models.registry import MODELS
from pixeljax.models.registry import create_model
from pixeljax.models.weights import STORAGE_DTYPES
from pixeljax.models.weights import check_storage_dtype
from pixeljax.models.weights import load_weights
from pixeljax.models.weights import round_to_storage
from pixeljax.models.weights import save_weights
from pixeljax.xla_options import prefer_xla_cpu_convolutions

# Per-model recipe; any TrainConfig field left as None takes its value here.
# The paper's victims: recipes for a 2-core CPU (about 140 images/s, 6
# minutes an epoch). AllConv's reached 87.05%, VGG16's 87.70% (their cards, in
# benchmarks/results/victims, hold the commands and histories); NiN's 86.50%,
# under the paper's 87.4%, and 87.55% after two fine-tunes (`--init`).
_CPU_RECIPE = dict(
  batch_size=128,
  lr=0.1,
  weight_decay=5e-4,
  schedule="cosine",
  label_smoothing=0.1,
)
DEFAULTS: dict[str, dict[str, Any]] = {
  "allconv": dict(_CPU_RECIPE, epochs=16),
  "nin": dict(_CPU_RECIPE, epochs=20),
  "vgg16": dict(_CPU_RECIPE, epochs=16, lr=0.05),
  "smallcnn": dict(
    epochs=5,
    batch_size=128,
    lr=0.15,
    weight_decay=5e-4,
    schedule="onecycle",
    label_smoothing=0.0,
  ),
}

CHECKPOINT = "checkpoint"

# The seeds jax.random.key tells apart: it keeps the low 32 bits of a larger
# one (with 64-bit types off, JAX's default), so 2**32 would train as 0.
MAX_SEED = 2**32 - 1


class TrainInputError(errors.InputError, ValueError):
  """A checkpoint to resume from, or an `init` card, that cannot be used: a
  ValueError naming the option in Python, exit 3 (a bad file) on the
  command line."""


class DivergedError(errors.UsageError, FloatingPointError):
  """A loss or a weight that became NaN or infinite, nearly always from too
  high a learning rate: exit 2 (a bad option value) on the command line."""


class _Range(NamedTuple):
  """The values a numeric option takes: `kind` (int or float) from `low` to
  `high`, each end open or closed, and finite."""

  kind: type
  low: float
  high: float = math.inf
  open_low: bool = False
  open_high: bool = False
  noun: str = ""  # what messages call it; default "an int" or "a number"

  def holds(self, value: float) -> bool:
    # NaN fails every comparison.
    above = self.low < value if self.open_low else self.low <= value
    below = value < self.high if self.open_high else value <= self.high
    return above and below and math.isfinite(value)

  def expected(self) -> str:
    if self.high == math.inf:
      noun = self.noun or ("an int" if self.kind is int else "a finite number")
      return f"{noun} {'>' if self.open_low else '>='} {self.low}"
    noun = self.noun or ("an int" if self.kind is int else "a number")
    left, right = "(["[not self.open_low], ")]"[not self.open_high]
    return f"{noun} in {left}{self.low}, {self.high}{right}"


# The numeric fields of TrainConfig, checked by `resolved` and by the
# command line's parser alike (None, where allowed, is not checked).
RANGES: dict[str, _Range] = {
  "epochs": _Range(int, 1),
  "batch_size": _Range(int, 1),
  "lr": _Range(float, 0, open_low=True),
  "weight_decay": _Range(float, 0),
  "momentum": _Range(float, 0, 1, open_high=True),
  "warmup_epochs": _Range(float, 0),
  "seed": _Range(int, 0, MAX_SEED),
  "label_smoothing": _Range(float, 0, 1, open_high=True),
  "adversarial": _Range(float, 0, 1, noun="a share"),
  "adv_candidates": _Range(int, 1),
  "time_limit": _Range(float, 0, open_low=True, noun="finite seconds"),
  "limit_train": _Range(int, 1),
  "limit_test": _Range(int, 1),
  "eval_batch_size": _Range(int, 1),
}


def _check_number(name: str, value: Any) -> None:
  """Raises a TypeError or ValueError, naming field `name`, unless `value`
  is in `RANGES[name]`."""
  want = RANGES[name]
  kind = numbers.Integral if want.kind is int else numbers.Real
  if not isinstance(value, kind) or isinstance(value, bool):
    raise TypeError(
      f"{name}: expected {want.expected()}, got {type(value).__name__} "
      f"{value!r}"
    )
  if not want.holds(value):
    raise ValueError(f"{name}: expected {want.expected()}, got {value!r}")


@dataclasses.dataclass
class TrainConfig:
  """Everything a run depends on; None means the model's default
  (`DEFAULTS`)."""

  model: str = "smallcnn"
  out: str | None = None  # folder for checkpoints and final weights
  epochs: int | None = None
  batch_size: int | None = None
  lr: float | None = None  # peak learning rate
  weight_decay: float | None = None
  schedule: str | None = None  # "cosine" or "onecycle"
  momentum: float = 0.9
  warmup_epochs: float = 1.0  # cosine only
  augment: bool = True
  bf16: bool = False
  seed: int = 0
  # The weight of the uniform target in the cross-entropy.
  label_smoothing: float | None = None
  # One-pixel adversarial training: the share of each batch replaced by
  # one-pixel adversarial examples (pixeljax.adversarial); 0 is off.
  adversarial: float = 0.0
  adv_candidates: int = 4  # pixels tried per adversarial example
  init: str | None = None  # a weights card to start from (fine-tuning)
  # The dtype of the saved weights: "float32", or "float16" for half the
  # bytes (the card's accuracy is then that of the rounded network).
  weights_dtype: str = "float32"
  resume: bool = False
  time_limit: float | None = (
    None  # seconds: stop after the last epoch that fits (resumable)
  )
  limit_train: int | None = None  # use the first N training images (quick runs)
  limit_test: int | None = None
  data: str | None = (
    None  # data source; default PIXELJAX_DATA / load_cifar10 order
  )
  eval_batch_size: int = 500
  progress: bool = True
  command: str | None = None  # recorded in the card

  def resolved(self) -> TrainConfig:
    if self.model not in MODELS:
      raise ValueError(
        f"model: expected one of {sorted(MODELS)}, got {self.model!r}"
      )
    filled = {
      k: v for k, v in DEFAULTS[self.model].items() if getattr(self, k) is None
    }
    cfg = dataclasses.replace(self, **filled)
    if cfg.schedule not in ("cosine", "onecycle"):
      raise ValueError(
        f"schedule: expected 'cosine' or 'onecycle', got {cfg.schedule!r}"
      )
    for name in RANGES:
      if getattr(cfg, name) is not None:
        _check_number(name, getattr(cfg, name))
    check_storage_dtype(cfg.weights_dtype, "weights_dtype")
    if cfg.time_limit is not None and cfg.out is None:
      raise ValueError(
        f"time_limit: needs out= set (the checkpoint to resume from), got "
        f"time_limit={cfg.time_limit} with out=None"
      )
    return cfg


@dataclasses.dataclass
class TrainResult:
  model: nnx.Module  # trained, in eval mode
  test_accuracy: float
  history: list[dict[str, float]]
  card_path: (
    pathlib.Path | None
  )  # None when config.out is None or the run is not complete
  complete: bool = (
    True  # False: stopped by time_limit; resume from the checkpoint
  )


def augment(key: jax.Array, images: jax.Array) -> jax.Array:
  """Random crop after zero-padding 4 pixels, and random horizontal flip.

  images f32 [B, H, W, C] -> f32 [B, H, W, C]; one crop and flip per image.
  """
  b, h, w, c = images.shape
  k_y, k_x, k_flip = jax.random.split(key, 3)
  padded = jnp.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  ys = jax.random.randint(k_y, (b,), 0, 9)
  xs = jax.random.randint(k_x, (b,), 0, 9)
  crop = jax.vmap(
    lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (h, w, c))
  )
  out = crop(padded, ys, xs)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  return jnp.where(flip[:, None, None, None], out[:, :, ::-1], out)


def make_optimizer(
  cfg: TrainConfig, steps_per_epoch: int
) -> optax.GradientTransformation:
  """SGD with Nesterov momentum after L2 weight decay on the kernels only."""
  total = cfg.epochs * steps_per_epoch
  if cfg.schedule == "cosine":
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
    lr = optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, warmup, total, end_value=0.0
    )
  else:
    lr = optax.cosine_onecycle_schedule(total, cfg.lr, pct_start=0.25)
  # Batch-norm scales and biases are 1-D: decaying them only hurts.
  kernels = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
  return optax.chain(
    optax.add_decayed_weights(cfg.weight_decay, mask=kernels),
    optax.sgd(lr, momentum=cfg.momentum, nesterov=True),
  )


def make_steps(
  graphdef,
  tx: optax.GradientTransformation,
  *,
  seed: int,
  do_augment: bool,
  label_smoothing: float = 0.0,
  adversarial: float = 0.0,
  adv_candidates: int = 4,
):
  """Pure jitted train and eval steps over (params, rest) =
  nnx.split(model, nnx.Param, ...).

  train_step(params, rest, opt_state, images u8 [N,H,W,C], labels i64 [N],
             idx i32 [B], step i32)
      -> (params, rest, opt_state, loss f32, correct i32)
  eval_step(params, rest, images u8 [B,H,W,C], labels i64 [B], mask bool [B])
      -> correct i32

  train_step donates (params, rest, opt_state): pass it the state it returned
  last.
  The loss is the cross-entropy against targets smoothed by `label_smoothing`
  (0: the one-hot labels). With `adversarial` > 0, that share of each
  (augmented) batch is replaced by one-pixel adversarial examples made from
  the model as it is at the step (`pixeljax.adversarial`, trying
  `adv_candidates` pixels each), in train mode, its batch statistics left as
  they are.
  """
  base_key = jax.random.key(seed)

  def adversarial_examples(params, rest, x, y, key):
    def image_losses(images):
      model = nnx.merge(graphdef, params, rest, copy=True)
      logits = model(images, rngs=nnx.Rngs(dropout=key))
      # The tries come image by image, `adv_candidates` for each.
      labels = jnp.repeat(y, images.shape[0] // y.shape[0])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    return one_pixel_examples(image_losses, x, candidates=adv_candidates)

  def loss_fn(params, rest, x, y, key):
    # copy=True: fresh Variables at this trace level, so batch norm may update
    # them.
    model = nnx.merge(graphdef, params, rest, copy=True)
    logits = model(x, rngs=nnx.Rngs(dropout=key))
    if label_smoothing:
      targets = optax.smooth_labels(
        jax.nn.one_hot(y, logits.shape[-1]), label_smoothing
      )
      loss = optax.softmax_cross_entropy(logits, targets).mean()
    else:
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, nnx.state(model, nnx.Not(nnx.Param)))

  # Donated: no second copy of the weights and optimizer state per step.
  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_step(params, rest, opt_state, images, labels, idx, step):
    k_aug, k_drop = jax.random.split(jax.random.fold_in(base_key, step))
    x = images[idx].astype(
      jnp.float32
    )  # gathered on the device: no host copy per step
    y = labels[idx]
    if do_augment:
      x = augment(k_aug, x)
    made = round(adversarial * x.shape[0])
    if made:
      x = x.at[:made].set(
        adversarial_examples(params, rest, x[:made], y[:made], k_drop)
      )
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (logits, rest)), grads = grad_fn(params, rest, x, y, k_drop)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, rest, opt_state, loss, (logits.argmax(-1) == y).sum()

  @jax.jit
  def eval_step(params, rest, images, labels, mask):
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    logits = model(images.astype(jnp.float32))
    return ((logits.argmax(-1) == labels) & mask).sum()

  return train_step, eval_step


def evaluate(
  eval_step,
  params,
  rest,
  images: np.ndarray,
  labels: np.ndarray,
  batch_size: int,
) -> float:
  """Accuracy over all images, in fixed-size batches (the last one padded)."""
  n = len(images)
  batch_size = min(batch_size, n)
  correct = 0
  for start in range(0, n, batch_size):
    x, y = (
      images[start : start + batch_size],
      labels[start : start + batch_size],
    )
    pad = batch_size - len(x)
    mask = np.arange(batch_size) < len(x)
    if pad:  # one shape for every batch: one compilation
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      y = np.concatenate([y, np.zeros(pad, y.dtype)])
    correct += int(eval_step(params, rest, x, y, mask))
  return correct / n


# ----------------------------------------------------------------------------
# Checkpoints: safetensors of every array of (params, rest, opt_state) + JSON.


@jax.jit
def _finite(tree) -> jax.Array:
  """Whether every floating-point value in `tree` is finite: bool []."""
  checks = [
    jnp.isfinite(x).all()
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.stack(checks).all() if checks else jnp.array(True)


def _flatten(tree) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
    jax.tree_util.keystr(p): np.asarray(jax.device_get(v)) for p, v in leaves
  }


def _unflatten(template, arrays: dict[str, np.ndarray]):
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for path, like in paths:
    key = jax.tree_util.keystr(path)
    if key not in arrays or arrays[key].shape != like.shape:
      raise ValueError(
        f"tensor {key} missing or of the wrong shape (written by another "
        "model or version?)"
      )
    leaves.append(jnp.asarray(arrays[key], like.dtype))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def save_checkpoint(
  out: pathlib.Path, state: tuple, meta: dict[str, Any]
) -> None:
  """Writes out/checkpoint.safetensors then out/checkpoint.json, each
  atomically."""
  params, rest, opt_state = state
  arrays = {}
  for prefix, tree in (("params", params), ("rest", rest), ("opt", opt_state)):
    arrays.update({prefix + k: v for k, v in _flatten(tree).items()})
  write_atomic(
    out / f"{CHECKPOINT}.safetensors", safetensors.numpy.save(arrays)
  )
  write_atomic(out / f"{CHECKPOINT}.json", json.dumps(meta, indent=1).encode())


def _damaged(out: pathlib.Path, path: pathlib.Path, why: str) -> Exception:
  """The error for a checkpoint file in `out` that cannot be resumed from."""
  return TrainInputError(
    f"resume: cannot resume from {path}: {why}; to start over, delete "
    f"{CHECKPOINT}.json and {CHECKPOINT}.safetensors in {out}, or train into "
    "another --out"
  )


def load_checkpoint_meta(out: pathlib.Path) -> dict[str, Any]:
  """The JSON of the checkpoint in `out`: epoch, step, history, config.

  Raises:
    TrainInputError: the file cannot be read, or holds no such object.
  """
  path = out / f"{CHECKPOINT}.json"
  try:
    meta = json.loads(path.read_text())
  except (OSError, ValueError) as e:  # ValueError: not UTF-8, or not JSON
    raise _damaged(out, path, str(e)) from None
  if not (
    isinstance(meta, dict)
    and isinstance(meta.get("config"), dict)
    and isinstance(meta["config"].get("model"), str)
    and isinstance(meta.get("history"), list)
    and meta.get("epoch") == len(meta["history"])
  ):
    raise _damaged(
      out,
      path,
      "expected a JSON object with config (naming the model), history and "
      "epoch (the number of history records)",
    )
  return meta


def load_checkpoint(out: pathlib.Path, template: tuple) -> tuple:
  """Reads the arrays of the checkpoint in `out`, shaped like `template`.

  Raises:
    TrainInputError: the file cannot be read, does not fit `template`, or
      holds NaN or infinite values.
  """
  path = out / f"{CHECKPOINT}.safetensors"
  try:
    arrays = safetensors.numpy.load_file(path)
    state = []
    for prefix, tree in zip(("params", "rest", "opt"), template):
      part = {
        k[len(prefix) :]: v
        for k, v in arrays.items()
        if k.startswith(prefix + "[")
      }
      state.append(_unflatten(tree, part))
  except (OSError, ValueError, safetensors.SafetensorError) as e:
    raise _damaged(out, path, str(e)) from None
  if not _finite(state):
    raise _damaged(
      out, path, "it holds NaN or infinite values (a run that diverged?)"
    )
  return tuple(state)


# ----------------------------------------------------------------------------


def _limit(data, n: int | None):
  if n is None:
    return data.images, data.labels
  # A seeded shuffle first: the folder sources are sorted by class.
  idx = np.random.default_rng(0).permutation(len(data.images))[:n]
  return data.images[idx], data.labels[idx]


# What a resumed run must share with its checkpoint (absent in old checkpoints:
# the default).
_RECIPE = (
  "model",
  "epochs",
  "batch_size",
  "lr",
  "weight_decay",
  "schedule",
  "momentum",
  "warmup_epochs",
  "augment",
  "bf16",
  "seed",
  "label_smoothing",
  "adversarial",
  "adv_candidates",
  "init",
  "limit_train",
)


def _check_resume(
  saved: dict[str, Any], cfg: TrainConfig, out: pathlib.Path
) -> None:
  # What a checkpoint written before an option existed ran with.
  defaults = TrainConfig(model=cfg.model).resolved()
  diffs = [
    f"{k}: checkpoint {saved.get(k, getattr(defaults, k))!r}, now "
    f"{getattr(cfg, k)!r}"
    for k in _RECIPE
    if saved.get(k, getattr(defaults, k)) != getattr(cfg, k)
  ]
  if diffs:
    raise ValueError(
      f"resume: the checkpoint in {out} was made with another recipe ("
      + "; ".join(diffs)
      + "); pass the same options, or another --out"
    )


def _initial_model(cfg: TrainConfig, dtype, num_classes: int) -> nnx.Module:
  """The model of the weights card ``cfg.init``, in train mode."""
  try:
    model, card = load_weights(cfg.init, dtype=dtype)
  except (OSError, ValueError) as e:
    raise TrainInputError(f"init: cannot load {cfg.init}: {e}") from None
  if card["architecture"] != cfg.model or card.get("num_classes", 10) != (
    num_classes
  ):
    raise TrainInputError(
      f"init: {cfg.init} holds a {card['architecture']} with "
      f"{card.get('num_classes', 10)} classes, not a {cfg.model} with "
      f"{num_classes}"
    )
  return model


# ----------------------------------------------------------------------------
# A run, part by part; train() calls them in this order.


class _Data(NamedTuple):
  """The images of a run, after `limit_train` and `limit_test`.

  Attributes:
    x_train: uint8 [N, 32, 32, 3].
    y_train: int64 [N].
    x_test: uint8 [M, 32, 32, 3].
    y_test: int64 [M].
    num_classes: the training split's number of classes.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int


def _load_data(cfg: TrainConfig) -> _Data:
  """The training and test images of `cfg.data`, limited as `cfg` asks."""
  train_data = load_cifar10("train", source=cfg.data)
  test_data = load_cifar10("test", source=cfg.data)
  x_train, y_train = _limit(train_data, cfg.limit_train)
  x_test, y_test = _limit(test_data, cfg.limit_test)
  return _Data(x_train, y_train, x_test, y_test, len(train_data.class_names))


class _Run(NamedTuple):
  """What stays fixed through a run.

  Attributes:
    model: the network as built (train mode, bfloat16 compute with `bf16`);
      its arrays are the initial state's, which the first train step donates.
    tx: the optimizer.
    train_step: see `make_steps`.
    eval_step: see `make_steps`.
    batch: images per step.
    steps_per_epoch: full batches per epoch.
  """

  model: nnx.Module
  tx: optax.GradientTransformation
  train_step: Callable
  eval_step: Callable
  batch: int
  steps_per_epoch: int


def _build(cfg: TrainConfig, data: _Data) -> tuple[_Run, tuple]:
  """The model, optimizer and steps of a run, and its initial state
  (params, rest, opt_state): new weights, or those of the card `cfg.init`."""
  batch = min(cfg.batch_size, len(data.x_train))
  # The last partial batch is dropped.
  steps_per_epoch = len(data.x_train) // batch
  dtype = jnp.bfloat16 if cfg.bf16 else jnp.float32
  if cfg.init is None:
    model = create_model(
      cfg.model,
      rngs=nnx.Rngs(cfg.seed),
      num_classes=data.num_classes,
      dtype=dtype,
    )
  else:
    model = _initial_model(cfg, dtype, data.num_classes)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = make_optimizer(cfg, steps_per_epoch)
  train_step, eval_step = make_steps(
    graphdef,
    tx,
    seed=cfg.seed,
    do_augment=cfg.augment,
    label_smoothing=cfg.label_smoothing,
    adversarial=cfg.adversarial,
    adv_candidates=cfg.adv_candidates,
  )
  run = _Run(model, tx, train_step, eval_step, batch, steps_per_epoch)
  return run, (params, rest, tx.init(params))


def _restore(
  cfg: TrainConfig, out: pathlib.Path | None, state: tuple
) -> tuple[tuple, int, list[dict[str, float]]]:
  """(state, epochs done, history) to go on from: those of the checkpoint in
  `out` when `cfg.resume` and there is one (of the same recipe, else a
  ValueError; a TrainInputError if damaged), else `state` with none done."""
  if out is None or not (cfg.resume and (out / f"{CHECKPOINT}.json").exists()):
    return state, 0, []
  meta = load_checkpoint_meta(out)
  if meta["config"]["model"] != cfg.model:
    raise ValueError(
      f"resume: checkpoint in {out} is for model "
      f"{meta['config']['model']!r}, not {cfg.model!r}"
    )
  _check_resume(meta["config"], cfg, out)
  return load_checkpoint(out, state), meta["epoch"], meta["history"]


def _check_diverged(
  cfg: TrainConfig,
  run: _Run,
  epoch: int,
  loss_sum: float,
  losses: list[jax.Array],
  state: Sequence,
) -> None:
  """Raises a DivergedError if a loss of epoch `epoch` (from 0), or a value
  of the state after it, is NaN or infinite.

  Called before the epoch's checkpoint, so that the last finite one stays.
  `losses`, the step losses on the device, are read back only when
  `loss_sum`, their weighted sum already read, is not finite: a finite
  epoch costs one check of the state, not a wait per step.
  """
  if math.isfinite(loss_sum) and _finite(state):
    return
  values = np.asarray(jnp.stack(losses))
  bad = np.flatnonzero(~np.isfinite(values))
  n = run.steps_per_epoch
  if len(bad):
    i = int(bad[0])
    where = (
      f"the loss became {values[i]} at step {epoch * n + i + 1} (epoch "
      f"{epoch + 1}, its step {i + 1} of {n})"
    )
  else:  # finite losses of non-finite weights, or a sum past float32's range
    where = (
      f"the weights, or the loss summed over epoch {epoch + 1}, became NaN or "
      "infinite"
    )
  raise DivergedError(
    f"training diverged: {where}; this epoch is not saved. Train with a "
    f"lower learning rate (lr, --lr; this run's peak is {cfg.lr:g})"
  )


def _run_epoch(
  cfg: TrainConfig,
  run: _Run,
  data: _Data,
  on_device: tuple[jax.Array, jax.Array],
  state: tuple,
  epoch: int,
) -> tuple[tuple, dict[str, float]]:
  """Trains epoch `epoch` (from 0), then evaluates on the test images.

  on_device: (data.x_train, data.y_train) on the device. Returns the new
  state and the epoch's history record (its number from 1, mean loss, train
  and test accuracy, seconds of training, images per second), also printed
  with `cfg.progress`.
  """
  order = np.random.default_rng([cfg.seed, epoch]).permutation(
    len(data.x_train)
  )
  t0 = time.perf_counter()
  # Summed on the device: reading them back every step would stall the GPU's
  # queue.
  loss_sum, correct, seen = jnp.zeros(()), jnp.zeros((), jnp.int32), 0
  losses = []  # read back only when their sum is not finite
  show = cfg.progress and sys.stderr.isatty()  # a bar in a log file is noise
  bar = tqdm(
    range(run.steps_per_epoch),
    desc=f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}",
    disable=not show,
    leave=False,
    file=sys.stderr,
  )
  for i in bar:
    step = epoch * run.steps_per_epoch + i
    idx = order[i * run.batch : (i + 1) * run.batch].astype(np.int32)
    *state, loss, ok = run.train_step(*state, *on_device, idx, step)
    losses.append(loss)
    loss_sum += loss * run.batch
    correct += ok
    seen += run.batch
    if show and (i % 10 == 0 or i == run.steps_per_epoch - 1):
      rate = seen / (time.perf_counter() - t0)
      bar.set_postfix(
        loss=f"{float(loss_sum) / seen:.3f}",
        acc=f"{int(correct) / seen:.3f}",
        img_s=f"{rate:.0f}",
      )
  # Waits for the epoch's last step.
  loss_sum, correct = float(loss_sum), int(correct)
  seconds = time.perf_counter() - t0
  _check_diverged(cfg, run, epoch, loss_sum, losses, state)
  test_acc = evaluate(
    run.eval_step,
    state[0],
    state[1],
    data.x_test,
    data.y_test,
    cfg.eval_batch_size,
  )
  if cfg.progress:
    print(
      f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}: loss "
      f"{loss_sum / seen:.4f} "
      f"train acc {correct / seen:.4f} test acc {test_acc:.4f} "
      f"({seconds:.0f} s, {seen / seconds:.0f} img/s)",
      file=sys.stderr,
    )
  return tuple(state), dict(
    epoch=epoch + 1,
    loss=loss_sum / seen,
    train_acc=correct / seen,
    test_acc=test_acc,
    seconds=seconds,
    images_per_s=seen / seconds,
  )


def _run_epochs(
  cfg: TrainConfig,
  run: _Run,
  data: _Data,
  out: pathlib.Path | None,
  state: tuple,
  first_epoch: int,
  history: list[dict[str, float]],
  started: float,
) -> tuple[tuple, bool]:
  """Trains epochs `first_epoch` (from 0) to the end, appending their records
  to `history` and writing a checkpoint to `out` after each.

  With `cfg.time_limit`, stops before an epoch that would end past it (the
  time since `started`, a perf_counter, plus the last epoch's). Returns the
  state and whether the run is complete.
  """
  on_device = jax.device_put(data.x_train), jax.device_put(data.y_train)
  for epoch in range(first_epoch, cfg.epochs):
    elapsed = time.perf_counter() - started
    if (
      cfg.time_limit is not None
      and history
      and (elapsed + history[-1]["seconds"] > cfg.time_limit)
    ):
      return state, False
    state, record = _run_epoch(cfg, run, data, on_device, state, epoch)
    history.append(record)
    if out is not None:
      save_checkpoint(
        out,
        state,
        dict(
          epoch=epoch + 1,
          step=(epoch + 1) * run.steps_per_epoch,
          rng=dict(
            seed=cfg.seed,
            keys="fold_in(key(seed), step)",
            order="default_rng([seed, epoch]).permutation",
          ),
          config=dataclasses.asdict(cfg),
          history=history,
        ),
      )
  return state, True


def _stored_network(
  cfg: TrainConfig, run: _Run, data: _Data, state: tuple, test_acc: float
) -> tuple[nnx.Module, float]:
  """The trained network as its files hold it (float32, rounded to
  `cfg.weights_dtype`), in eval mode, and its test accuracy: `test_acc`, the
  last epoch's, where that was measured on this same network."""
  # The victim is the network as stored, run in float32: evaluate it so,
  # whatever the training dtype, the storage rounding and the device's default
  # matmul precision (TF32 on recent GPUs); a float32 run on a CPU, stored as
  # float32, was evaluated so already.
  model = nnx.eval_shape(
    lambda: create_model(
      cfg.model, rngs=nnx.Rngs(cfg.seed), num_classes=data.num_classes
    )
  )
  nnx.update(model, state[0], state[1])
  round_to_storage(model, cfg.weights_dtype)
  if (
    cfg.bf16 or jax.default_backend() != "cpu" or cfg.weights_dtype != "float32"
  ):
    graphdef32, params32, rest32 = nnx.split(model, nnx.Param, ...)
    _, eval32 = make_steps(graphdef32, run.tx, seed=cfg.seed, do_augment=False)
    with jax.default_matmul_precision("highest"):
      test_acc = evaluate(
        eval32, params32, rest32, data.x_test, data.y_test, cfg.eval_batch_size
      )
  model.eval()
  return model, test_acc


def _write_card(
  cfg: TrainConfig,
  out: pathlib.Path,
  model: nnx.Module,
  test_acc: float,
  data: _Data,
  history: list[dict[str, float]],
) -> pathlib.Path:
  """Saves `model` to out/<model>.safetensors with its card (test accuracy,
  data, recipe, history, device); returns the card's path."""
  return save_weights(
    model,
    out,
    cfg.model,
    architecture=cfg.model,
    storage_dtype=cfg.weights_dtype,
    card=dict(
      test_accuracy=test_acc,
      test_accuracy_precision=(
        "float32 compute, jax default_matmul_precision 'highest'"
      ),
      eval_data=dict(
        split="test",
        source=cfg.data
        or os.environ.get("PIXELJAX_DATA")
        or "load_cifar10 default order",
        num_images=len(data.x_test),
      ),
      train_data=dict(split="train", num_images=len(data.x_train)),
      training_command=cfg.command,
      training=dict(
        config=dataclasses.asdict(cfg),
        history=history,
        train_seconds=sum(h["seconds"] for h in history),
        device=str(jax.devices()[0]),
        device_kind=jax.devices()[0].device_kind,
        host=host.describe(),
        jax=jax.__version__,
      ),
    ),
  )


def train(config: TrainConfig) -> TrainResult:
  """Trains `config.model`; writes checkpoints and the final weights + card to
  `config.out` (when set). Returns the trained model and its test accuracy
  (float32 compute at full precision, whatever the training dtype).

  With `time_limit`, stops before an epoch that would end past it (judged by
  the last epoch's time) and returns `complete=False`, no card: the
  checkpoint holds the run so far, and `resume=True` continues it."""
  started = time.perf_counter()  # the time limit counts loading and compiling
  cfg = config.resolved()
  data = _load_data(cfg)
  run, state = _build(cfg, data)
  out = pathlib.Path(cfg.out) if cfg.out else None
  if out is not None:
    out.mkdir(parents=True, exist_ok=True)
  state, first_epoch, history = _restore(cfg, out, state)
  state, complete = _run_epochs(
    cfg, run, data, out, state, first_epoch, history, started
  )
  test_acc = history[-1]["test_acc"] if history else float("nan")
  if not complete:
    nnx.update(run.model, state[0], state[1])
    run.model.eval()
    return TrainResult(run.model, test_acc, history, None, complete=False)
  model, test_acc = _stored_network(cfg, run, data, state, test_acc)
  card_path = None
  if out is not None:
    card_path = _write_card(cfg, out, model, test_acc, data, history)
  return TrainResult(model, test_acc, history, card_path)


def _parsed(name: str) -> Callable[[str], float]:
  """An argparse type: the number a text spells, if in `RANGES[name]`."""
  want = RANGES[name]

  def parse(text: str) -> float:
    try:
      value = want.kind(text)
    except ValueError:
      value = None
    if value is None or not want.holds(value):
      raise argparse.ArgumentTypeError(
        f"expected {want.expected()}, got {text!r}"
      )
    return value

  return parse


def _parser() -> argparse.ArgumentParser:
  # `pixeljax train` and `python -m pixeljax.train` are the same program.
  p = argparse.ArgumentParser(
    prog="pixeljax train",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--model",
    required=True,
    choices=sorted(MODELS),
    help="the architecture to train",
  )
  p.add_argument(
    "--out", required=True, help="folder for checkpoints and final weights"
  )
  p.add_argument(
    "--epochs",
    type=_parsed("epochs"),
    help="training epochs (default: the model's recipe)",
  )
  p.add_argument(
    "--batch-size",
    type=_parsed("batch_size"),
    help="images per step (default: the model's recipe)",
  )
  p.add_argument(
    "--lr",
    type=_parsed("lr"),
    help="peak learning rate (default: the model's recipe)",
  )
  p.add_argument(
    "--weight-decay",
    type=_parsed("weight_decay"),
    help="L2 weight decay on the kernels (default: the model's recipe)",
  )
  p.add_argument(
    "--schedule",
    choices=("cosine", "onecycle"),
    help="learning-rate schedule (default: the model's recipe)",
  )
  p.add_argument(
    "--momentum",
    type=_parsed("momentum"),
    default=0.9,
    help="Nesterov momentum (default 0.9)",
  )
  p.add_argument(
    "--warmup-epochs",
    type=_parsed("warmup_epochs"),
    default=1.0,
    help="linear warm-up before the cosine decay, in epochs (default 1)",
  )
  p.add_argument(
    "--no-augment",
    dest="augment",
    action="store_false",
    help="no random-crop and flip augmentation",
  )
  p.add_argument(
    "--bf16", action="store_true", help="bfloat16 compute (GPU/TPU)"
  )
  p.add_argument(
    "--seed",
    type=_parsed("seed"),
    default=0,
    help="seeds the weights, the data order and the augmentation: 0 to "
    f"{MAX_SEED} (default 0)",
  )
  p.add_argument(
    "--label-smoothing",
    type=_parsed("label_smoothing"),
    help="weight of the uniform target in the cross-entropy (default: the "
    "model's recipe)",
  )
  p.add_argument(
    "--adversarial",
    type=_parsed("adversarial"),
    default=0.0,
    metavar="SHARE",
    help="one-pixel adversarial training: replace this share of each batch "
    "by one-pixel adversarial examples made at each step (default 0: off; "
    "0.5 is usual)",
  )
  p.add_argument(
    "--adv-candidates",
    type=_parsed("adv_candidates"),
    default=4,
    help="pixels tried per adversarial example, picked by the gradient "
    "(default 4)",
  )
  p.add_argument(
    "--init",
    metavar="CARD",
    help="start from the weights of this card (NAME.json), e.g. to "
    "fine-tune a trained model adversarially",
  )
  p.add_argument(
    "--weights-dtype",
    choices=tuple(STORAGE_DTYPES),
    default="float32",
    help="dtype of the saved weights: float16 halves the files; the card's "
    "accuracy is that of the rounded network (default float32)",
  )
  p.add_argument(
    "--resume", action="store_true", help="continue from --out/checkpoint.json"
  )
  p.add_argument(
    "--time-limit",
    type=_parsed("time_limit"),
    metavar="SECONDS",
    help="stop after the last epoch that fits (checkpoint kept; --resume "
    "goes on)",
  )
  p.add_argument(
    "--limit-train",
    type=_parsed("limit_train"),
    help="train on N images (quick runs)",
  )
  p.add_argument(
    "--limit-test", type=_parsed("limit_test"), help="evaluate on N images"
  )
  p.add_argument(
    "--data",
    help="CIFAR-10 source (default: PIXELJAX_DATA, then the "
    "load_cifar10 order)",
  )
  p.add_argument(
    "--quiet",
    dest="progress",
    action="store_false",
    help="no progress bar and no line per epoch (the card keeps the history)",
  )
  return p


def main(argv: Sequence[str] | None = None) -> TrainResult:
  """Command-line entry: parses `argv` (default sys.argv[1:]) and trains."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = vars(_parser().parse_args(argv))
  cfg = TrainConfig(
    **args, command="python -m pixeljax.train " + " ".join(argv)
  )
  result = train(cfg)
  if not result.complete:
    print(
      f"{cfg.model}: time limit: stopped after epoch {len(result.history)} of "
      f"{cfg.resolved().epochs} (test accuracy "
      f"{result.test_accuracy:.4f}); rerun with --resume to continue"
    )
    return result
  print(
    f"{cfg.model}: test accuracy {result.test_accuracy:.4f}"
    + (
      f"; weights and card in {result.card_path.parent}"
      if result.card_path
      else ""
    )
  )
  return result


if __name__ == "__main__":
  # Before JAX starts: huge pages for malloc (pixeljax.huge_pages; a
  # restart), and XLA's CPU use of YNNPACK off: it trains the victims slower
  # on the CPUs measured (pixeljax.xla_options). Set here, not in main(), so
  # that a call from Python leaves the process alone.
  restart_with_huge_pages()
  prefer_xla_cpu_convolutions()
  try:
    main()
  except errors.UserError as e:  # exit codes as `pixeljax train` gives them
    print(f"pixeljax train: error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
