"""The default run folder: named after the model, the data and the settings,
so that the same command resumes and another starts anew."""

import hashlib
import json
import os
import re

from pixeljax.cli.images import SAMPLE_SOURCE
from pixeljax.cli.images import Pool
from pixeljax.cli.settings import AttackSettings
from pixeljax.cli.victims import Victim


def _safe(text, limit: int = 40) -> str:
  """``text`` as a piece of a file name: letters, digits and ``.+_-`` only,
  no leading dot, at most ``limit`` characters, never empty."""
  return re.sub(r"[^A-Za-z0-9.+_-]+", "-", str(text)).strip(".-")[:limit] or "x"


def _short_hash(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[
    :8
  ]


def default_out(
  options: AttackSettings, victim: Victim, pool: Pool, target: int | None
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
    data = "sample" if pool.identity["source"] == SAMPLE_SOURCE else "cifar10"
  data += "-" + pool.identity["sha256"][:8]
  mode = (
    "targeted"
    if options.targeted
    else "untargeted"
    if target is None
    else f"to-{_safe(pool.class_names[target])}"
  )
  name = (
    f"{model}_{data}_{mode}_{'-'.join(map(str, options.pixels))}px_n"
    f"{options.images}_{search_name(options)}_seed{options.seed}"
  )
  if len(name) > 200:  # many pixel counts: keep within a file name's limit
    name = f"{name[:190]}-{_short_hash(name)}"
  return os.path.join("pixeljax-runs", name)


# Short names of the search options in folder names.
_SHORT = dict(
  popsize="pop",
  maxiter="it",
  mutation="F",
  crossover="cr",
  max_queries="q",
  proposals="prop",
  top_pixels="top",
  block="block",
)


def search_name(options: AttackSettings) -> str:
  """The search's part of a folder name: ``pop400_it100`` for the paper's
  DE (with ``_F``/``_cr`` when they differ from the paper's), else the
  method and each option that is set, e.g. ``sparse-rs_q10000_prop64``."""
  if options.method == "de":
    name = f"pop{options.popsize}_it{options.maxiter}"
    if options.mutation != AttackSettings.mutation:
      name += f"_F{options.mutation:g}"
    if options.crossover is not None:
      name += f"_cr{options.crossover:g}"
    return name
  parts = [options.method] + [
    f"{_SHORT[k]}{v:g}" if isinstance(v, float) else f"{_SHORT[k]}{v}"
    for k, v in options.search_settings().items()
    if k != "method" and v is not None
  ]
  return "_".join(parts)
