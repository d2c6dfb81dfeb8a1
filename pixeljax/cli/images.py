"""The images of a run: where they come from, which are attacked, and their
copy in the run folder (images.npz)."""

import hashlib
import os
import sys
from typing import NamedTuple

import jax
import numpy as np

from pixeljax import data as data_lib
from pixeljax import runs
from pixeljax.cli.settings import AttackSettings
from pixeljax.errors import InputError
from pixeljax.errors import UsageError

SAMPLE_SOURCE = "packaged CIFAR-10 test sample"
_SELECT_BATCH = 250
# ... and at most this many bytes of float32 images per model call.
_SELECT_BYTES = 2**27


def _say(message: str):
  print(message, file=sys.stderr, flush=True)


class Pool(NamedTuple):
  """Images to choose from: uint8 [N, H, W, 3], int64 labels [N]."""

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple
  identity: dict  # where the images came from and their hash
  paths: list | None = None  # each image's file, for --folder


def _fingerprint(images, labels) -> str:
  digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
  digest.update(np.asarray(labels, np.int64).tobytes())
  return digest.hexdigest()[:16]


def load_pool(options: AttackSettings) -> Pool:
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
    where = SAMPLE_SOURCE
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
  float_bytes = 4 * pool.images[0].size
  per_batch = max(1, min(_SELECT_BATCH, _SELECT_BYTES // float_bytes))
  chosen, probs, looked = [], [], 0
  for start in range(0, len(order), per_batch):
    part = order[start : start + per_batch]
    batch = np.zeros((per_batch,) + pool.images.shape[1:], np.float32)
    batch[: len(part)] = pool.images[part]  # one shape: one compilation
    logits = np.asarray(forward(batch), np.float64)[: len(part)]
    broken = np.flatnonzero(~np.isfinite(logits).all(-1))
    if broken.size:  # argmax would read NaN as a class
      raise InputError(
        f"the model gives NaN or inf logits for image {int(part[broken[0]])} "
        "of the data; check its weights"
      )
    p = _softmax(logits)
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


def choose_images(options, victim, pool, target) -> dict:
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
  saved = choose_images(options, victim, pool, target)
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


def prepare_images(store, options, victim, pool, target, settings):
  """Selects and saves the images of a new run, or reads a resumed run's
  (rebuilding a damaged images.npz)."""
  if not store.resumed:
    saved = choose_images(options, victim, pool, target)
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
