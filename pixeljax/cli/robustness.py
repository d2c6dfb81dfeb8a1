"""L0 robustness of models and defences, resumably: what `pixeljax eval` runs.

Each row of the evaluation is one model behind one defence
(``pixeljax.defences``; "none" for the model alone). Every row sees the same
images: the first N of a seeded shuffle of the data, misclassified ones
included (they count as fooled by 0 pixels, so robust accuracy at k = 0 is
the clean accuracy). ``stream_l0_robustness`` runs each row through a fixed
set of slots and hands images back as they finish; each image's record is
appended to the run folder at once (``runs.RunStore``), and a rerun with
the same settings skips the images already recorded. Image i draws from
``fold_in(key(seed), i)`` with i its index in the data, whatever else was in
flight with it.

Run folder:
  run.json            the settings (a rerun must match them to resume),
                      written with the first record: a run stopped before
                      any image finished leaves no folder behind
  results.jsonl       one line per (row, image): model, defence, image,
                      label, clean_label, min_pixels (-1: not fooled with
                      --max-pixels), adv_label, queries, perturbation
  summary.json, .md   robust accuracy at k = 0..K per row
  robust_accuracy.png the curves, every row side by side
"""

import dataclasses
import json
import math
import pathlib
import sys

import jax
import numpy as np
from tqdm import tqdm

import pixeljax
from pixeljax import defences
from pixeljax import plots
from pixeljax import runs
from pixeljax.attack import defaults
from pixeljax.attack import robustness
from pixeljax.cli import images as images_lib
from pixeljax.cli import victims as victims_lib
from pixeljax.cli.settings import AttackSettings
from pixeljax.errors import InputError
from pixeljax.errors import UsageError

EVAL_FORMAT = "pixeljax.eval/1"
FIGURE = "robust_accuracy.png"
_OPTION_NAMES = {
  "models": "--model/--weights",
  "defences": "--defence",
  "data": "--data",
  "images": "--images",
  "seed": "--seed",
  "max_pixels": "--max-pixels",
  "queries_per_k": "--queries-per-k",
  "proposals": "--proposals",
  "top_pixels": "--top-pixels",
  "block": "--block",
}
# Images per model call when checking the rows' logits: at most 100, and at
# most 128 MiB of float32 pixels.
_CHECK_IMAGES = 100
_CHECK_BYTES = 2**27


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What `pixeljax eval` was asked to do (see its --help)."""

  out: str | None = None  # None: pixeljax-runs/eval_<seed>_<images>...
  models: tuple = ()  # shipped model names
  weights: tuple = ()  # weights cards
  defences: tuple = ("none",)
  data: str | None = None
  download: bool = True
  images: int = 100
  seed: int = 0
  max_pixels: int = defaults.L0_MAX_PIXELS
  queries_per_k: int = defaults.L0_QUERIES_PER_K
  proposals: int = defaults.PROPOSALS
  top_pixels: int | None = None
  block: int | None = None
  batch_size: int | None = None
  incremental: bool | None = None  # None: where it pays
  slots: int = defaults.SLOTS
  figures: bool = True
  progress: bool = True

  def search_options(self) -> dict:
    """The keyword options of ``stream_l0_robustness``."""
    return dict(
      max_pixels=self.max_pixels,
      queries_per_k=self.queries_per_k,
      proposals=self.proposals,
      top_pixels=self.top_pixels,
      block=self.block,
      batch_size=self.batch_size,
      incremental=self.incremental,
    )


class _Row:
  """One model behind one defence."""

  def __init__(self, name: str, victim, defence: str):
    self.name, self.victim, self.defence = name, victim, defence
    self.predict = defences.from_spec(victim.predict, defence)

  @property
  def key(self) -> tuple:
    return (self.name, self.defence)


def _say(message: str):
  print(message, file=sys.stderr, flush=True)


def load_victims(options: EvalSettings) -> list:
  """(name, Victim) of every model asked for, names unique."""
  chosen = [(m, victims_lib.load_victim(m, None)) for m in options.models]
  for card in options.weights:
    victim = victims_lib.load_victim(None, card)
    # A card's name is its architecture's; its folder tells runs apart.
    folder = pathlib.Path(card).resolve().parent.name
    chosen.append((f"{victim.identity['name']} ({folder})", victim))
  if not chosen:
    name = victims_lib.shipped_default()
    chosen = [(name, victims_lib.load_victim(name, None))]
  names = [name for name, _ in chosen]
  if len(set(names)) != len(names):
    raise UsageError(f"--model/--weights: the same model twice: {names}")
  return chosen


def _check_defences(specs) -> tuple:
  try:
    specs = tuple(defences.canonical_spec(s) for s in specs)
  except ValueError as e:
    raise UsageError(f"--defence: {e}") from None
  if len(set(specs)) != len(specs):
    raise UsageError(f"--defence: the same defence twice: {list(specs)}")
  return specs


def _check_fits(specs, image_shape):
  """Refuses a defence whose window is larger than the images."""
  for spec in specs:
    try:
      defences.check_fits(spec, image_shape)
    except ValueError as e:
      raise UsageError(f"--defence {spec}: {e}") from None


def _nonfinite(predict, images) -> np.ndarray:
  """Positions in float [N, H, W, C] ``images`` whose logits under
  ``predict`` hold NaN or inf (int64 [n])."""
  per_call = max(1, _CHECK_BYTES // (4 * images[0].size))
  per_call = min(per_call, _CHECK_IMAGES, len(images))
  forward = jax.jit(predict)
  bad = []
  for start in range(0, len(images), per_call):
    part = images[start : start + per_call]
    batch = np.zeros((per_call, *images.shape[1:]), np.float32)
    batch[: len(part)] = part  # one shape: one compilation
    logits = np.asarray(forward(batch))[: len(part)]
    bad.extend(start + np.flatnonzero(~np.all(np.isfinite(logits), axis=-1)))
  return np.array(bad, np.int64)


def _check_logits(rows, images, index):
  """Runs each row's model, behind its defence, on the images before the
  run folder is made: NaN or inf logits (NaN weights, a broken export) are
  ``InputError``, not a run.json that no corrected command could reuse."""
  for row in rows:
    bad = _nonfinite(row.predict, images)
    if bad.size:
      raise InputError(
        f"{row.name} behind defence {row.defence} gives NaN or inf logits "
        f"for {bad.size} of the {len(images)} images (data indices "
        f"{index[bad[:5]].tolist()}); check its weights"
      )


def _settings(options, chosen, specs, pool) -> dict:
  return dict(
    format=EVAL_FORMAT,
    models=[dict(label=name, **v.identity) for name, v in chosen],
    defences=list(specs),
    data=pool.identity,
    images=options.images,
    seed=options.seed,
    max_pixels=options.max_pixels,
    queries_per_k=options.queries_per_k,
    proposals=options.proposals,
    top_pixels=options.top_pixels,
    block=options.block,
  )


def _default_out(settings) -> pathlib.Path:
  names = "+".join(m["label"] for m in settings["models"])
  names = "".join(c if c.isalnum() or c in "-+" else "-" for c in names)
  return pathlib.Path("pixeljax-runs") / (
    f"eval_{names[:40]}_{'+'.join(settings['defences']).replace(':', '')}"
    f"_n{settings['images']}_k{settings['max_pixels']}_s{settings['seed']}"
  )


def _record(row, image, label, result, i) -> dict:
  return dict(
    model=row.name,
    defence=row.defence,
    image=int(image),
    label=int(label),
    clean_label=int(result.clean_label[i]),
    min_pixels=int(result.min_pixels[i]),
    adv_label=int(result.adv_label[i]),
    queries=int(result.queries[i]),
    perturbation=result.perturbation[i].tolist(),
  )


def _append(store, settings, records):
  """Appends ``records``, writing run.json first if the run has not
  started: a run stopped before any image finished leaves nothing behind
  (``RunStore.close``), so another command may take its folder."""
  if not (store.directory / runs.SETTINGS_FILE).exists():
    store.write_settings(settings)
  store.append(records)


def _evaluate_row(store, settings, row, data, options, bar):
  """Runs the images of ``row`` that the folder lacks, recording each;
  ``data`` is (images, labels, index in the data set)."""
  images, labels, index = data
  done = {
    r["image"] for r in store.records() if (r["model"], r["defence"]) == row.key
  }
  todo = np.array([i for i, n in enumerate(index) if int(n) not in done])
  bar.update(len(index) - len(todo))
  if not len(todo):
    return
  bar.set_description(f"{row.name}, {row.defence}")
  try:
    finished = robustness.stream_l0_robustness(
      row.predict,
      images[todo],
      labels[todo],
      key=jax.random.key(options.seed),
      image_ids=index[todo],
      slots=min(options.slots, len(todo)),
      **options.search_options(),
    )
    for positions, result in finished:
      _append(
        store,
        settings,
        [
          _record(row, index[todo[j]], labels[todo[j]], result, i)
          for i, j in enumerate(positions)
        ],
      )
      bar.update(len(positions))
  except (ValueError, TypeError) as e:  # the engine's input checks
    raise UsageError(f"the evaluation refuses these settings: {e}") from None


def summarize(records, rows, max_pixels: int) -> list:
  """One dict per row: images, robust accuracy at k = 0..K, queries."""
  out = []
  for row in rows:
    mine = [r for r in records if (r["model"], r["defence"]) == row.key]
    min_pixels = np.array([r["min_pixels"] for r in mine], np.int64)
    accuracy = robustness.robust_accuracy(min_pixels, max_pixels)
    out.append(
      dict(
        model=row.name,
        defence=row.defence,
        images=len(mine),
        robust_accuracy=[
          None if math.isnan(a) else round(float(a), 4) for a in accuracy
        ],
        mean_queries=(
          round(float(np.mean([r["queries"] for r in mine])), 1)
          if mine
          else None
        ),
      )
    )
  return out


def format_markdown(summary, max_pixels: int) -> str:
  """The summary as a markdown table: one row per model and defence, one
  column per k (percent of images not fooled with k pixels or fewer)."""
  ks = range(max_pixels + 1)
  lines = [
    "| model | defence | images | clean | "
    + " | ".join(f"k={k}" for k in ks[1:])
    + " | mean evaluations |",
    "|---|---|---:|" + "---:|" * (max_pixels + 2),
  ]
  for s in summary:
    cells = [
      "-" if a is None else f"{100 * a:.0f}%" for a in s["robust_accuracy"]
    ]
    lines.append(
      f"| {s['model']} | {s['defence']} | {s['images']} | "
      + " | ".join(cells)
      + f" | {s['mean_queries'] if s['mean_queries'] is not None else '-'} |"
    )
  return "\n".join(lines) + "\n"


def _write_summary(store, settings, rows, budget) -> tuple:
  summary = summarize(store.records(), rows, settings["max_pixels"])
  title = (
    f"L0 robustness, {settings['images']} images of "
    f"{settings['data']['source']}, k <= {settings['max_pixels']}"
  )
  stated = (
    f"Budget per image: the one-pixel corner scan ({budget[0]:,} "
    f"evaluations) at k = 1, then {budget[1] if len(budget) > 1 else 0:,} "
    "at each k from 2 on; robust accuracy is an upper bound (the searches "
    "are incomplete)."
  )
  runs.write_atomic(
    store.directory / "summary.json",
    (
      json.dumps(
        dict(
          settings=settings,
          budget=[int(b) for b in budget],
          rows=summary,
          version=pixeljax.__version__,
        ),
        indent=1,
      )
      + "\n"
    ).encode(),
  )
  runs.write_atomic(
    store.directory / "summary.md",
    (
      f"# {title}\n\n{stated}\n\n"
      + format_markdown(summary, settings["max_pixels"])
    ).encode(),
  )
  return title, summary


def run_eval(options: EvalSettings) -> list:
  """Runs (or resumes) the evaluation ``options`` describes.

  Returns:
    The summary rows (see ``summarize``) over the whole run folder.
  """
  specs = _check_defences(options.defences)
  chosen = load_victims(options)
  if options.out:
    runs.check_writable(options.out)
  pool = images_lib.load_pool(
    AttackSettings(data=options.data, download=options.download)
  )
  for name, victim in chosen:
    if victim.num_classes != len(pool.class_names):
      raise InputError(
        f"{name} has {victim.num_classes} classes, the data "
        f"{len(pool.class_names)}"
      )
  try:
    budget = robustness.plan(
      pool.images.shape[1:], **options.search_options()
    ).budget
  except (ValueError, TypeError) as e:
    raise UsageError(f"the evaluation refuses these settings: {e}") from None
  _check_fits(specs, pool.images.shape[1:])
  rows = [_Row(name, v, spec) for name, v in chosen for spec in specs]
  settings = _settings(options, chosen, specs, pool)
  order = np.random.default_rng(options.seed).permutation(len(pool.images))
  index = order[: options.images]
  images, labels = pool.images[index], pool.labels[index]
  _check_logits(rows, images, index)
  store = runs.RunStore.create_or_resume(
    options.out or _default_out(settings),
    settings,
    describe=lambda k: _OPTION_NAMES.get(k, k),
    uncompared=(("data", "source"),),
    record_schema=runs.EVAL_RECORD,
  )
  try:
    with tqdm(
      total=len(rows) * len(index),
      disable=not options.progress,
      file=sys.stderr,
      dynamic_ncols=True,
    ) as bar:
      for row in rows:
        _evaluate_row(
          store, settings, row, (images, labels, index), options, bar
        )
    title, summary = _write_summary(store, settings, rows, budget)
  finally:
    store.close()
  print(f"{title}\n{format_markdown(summary, settings['max_pixels'])}", end="")
  if options.figures:
    with runs.writing(store.directory / FIGURE):
      plots.robust_accuracy(store.directory / FIGURE, summary, title)
  _say(f"Results in {store.directory}: {runs.RESULTS_FILE}, summary.md")
  return summary
