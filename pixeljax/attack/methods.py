"""Every search by name, for ``stream_attack`` and the command line.

Each name maps to the ``plan`` of a search; its keyword options are those of
the search's own function (``batched_attack``, ``corner_attack``, ...), less
the arguments every search shares (predict, images, labels, key, targets,
image_ids, mesh).
"""

import inspect

from pixeljax.attack import corner
from pixeljax.attack import corner_search
from pixeljax.attack import defaults
from pixeljax.attack import evolution
from pixeljax.attack import seeded_de


def _corner_search(
  image_shape,
  *,
  pixels=defaults.SEARCH_PIXELS,
  max_queries=defaults.MAX_QUERIES,
  top_pixels=None,
  proposals=defaults.PROPOSALS,
  early_stop=defaults.EARLY_STOP,
  block=None,
  batch_size=None,
  incremental=None,
):
  """``corner_search`` with a scan first."""
  return corner_search.plan(
    image_shape,
    scan=True,
    pixels=pixels,
    max_queries=max_queries,
    top_pixels=top_pixels,
    proposals=proposals,
    early_stop=early_stop,
    block=block,
    batch_size=batch_size,
    incremental=incremental,
  )


def _sparse_rs(
  image_shape,
  *,
  pixels=defaults.SEARCH_PIXELS,
  max_queries=defaults.MAX_QUERIES,
  proposals=defaults.PROPOSALS,
  early_stop=defaults.EARLY_STOP,
  batch_size=None,
  incremental=None,
):
  """``corner_search`` without a scan (Sparse-RS style)."""
  return corner_search.plan(
    image_shape,
    scan=False,
    pixels=pixels,
    max_queries=max_queries,
    proposals=proposals,
    early_stop=early_stop,
    batch_size=batch_size,
    incremental=incremental,
  )


# name -> plan(image_shape, **options) -> driver.Plan
PLANS = {
  "de": evolution.plan,  # batched_attack: the paper's DE
  "seeded-de": seeded_de.plan,  # seeded_attack
  "corner": corner.plan,  # corner_attack
  "corner-search": _corner_search,  # corner_search(scan=True)
  "sparse-rs": _sparse_rs,  # corner_search(scan=False)
}
METHODS = tuple(PLANS)


def options_of(method: str) -> tuple:
  """The names of the keyword options ``method`` takes."""
  parameters = inspect.signature(PLANS[_check(method)]).parameters.values()
  return tuple(p.name for p in parameters if p.kind == p.KEYWORD_ONLY)


def _check(method):
  if method not in PLANS:
    raise ValueError(
      f"method must be one of {', '.join(METHODS)}, got {method!r}"
    )
  return method


def plan(method: str, image_shape, **options):
  """The checked ``driver.Plan`` of ``method`` with its ``options``.

  Raises ``ValueError`` for an unknown method or a bad option value, and
  ``TypeError`` for an option the method does not take.
  """
  unknown = sorted(set(options) - set(options_of(method)))
  if unknown:
    raise TypeError(
      f"method {method!r} takes no option {', '.join(unknown)}; its "
      f"options: {', '.join(options_of(method))}"
    )
  return PLANS[method](tuple(image_shape), **options)


def budget(method: str, image_shape, **options) -> int:
  """The most model evaluations one image can cost with these options."""
  return plan(method, image_shape, **options).budget
