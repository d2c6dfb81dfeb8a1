"""Attacks many images from a data set, resumably: what `pixeljax attack` runs.

Steps: load the victim (a shipped model, a weights card, or an ONNX or
PyTorch model through ``pixeljax.adapters``) and the images
(CIFAR-10 test, the packaged sample when no data set is found, or a folder of
the user's own pictures); pick, with a seeded shuffle, the first N images the
model classifies correctly; then attack them with ``stream_attack`` (a fixed
number of slots, refilled as attacks finish: the same results as
``batched_attack``), appending each finished attack's record (and PNG) to the
run folder (``runs.RunStore``) at once. Rerunning with the same settings
skips the attacks already recorded; each attack's random stream is
``fold_in(key(seed), id)`` with an id fixed by the image (and target), so its
result does not depend on what else was in flight with it.
"""

from collections.abc import Callable
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import pathlib
import pickle
import re
import sys
import time
from typing import NamedTuple

import jax
import numpy as np
from tqdm import tqdm

import pixeljax
from pixeljax import data as data_lib
from pixeljax import metrics
from pixeljax import plots
from pixeljax import runs
from pixeljax.errors import InputError
from pixeljax.errors import UsageError
from pixeljax.models import registry
from pixeljax.models import weights as weights_lib

# The default victim: the first of these whose weights ship.
DEFAULT_MODEL_ORDER = ("allconv", "nin", "vgg16", "smallcnn")
RUN_FORMAT = "pixeljax.run/1"
# Settings that describe rather than decide: the same images named by another
# path (relative or absolute, a link, a copy) resume the same run.
_UNCOMPARED = (("data", "source"),)
_SAMPLE_SOURCE = "packaged CIFAR-10 test sample"
_SELECT_BATCH = 250
_OPTION_NAMES = {
  "model": "--model/--weights/--onnx/--torch",
  "data": "data (--data/--folder/--size)",
  "images": "--images",
  "seed": "--seed",
  "pixels": "--pixels",
  "targeted": "--targeted",
  "target": "--target",
  "popsize": "--popsize",
  "maxiter": "--maxiter",
  "mutation": "--mutation",
  "crossover": "--crossover",
}


@dataclasses.dataclass(frozen=True)
class AttackOptions:
  """What `pixeljax attack` was asked to do (see its --help).

  Defaults are the paper's settings; the command line fills every field.
  """

  out: str | None = None  # None: default_out()
  model: str | None = None
  weights: str | None = None
  onnx: str | None = None  # an ONNX file
  torch: str | None = None  # "module:function" or "file.py:function"
  torch_weights: str | None = None  # a state dict for --torch
  nchw: bool | None = None  # None: the ONNX input's layout; torch: NHWC
  data: str | None = None
  folder: str | None = None
  size: int = 32
  skip_bad_images: bool = False  # --folder: leave unreadable images out
  download: bool = True
  images: int = 500
  pixels: tuple = (1,)
  targeted: bool = False
  target: str | None = None
  popsize: int = 400
  maxiter: int = 100
  mutation: float = 0.5
  crossover: float | None = None
  seed: int = 0
  batch_size: int | None = None
  slots: int = 32
  examples: bool = True
  figures: bool = True
  progress: bool = True


class Victim(NamedTuple):
  """predict: f32 [B, H, W, 3] in 0..255 -> logits f32 [B, K]."""

  predict: Callable
  num_classes: int
  identity: dict  # name, architecture and file hashes: part of the settings


class Pool(NamedTuple):
  """Images to choose from: uint8 [N, H, W, 3], int64 labels [N]."""

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple
  identity: dict  # where the images came from and their hash
  paths: list | None = None  # each image's file, for --folder


def enable_compile_cache():
  """Keeps compiled attacks on disk (PIXELJAX_CACHE/jax), so that a rerun
  or a resumed run with the same shapes skips compilation. A cache folder
  the user chose (JAX_COMPILATION_CACHE_DIR) is left as it is."""
  if jax.config.jax_compilation_cache_dir is None:
    jax.config.update(
      "jax_compilation_cache_dir", str(data_lib.cache_dir() / "jax")
    )
    jax.config.update("jax_compilation_cache_max_size", 2**30)
    # Small programs too: a run compiles a few, each worth a second or so.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _say(message: str):
  print(message, file=sys.stderr, flush=True)


def shipped_default() -> str | None:
  """The default model: the first of DEFAULT_MODEL_ORDER that ships."""
  shipped = weights_lib.shipped_models()
  return next((m for m in DEFAULT_MODEL_ORDER if m in shipped), None)


def load_victim(name: str | None, weights: str | None) -> Victim:
  """A shipped model by name (default: ``shipped_default()``) or the model of
  a weights card; ``InputError`` saying what exists when neither works."""
  if weights is not None:
    path = pathlib.Path(weights)
    if not path.is_file():
      raise InputError(
        f"--weights {path}: no such file; pass the NAME.json "
        "card written next to the .safetensors files"
      )
    try:
      model, card = weights_lib.load_weights(path)
    except ValueError as e:
      raise InputError(f"--weights: {e}") from None
    model.eval()
    name = card.get("name", path.stem)
  else:
    shipped = weights_lib.shipped_models()
    train_hint = (
      "train one with `pixeljax train --model smallcnn --out "
      "DIR`, then pass --weights DIR/smallcnn.json"
    )
    if name is None:
      name = shipped_default()
      if name is None:
        raise InputError(
          f"no trained weights ship with this install; {train_hint}"
        )
    if name not in shipped:
      known = ", ".join(shipped) or "none"
      raise InputError(
        f"--model {name!r}: no such model with shipped weights; known: "
        f"{known}. Architectures {', '.join(sorted(registry.MODELS))} can "
        f"be trained: {train_hint.replace('smallcnn', 'NAME')}"
      )
    model = weights_lib.load_victim(name)
    card = weights_lib.shipped_card(name)
  identity = dict(
    name=name, architecture=card["architecture"], files=card["files"]
  )
  return Victim(
    registry.make_predict(model), int(card.get("num_classes", 10)), identity
  )


# The arguments of pixeljax.adapters that its messages start with.
_ADAPTER_ARGUMENTS = ("path", "torch_factory", "module", "weights", "nchw")


def _file_sha256(path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def load_external_victim(options: AttackOptions) -> Victim:
  """The --onnx or --torch (with --torch-weights) model as a Victim, its
  K read from one forward pass at the run's image shape ([size, size, 3]
  for --folder, else [32, 32, 3]).

  Its identity holds the name (the ONNX file's stem, or the factory's
  function), the architecture, the layout and the sha256 of each file read
  (the ONNX file; a --torch factory file and its weights), not their paths.
  ``InputError`` naming the option when the model cannot be loaded or run.
  """
  from pixeljax import adapters

  if options.onnx is not None:
    flag, framework, extra = f"--onnx {options.onnx}", "onnxruntime", "onnx"
  else:
    flag, framework, extra = f"--torch {options.torch}", "torch", "torch"
  if importlib.util.find_spec(framework) is None:
    raise InputError(
      f"{flag}: needs {framework}, which is not installed: "
      f'pip install "pixeljax[{extra}]"'
    )
  size = options.size if options.folder is not None else 32
  try:
    external = adapters.load_external(
      onnx=options.onnx,
      torch_factory=options.torch,
      weights=options.torch_weights,
      nchw=options.nchw,
      image_shape=(size, size, 3),
    )
  except Exception as e:
    # The factory's code and the frameworks raise what they like; what
    # names a bad file or model is the user's to fix, anything else a bug.
    foreign = type(e).__module__.split(".")[0] in ("onnxruntime", "safetensors")
    if not foreign and not isinstance(
      e,
      (
        ValueError,
        TypeError,
        KeyError,
        OSError,
        RuntimeError,
        ImportError,
        pickle.UnpicklingError,
      ),
    ):
      raise
    argument, colon, rest = str(e).partition(": ")
    if colon and argument in _ADAPTER_ARGUMENTS:  # adapters' own checks
      where = (
        f"--torch-weights {options.torch_weights}"
        if argument == "weights"
        else flag
      )
      raise InputError(f"{where}: {rest}") from None
    # The file, the framework or the factory's own code failed.
    hint = (
      "; a module that takes [B, C, H, W] needs --nchw"
      if options.torch is not None
      and not options.nchw
      and isinstance(e, RuntimeError)
      else ""
    )
    raise InputError(
      f"{flag}: cannot load or run the model: {type(e).__name__}: {e}{hint}"
    ) from None
  identity = dict(external.identity, nchw=bool(options.nchw))
  where, _, function = (options.torch or "").rpartition(":")
  if where.endswith(".py"):  # the factory's code is part of the model
    factory = pathlib.Path(where)
    identity["architecture"] = f"torch:{factory.name}:{function}"
    identity["files"] = {
      factory.name: _file_sha256(factory),
      **identity["files"],
    }
  return Victim(external.predict, external.num_classes, identity)


def _fingerprint(images, labels) -> str:
  digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
  digest.update(np.asarray(labels, np.int64).tobytes())
  return digest.hexdigest()[:16]


def load_pool(options: AttackOptions) -> Pool:
  """The images to attack: a folder, CIFAR-10 test, or the packaged sample."""
  if options.folder is not None:
    return _load_folder(options.folder, options.size, options.skip_bad_images)
  if options.data is not None and not os.path.exists(options.data):
    raise InputError(f"--data {options.data}: no such file or folder")
  try:
    found = data_lib.load_cifar10(
      "test", source=options.data, download=options.download
    )
    source = options.data or os.environ.get("PIXELJAX_DATA") or "default"
    where = f"CIFAR-10 test ({source})"
  except data_lib.DataNotFoundError as e:
    if options.data is not None:
      raise InputError(f"--data: {e}") from None
    found = data_lib.load_cifar10_sample()
    where = _SAMPLE_SOURCE
    _say(
      "No CIFAR-10 data set found (set PIXELJAX_DATA or pass --data); "
      f"using the packaged sample of {len(found.images)} test images."
    )
  except data_lib.DataCorruptError as e:
    raise InputError(str(e)) from None
  return Pool(
    found.images,
    found.labels,
    tuple(found.class_names),
    dict(
      source=where,
      count=len(found.images),
      sha256=_fingerprint(found.images, found.labels),
    ),
  )


def _load_folder(folder: str, size: int, skip_bad: bool) -> Pool:
  """A folder ``<class>/*.png|jpg`` of the user's pictures, resized to
  ``size`` x ``size``, labelled in the CIFAR-10 class order; with
  ``skip_bad``, unreadable images are left out and listed on stderr."""
  try:
    found = data_lib.load_image_folder(
      folder, size=(size, size), skip_bad=skip_bad
    )
  except data_lib.DataCorruptError as e:
    hint = (
      "" if skip_bad else "; pass --skip-bad-images to leave bad images out"
    )
    raise InputError(f"--folder: {e}{hint}") from None
  except (FileNotFoundError, ValueError) as e:
    raise InputError(f"--folder: {e}") from None
  if found.skipped:
    _say(
      f"Skipped {len(found.skipped)} bad images of {folder} "
      "(--skip-bad-images):\n"
      + "\n".join(
        f"  {os.path.relpath(p, folder)}: {why}" for p, why in found.skipped
      )
    )
  classes = data_lib.CIFAR10_CLASSES
  unknown = [c for c in found.class_names if c not in classes]
  if unknown:
    raise InputError(
      f"--folder: sub-folders {unknown} are not classes of "
      f"the model; name each after one of {list(classes)}"
    )
  # Folder labels follow the folder names; the model's follow CIFAR-10.
  remap = np.array([classes.index(c) for c in found.class_names])
  labels = remap[found.labels]
  return Pool(
    found.images,
    labels,
    classes,
    dict(
      source=f"folder {os.path.abspath(folder)}",
      count=len(found.images),
      size=size,
      sha256=_fingerprint(found.images, labels),
    ),
    [os.path.relpath(p, folder) for p in found.paths],
  )


def resolve_target(target: str | None, class_names) -> int | None:
  """--target as a class index, from a name or a number."""
  if target is None:
    return None
  if target in class_names:
    return class_names.index(target)
  if target.isdigit() and int(target) < len(class_names):
    return int(target)
  raise UsageError(
    f"--target {target!r}: expected a class name or index "
    f"0..{len(class_names) - 1}: {', '.join(class_names)}"
  )


def _softmax(logits):
  shifted = np.exp(logits - logits.max(-1, keepdims=True))
  return shifted / shifted.sum(-1, keepdims=True)


def select_images(
  predict, pool: Pool, count: int, seed: int, exclude_label: int | None
):
  """The first ``count`` images, in a ``seed``-ed shuffle, that the model
  classifies correctly (and whose label is not ``exclude_label``).

  Returns:
    (positions int64 [n], clean_prob float32 [n] (probability of the true
    label), looked: how many images of the shuffle were examined).
  """
  order = np.random.default_rng(seed).permutation(len(pool.images))
  if exclude_label is not None:
    order = order[pool.labels[order] != exclude_label]
  forward = jax.jit(predict)
  chosen, probs, looked = [], [], 0
  for start in range(0, len(order), _SELECT_BATCH):
    part = order[start : start + _SELECT_BATCH]
    batch = np.zeros((_SELECT_BATCH,) + pool.images.shape[1:], np.float32)
    batch[: len(part)] = pool.images[part]  # one shape: one compilation
    p = _softmax(np.asarray(forward(batch), np.float64)[: len(part)])
    labels = pool.labels[part]
    for i in np.flatnonzero(p.argmax(-1) == labels):
      if len(chosen) == count:
        break
      chosen.append(part[i])
      probs.append(p[i, labels[i]])
      looked = start + i + 1
    if len(chosen) == count:
      break
  else:
    looked = len(order)
  return (np.array(chosen, np.int64), np.array(probs, np.float32), looked)


def _settings(options, victim, pool, target) -> dict:
  """What decides the results; a resumed run must match it exactly."""
  return dict(
    format=RUN_FORMAT,
    model=victim.identity,
    data=pool.identity,
    images=options.images,
    seed=options.seed,
    pixels=list(options.pixels),
    targeted=options.targeted,
    target=target,
    popsize=options.popsize,
    maxiter=options.maxiter,
    mutation=options.mutation,
    crossover=options.crossover,
  )


def _tasks(settings, labels, num_classes):
  """Every attack of the run, in order: (pixels, position, target or None)."""
  tasks = []
  for pixels in settings["pixels"]:
    for position, label in enumerate(labels):
      if settings["targeted"]:
        targets = [c for c in range(num_classes) if c != label]
      else:
        targets = [settings["target"]]
      tasks += [(pixels, position, t) for t in targets]
  return tasks


def _record(task, index, label, result, i, seconds_share, path) -> dict:
  pixels, _, target = task
  where = {} if path is None else dict(path=path)
  return dict(
    **where,
    image=int(index),
    label=int(label),
    target=target,
    pixels=pixels,
    success=bool(result.success[i]),
    adv_label=int(result.adv_label[i]),
    adv_prob=float(result.adv_prob[i]),
    true_prob=float(result.true_prob[i]),
    target_prob=float(result.target_prob[i]),
    perturbation=result.perturbation[i].tolist(),
    queries=int(result.queries[i]),
    generations=int(result.generations[i]),
    seconds_share=seconds_share,
  )


def example_path(directory, record) -> pathlib.Path:
  """Where the PNG of one attack goes: examples/<d>px/ then the image's index
  (``00042``), or for a --folder run its file (``horse/12.jpg``), then
  ``_to<target>`` when targeted, and ``.png``."""
  aim = "" if record["target"] is None else f"_to{record['target']}"
  name = record.get("path") or f"{record['image']:05d}"
  return (
    pathlib.Path(directory)
    / "examples"
    / f"{record['pixels']}px"
    / f"{name}{aim}.png"
  )


class _Progress:
  """The progress bar of a run: model evaluations against the run's budget,
  and the attacks done and fooled per pixel count.

  The budget is each attack's most evaluations, popsize * (maxiter + 1); an
  attack that ends early (it succeeded) is credited its whole budget, so the
  bar moves with every evaluation and ends full.
  """

  def __init__(self, settings, tasks, records, enabled: bool):
    self.budget = settings["popsize"] * (settings["maxiter"] + 1)
    self.attacks = dict.fromkeys(settings["pixels"], 0)
    for pixels, _, _ in tasks:
      self.attacks[pixels] += 1
    self.done = dict.fromkeys(self.attacks, 0)
    self.fooled = dict.fromkeys(self.attacks, 0)
    self.evaluations = 0  # spent in this session
    self._stream = 0  # spent by the current stream_attack call
    self._stream_finished = 0  # of which by its finished attacks
    self._count(records)
    self.bar = tqdm(
      total=len(tasks) * self.budget,
      initial=sum(self.done.values()) * self.budget,
      disable=not enabled,
      file=sys.stderr,
      dynamic_ncols=True,
      bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}"
      "{postfix}",
    )
    self._show()

  def _count(self, records):
    for r in records:
      self.done[r["pixels"]] += 1
      self.fooled[r["pixels"]] += bool(r["success"])

  def stream(self, pixels: int):
    """A ``stream_attack`` call for ``pixels`` begins."""
    self.bar.set_description(f"{pixels}-pixel")
    self._stream = self._stream_finished = 0

  def evaluated(self, evaluations: int):
    """``stream_attack``'s progress callback: its evaluations so far."""
    self.evaluations += evaluations - self._stream
    self._stream = evaluations
    self._show()

  def finished(self, records):
    """Attacks of the current stream that finished."""
    self._count(records)
    self._stream_finished += sum(r["queries"] for r in records)
    self._show()

  def _show(self):
    fooled = ", ".join(
      f"{d}px {self.fooled[d]}/{self.done[d]}" for d in self.attacks
    )
    self.bar.set_postfix_str(
      f"attacks {sum(self.done.values())}/{sum(self.attacks.values())}; "
      f"fooled {fooled}; {self.evaluations:,} evaluations",
      refresh=False,
    )
    in_flight = self._stream - self._stream_finished
    position = sum(self.done.values()) * self.budget + in_flight
    self.bar.update(max(0, position - self.bar.n))  # redraws at most 10/s


def _attack_all(store, victim, saved, settings, options):
  """Runs every attack not yet in the store, streaming results to it.

  ``stream_attack`` keeps ``options.slots`` attacks in flight and hands each
  one back as soon as it finishes; its record (and PNG) is written at once.
  The slot count is the same however many attacks remain, so each pixel
  count compiles once, and a resumed run reuses that from the disk cache.
  """
  labels, index = saved["labels"], saved["index"]
  class_names = [str(c) for c in saved["class_names"]]
  paths = [str(p) for p in saved["paths"]] if "paths" in saved else None
  tasks = _tasks(settings, labels, victim.num_classes)
  records = store.records()
  done = {runs.task_key(r) for r in records}
  key_of = lambda t: (t[0], int(index[t[1]]), t[2])  # noqa: E731
  pending = [t for t in tasks if key_of(t) not in done]
  if done:
    _say(
      f"Resuming: {len(tasks) - len(pending)} of {len(tasks)} attacks "
      f"already in {store.results_path}."
    )
  slots = min(options.slots, len(tasks) // len(settings["pixels"]))
  key = jax.random.key(settings["seed"])
  progress = _Progress(settings, tasks, records, options.progress)
  with progress.bar:
    for pixels in settings["pixels"]:
      todo = [t for t in pending if t[0] == pixels]
      if not todo:
        continue
      progress.stream(pixels)
      positions = np.array([t[1] for t in todo])
      targets = None
      # An attack's id seeds its random stream: image, and target if any.
      ids = index[positions]
      if todo[0][2] is not None:
        targets = np.array([t[2] for t in todo])
        ids = ids * victim.num_classes + targets
      started = time.perf_counter()
      try:
        for finished, result in pixeljax.stream_attack(
          victim.predict,
          saved["images"][positions],
          labels[positions],
          key=key,
          targets=targets,
          slots=slots,
          pixels=pixels,
          popsize=settings["popsize"],
          maxiter=settings["maxiter"],
          mutation=settings["mutation"],
          crossover=settings["crossover"],
          batch_size=options.batch_size,
          image_ids=ids,
          progress=progress.evaluated,
        ):
          # Wall time since the last hand-back, shared by what it returned.
          now = time.perf_counter()
          share, started = (now - started) / len(finished), now
          new = [
            _record(
              todo[j],
              index[todo[j][1]],
              labels[todo[j][1]],
              result,
              i,
              share,
              paths and paths[todo[j][1]],
            )
            for i, j in enumerate(finished)
          ]
          if options.examples:
            for j, r in zip(finished, new):
              path = example_path(store.directory, r)
              with runs.writing(path):
                plots.save_example(
                  path,
                  saved["images"][todo[j][1]],
                  r["perturbation"],
                  class_names=class_names,
                  label=r["label"],
                  clean_prob=float(saved["clean_prob"][todo[j][1]]),
                  adv_label=r["adv_label"],
                  adv_prob=r["adv_prob"],
                  success=r["success"],
                  target=r["target"],
                )
          store.append(new)
          progress.finished(new)
      except (ValueError, TypeError) as e:  # the engine's input checks
        raise UsageError(str(e)) from None


def _choose_images(options, victim, pool, target) -> dict:
  """The images of a run, as images.npz holds them (see ``select_images``)."""
  positions, clean_prob, looked = select_images(
    victim.predict, pool, options.images, options.seed, target
  )
  if not len(positions):
    raise InputError(
      "the model classifies none of the images correctly; nothing to attack"
    )
  saved = dict(
    images=pool.images[positions],
    index=positions,
    labels=pool.labels[positions],
    clean_prob=clean_prob,
    class_names=np.array(pool.class_names),
    looked=np.int64(looked),
  )
  if pool.paths is not None:
    saved["paths"] = np.array([pool.paths[i] for i in positions])
  return saved


def _rebuild_images(store, damage, options, victim, pool, target) -> dict:
  """Chooses a resumed run's images again when images.npz is damaged: the
  choice is a function of the settings (data, model, seed), which resume
  has checked. Refuses if the recorded results name other images."""
  _say(f"{damage}; choosing the images again from the run's settings.")
  saved = _choose_images(options, victim, pool, target)
  position = {int(i): n for n, i in enumerate(saved["index"])}
  paths = saved.get("paths")
  for r in store.records():
    n = position.get(r["image"])
    if (
      n is None
      or int(saved["labels"][n]) != r["label"]
      or r.get("path") != (None if paths is None else str(paths[n]))
    ):
      raise InputError(
        f"{store.directory / runs.IMAGES_FILE} is damaged, and the images "
        f"chosen again do not match the results recorded in "
        f"{store.results_path} (image {r['image']}); keep that folder "
        "aside and rerun with another --out to start over"
      )
  store.save_images(saved)
  _say(
    f"Rebuilt {store.directory / runs.IMAGES_FILE}: its images match the "
    "recorded results."
  )
  return saved


def _prepare_images(store, options, victim, pool, target, settings):
  """Selects and saves the images of a new run, or reads a resumed run's
  (rebuilding a damaged images.npz)."""
  if not store.resumed:
    saved = _choose_images(options, victim, pool, target)
    store.start(settings, saved)
  else:
    try:
      saved = store.images()
    except runs.DamagedImagesError as e:
      saved = _rebuild_images(store, e, options, victim, pool, target)
  looked, count = int(saved["looked"]), len(saved["index"])
  short = (
    f" (only {count} of the {options.images} asked for)"
    if count < options.images
    else ""
  )
  _say(
    f"Attacking {count} images{short} that {victim.identity['name']} "
    f"classifies correctly, chosen with seed {settings['seed']} from "
    f"{pool.identity['source']}; skipped {looked - count} misclassified "
    f"of {looked} looked at."
  )
  return saved


def write_summary(store, settings):
  """Summarizes every record; writes summary.json and summary.md.

  Returns:
    (title: one line naming the run, rows: ``metrics.summarize``).
  """
  rows = metrics.summarize(store.records())
  mode = (
    "targeted"
    if settings["targeted"] or settings["target"] is not None
    else "non-targeted"
  )
  title = (
    f"{settings['model']['name']}, {mode}, popsize "
    f"{settings['popsize']}, maxiter {settings['maxiter']}, "
    f"{settings['data']['source']}"
  )
  clean = [
    {
      k: (None if isinstance(v, float) and math.isnan(v) else v)
      for k, v in row.items()
    }
    for row in rows
  ]
  runs.write_atomic(
    store.directory / "summary.json",
    (
      json.dumps(
        dict(settings=settings, rows=clean, version=pixeljax.__version__),
        indent=1,
      )
      + "\n"
    ).encode(),
  )
  runs.write_atomic(
    store.directory / "summary.md",
    (f"# {title}\n\n" + metrics.format_markdown(rows)).encode(),
  )
  return title, rows


def _safe(text, limit: int = 40) -> str:
  """``text`` as a piece of a file name: letters, digits and ``.+_-`` only,
  no leading dot, at most ``limit`` characters, never empty."""
  return re.sub(r"[^A-Za-z0-9.+_-]+", "-", str(text)).strip(".-")[:limit] or "x"


def _short_hash(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[
    :8
  ]


def default_out(
  options: AttackOptions, victim: Victim, pool: Pool, target: int | None
) -> str:
  """A folder under pixeljax-runs/ named after the model (a weights card's
  name and a hash of its files), the data (where from, and a hash of the
  images) and the settings, so that rerunning the same command resumes it
  and changing any of them starts another. Always one plain folder name,
  whatever a card's name holds."""
  model = _safe(victim.identity["name"])
  if options.weights is not None:
    model += "-" + _short_hash(victim.identity["files"])
  elif options.onnx is not None or options.torch is not None:
    model += "-" + _short_hash(victim.identity)  # files, factory, layout
  if options.folder is not None:
    data = _safe(os.path.basename(os.path.abspath(options.folder)))
  else:
    data = "sample" if pool.identity["source"] == _SAMPLE_SOURCE else "cifar10"
  data += "-" + pool.identity["sha256"][:8]
  mode = (
    "targeted"
    if options.targeted
    else "untargeted"
    if target is None
    else f"to-{_safe(pool.class_names[target])}"
  )
  search = f"pop{options.popsize}_it{options.maxiter}"
  if options.mutation != AttackOptions.mutation:
    search += f"_F{options.mutation:g}"
  if options.crossover is not None:
    search += f"_cr{options.crossover:g}"
  name = (
    f"{model}_{data}_{mode}_{'-'.join(map(str, options.pixels))}px_n"
    f"{options.images}_{search}_seed{options.seed}"
  )
  if len(name) > 200:  # many pixel counts: keep within a file name's limit
    name = f"{name[:190]}-{_short_hash(name)}"
  return os.path.join("pixeljax-runs", name)


def check_settings(
  options: AttackOptions, victim: Victim, pool: Pool, target: int | None
):
  """Runs the engine's own input checks (``stream_attack`` checks every
  argument before it starts) on the first image with the run's settings, so
  that one it refuses (``--pixels`` above the pixels of an image, ...)
  stops the run before anything is written; ``UsageError`` if so."""
  label = int(pool.labels[0])
  aimed = options.targeted or target is not None
  per_pixels = options.images * (
    victim.num_classes - 1 if options.targeted else 1
  )
  try:
    pixeljax.stream_attack(
      victim.predict,
      pool.images[:1],
      pool.labels[:1],
      key=jax.random.key(options.seed),
      targets=np.array([(label + 1) % victim.num_classes]) if aimed else None,
      slots=min(options.slots, per_pixels),
      pixels=max(options.pixels),
      popsize=options.popsize,
      maxiter=options.maxiter,
      mutation=options.mutation,
      crossover=options.crossover,
      batch_size=options.batch_size,
    )
  except (ValueError, TypeError) as e:
    raise UsageError(f"the attack refuses these settings: {e}") from None


def run_attack(options: AttackOptions) -> list:
  """Runs (or resumes) the attack described by ``options``.

  Every option is checked before anything is written; a run that fails
  before it starts leaves no folder of its own behind.

  Returns:
    The summary rows (``metrics.summarize``) over the whole run folder.
  """
  if options.onnx is not None or options.torch is not None:
    victim = load_external_victim(options)
  else:
    victim = load_victim(options.model, options.weights)
  if options.out:  # before the data, which may take long to load
    runs.check_writable(options.out)
  pool = load_pool(options)
  if victim.num_classes != len(pool.class_names):
    raise InputError(
      f"the model has {victim.num_classes} classes, the data "
      f"{len(pool.class_names)}"
    )
  target = resolve_target(options.target, list(pool.class_names))
  check_settings(options, victim, pool, target)
  settings = _settings(options, victim, pool, target)
  store = runs.RunStore.create_or_resume(
    options.out or default_out(options, victim, pool, target),
    settings,
    describe=lambda k: _OPTION_NAMES.get(k, k),
    uncompared=_UNCOMPARED,
  )
  enable_compile_cache()
  try:
    saved = _prepare_images(store, options, victim, pool, target, settings)
    _attack_all(store, victim, saved, settings, options)
    title, rows = write_summary(store, settings)
  finally:
    store.close()
  print(f"{title}\n{metrics.format_table(rows)}", end="")
  if options.figures:
    with runs.writing(store.directory / "figures"):
      plots.draw_run(store.directory)
  _say(
    f"Results in {store.directory}: {runs.RESULTS_FILE}, summary.md"
    + (", examples/" if options.examples else "")
    + (", figures/" if options.figures else "")
  )
  return rows
