"""Attacks many images from a data set, resumably: what `pixeljax attack` runs.

Steps: load the victim (``victims``) and the images (``images``); pick, with
a seeded shuffle, the first N images the model classifies correctly; then
attack them with ``stream_attack`` (a fixed number of slots, refilled as
attacks finish: the same results as the search's own function), appending
each finished attack's record (and PNG) to the run folder
(``runs.RunStore``) at once. Rerunning with the same settings skips the
attacks already recorded; each attack's random stream is
``fold_in(key(seed), id)`` with an id fixed by the image (and target), so its
result does not depend on what else was in flight with it.
"""

import json
import math
import pathlib
import sys
import time

import jax
import numpy as np

import pixeljax
from pixeljax import distributed
from pixeljax import metrics
from pixeljax import plots
from pixeljax import runs
from pixeljax.attack import methods
from pixeljax.cli import images as images_lib
from pixeljax.cli import naming
from pixeljax.cli import victims as victims_lib
from pixeljax.cli.progress import Progress
from pixeljax.cli.settings import AttackSettings
from pixeljax.errors import InputError
from pixeljax.errors import UsageError

RUN_FORMAT = "pixeljax.run/1"
# Settings that describe rather than decide: the same images named by another
# path (relative or absolute, a link, a copy) resume the same run.
UNCOMPARED = (("data", "source"),)
_OPTION_NAMES = {
  "model": "--model/--weights/--onnx/--torch",
  "data": "data (--data/--folder/--size)",
  "images": "--images",
  "seed": "--seed",
  "pixels": "--pixels",
  "targeted": "--targeted",
  "target": "--target",
  "method": "--method",
  "popsize": "--popsize",
  "maxiter": "--maxiter",
  "mutation": "--mutation",
  "crossover": "--crossover",
  "max_queries": "--max-queries",
  "proposals": "--proposals",
  "top_pixels": "--top-pixels",
  "block": "--block",
}
# Settings of the run rather than of the search.
_RUN_KEYS = ("model", "data", "images", "seed", "pixels", "targeted", "target")
# Images that check_model runs the model on: enough to catch NaN weights,
# few enough to compile and run in well under a second.
_CHECK_IMAGES = 8


def _say(message: str):
  print(message, file=sys.stderr, flush=True)


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
    **options.search_settings(),
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


def _attack_all(store, victim, saved, settings, options):
  """Runs every attack not yet in the store, streaming results to it.

  ``stream_attack`` keeps ``options.slots`` attacks in flight and hands each
  one back as soon as it finishes; its record (and PNG) is written at once.
  The slot count is the same however many attacks remain, so each pixel
  count compiles once, and a resumed run reuses that from the disk cache.
  With several processes every one runs the same attacks (each on its
  devices' share) and only the main one, which holds ``store``, writes;
  the others have ``store`` None.
  """
  labels, index = saved["labels"], saved["index"]
  class_names = [str(c) for c in saved["class_names"]]
  paths = [str(p) for p in saved["paths"]] if "paths" in saved else None
  tasks = _tasks(settings, labels, victim.num_classes)
  records = store.records() if store is not None else []
  done = {runs.task_key(r) for r in records}
  # Only the main process reads the folder: the others take its word.
  wanted = distributed.broadcast(
    np.array([(t[0], int(index[t[1]]), t[2]) not in done for t in tasks])
  )
  pending = [t for t, want in zip(tasks, wanted) if want]
  if done:
    _say(
      f"Resuming: {len(tasks) - len(pending)} of {len(tasks)} attacks "
      f"already in {store.results_path}."
    )
  slots = min(options.slots, len(tasks) // len(settings["pixels"]))
  key = jax.random.key(settings["seed"])
  image_shape = saved["images"].shape[1:]
  budgets = {
    pixels: methods.budget(
      options.method, image_shape, **options.search_options(pixels)
    )
    for pixels in settings["pixels"]
  }
  progress = Progress(
    budgets, tasks, records, options.progress and store is not None
  )
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
          method=options.method,
          image_ids=ids,
          progress=progress.evaluated,
          **options.search_options(pixels),
        ):
          if store is None:  # not the main process: nothing to write
            continue
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
  search = ", ".join(
    f"{k.replace('_', ' ')} {v}"
    for k, v in settings.items()
    if k in _OPTION_NAMES and k not in _RUN_KEYS and v is not None
  )
  title = (
    f"{settings['model']['name']}, {mode}, {search}, "
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


def check_settings(
  options: AttackSettings, victim: victims_lib.Victim, pool, target
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
      method=options.method,
      **options.search_options(max(options.pixels)),
    )
  except (ValueError, TypeError) as e:
    raise UsageError(f"the attack refuses these settings: {e}") from None


def check_model(victim: victims_lib.Victim, pool):
  """Runs the model on the first images of the data, before anything is
  written: logits NaN or inf (NaN weights, a broken export) are
  ``InputError``, not a run folder that no corrected command could reuse."""
  images = np.asarray(pool.images[:_CHECK_IMAGES], np.float32)
  logits = np.asarray(jax.jit(victim.predict)(images))
  bad = np.flatnonzero(~np.all(np.isfinite(logits), axis=-1))
  if bad.size:
    raise InputError(
      f"the model {victim.identity['name']} gives NaN or inf logits for "
      f"{bad.size} of the first {len(images)} images of the data "
      f"(positions {bad[:5].tolist()}); check its weights"
    )


def run_attack(options: AttackSettings) -> list:
  """Runs (or resumes) the attack described by ``options``.

  Every option is checked before anything is written; a run that fails
  before it starts leaves no folder of its own behind. With
  ``options.distributed`` this process has joined the others
  (``pixeljax.distributed.initialize``): all run the same attacks, and only
  the main process writes the run folder and prints.

  Returns:
    The summary rows (``metrics.summarize``) over the whole run folder, or
    None in a process other than the main one.
  """
  if options.onnx is not None or options.torch is not None:
    victim = victims_lib.load_external_victim(options)
  else:
    victim = victims_lib.load_victim(options.model, options.weights)
  main = distributed.is_main_process()
  if options.out and main:  # before the data, which may take long to load
    runs.check_writable(options.out)
  pool = images_lib.load_pool(options)
  if victim.num_classes != len(pool.class_names):
    raise InputError(
      f"the model has {victim.num_classes} classes, the data "
      f"{len(pool.class_names)}"
    )
  target = images_lib.resolve_target(options.target, list(pool.class_names))
  check_model(victim, pool)
  check_settings(options, victim, pool, target)
  settings = _settings(options, victim, pool, target)
  if not main:
    saved = images_lib.choose_images(options, victim, pool, target)
    _attack_all(None, victim, saved, settings, options)
    return None
  store = runs.RunStore.create_or_resume(
    options.out or naming.default_out(options, victim, pool, target),
    settings,
    describe=lambda k: _OPTION_NAMES.get(k, k),
    uncompared=UNCOMPARED,
  )
  try:
    saved = images_lib.prepare_images(
      store, options, victim, pool, target, settings
    )
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
