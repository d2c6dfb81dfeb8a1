"""Every search gives, for the same key, exactly the results stored before
the searches moved onto one driver (commit 1eedbaf).

``tests/data/search_results.npz`` holds every ``AttackResult`` field of each
case below as computed at that commit; ``python -m tests.test_regression``
rewrites it, which only a deliberate change of results may do.
"""

import functools
import pathlib

import jax
import numpy as np
import pytest

import pixeljax
from pixeljax.data import load_cifar10_sample
from pixeljax.models.weights import load_predict
from tests import toy_models

STORED = pathlib.Path(__file__).parent / "data" / "search_results.npz"
# The fields stored then: every one but ``incremental`` (which path scored
# the candidates), added after.
STORED_FIELDS = tuple(
  f for f in pixeljax.AttackResult._fields if f != "incremental"
)
# XLA's CPU code follows the host's vector units (AVX2, AVX-512), so float
# sums round differently from one CPU to another: probabilities are compared
# to float32 rounding, every other field exactly.
PROBABILITY_FIELDS = ("adv_prob", "true_prob", "target_prob")


def same_field(field: str, actual, stored) -> bool:
  """Whether ``actual`` matches the stored value of ``field``."""
  if field in PROBABILITY_FIELDS:
    return bool(np.allclose(actual, stored, rtol=1e-5, atol=1e-6))
  return bool(np.array_equal(actual, stored))


@functools.cache
def toy_problem(count: int = 6, size: int = 12):
  images = np.random.default_rng(3).integers(
    0, 256, (count, size, size, 3), dtype=np.uint8
  )
  predict = toy_models.small_cnn(3, num_classes=10, seed=2)
  ranked = np.argsort(-np.asarray(predict(images.astype(np.float32))), axis=-1)
  labels = ranked[:, 0].copy()
  labels[0] = ranked[0, 1]  # one image the model already gets wrong
  targets = ranked[:, 2]  # the third likeliest class: sometimes reachable
  return predict, images, labels, targets


def _smallcnn_problem(count: int = 4):
  sample = load_cifar10_sample()
  return (
    load_predict("smallcnn"),
    sample.images[:count],
    np.asarray(sample.labels[:count]),
  )


def in_order(parts):
  """One ``AttackResult`` in the images' order from ``stream_attack``'s
  (indices, result) parts."""
  parts = list(parts)
  order = np.argsort(np.concatenate([indices for indices, _ in parts]))
  return pixeljax.AttackResult(
    *(
      np.concatenate([getattr(r, name) for _, r in parts])[order]
      for name in pixeljax.AttackResult._fields
    )
  )


# Each search by its ``stream_attack`` method name, as a direct call.
FUNCTIONS = {
  "de": pixeljax.batched_attack,
  "seeded-de": pixeljax.seeded_attack,
  "corner": lambda *args, key, **options: pixeljax.corner_attack(
    *args, **options
  ),
  "corner-search": pixeljax.corner_search,
  "sparse-rs": functools.partial(pixeljax.corner_search, scan=False),
}

# name -> (method, targeted, options) on the toy problem.
TOY_CASES = {
  "de_1px": ("de", False, dict(popsize=16, maxiter=5)),
  "de_3px_targeted_crossover_no_early_stop": (
    "de",
    True,
    dict(pixels=3, popsize=12, maxiter=4, crossover=0.7, early_stop=False),
  ),
  "corner": ("corner", False, dict(block=64)),
  "corner_targeted_no_early_stop": ("corner", True, dict(early_stop=False)),
  "corner_search_2px": (
    "corner-search",
    False,
    dict(pixels=2, max_queries=1152 + 160, proposals=16),
  ),
  "sparse_rs_3px_targeted": (
    "sparse-rs",
    True,
    dict(pixels=3, max_queries=200, proposals=16),
  ),
  "seeded_1px": ("seeded-de", False, dict(popsize=8, maxiter=4)),
  "seeded_3px_targeted": (
    "seeded-de",
    True,
    dict(pixels=3, popsize=8, maxiter=3, crossover=0.5),
  ),
}
KEY_SEED = 7


def run_case(name, **shared):
  """The ``AttackResult`` of a toy case, through its search's own function."""
  predict, images, labels, targets = toy_problem()
  method, targeted, options = TOY_CASES[name]
  return FUNCTIONS[method](
    predict,
    images,
    labels,
    key=jax.random.key(KEY_SEED),
    targets=targets if targeted else None,
    **options,
    **shared,
  )


def stream_case(name, **shared):
  """The ``AttackResult`` of a toy case through ``stream_attack``, in the
  images' order."""
  predict, images, labels, targets = toy_problem()
  method, targeted, options = TOY_CASES[name]
  return in_order(
    pixeljax.stream_attack(
      predict,
      images,
      labels,
      key=jax.random.key(KEY_SEED),
      method=method,
      targets=targets if targeted else None,
      **options,
      **shared,
    )
  )


def _cases():
  """name -> a function computing that case's ``AttackResult``."""
  cases = {name: functools.partial(run_case, name) for name in TOY_CASES}
  cases["de_stream_2px"] = _stream_de
  cases["smallcnn_de_1px"] = lambda: pixeljax.batched_attack(
    *_smallcnn_problem(), key=jax.random.key(KEY_SEED), popsize=20, maxiter=3
  )
  return cases


def _stream_de():
  predict, images, labels, _ = toy_problem()
  return in_order(
    pixeljax.stream_attack(
      predict,
      images,
      labels,
      key=jax.random.key(KEY_SEED),
      pixels=2,
      popsize=8,
      maxiter=6,
      slots=2,
      refill_every=2,
    )
  )


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_results_as_before_the_driver(name):
  stored = np.load(STORED)
  result = CASES[name]()
  for field in STORED_FIELDS:
    actual, expected = getattr(result, field), stored[f"{name}/{field}"]
    assert same_field(field, actual, expected), (field, actual, expected)


if __name__ == "__main__":
  STORED.parent.mkdir(exist_ok=True)
  np.savez_compressed(
    STORED,
    **{
      f"{name}/{field}": value
      for name, case in CASES.items()
      for field, value in case()._asdict().items()
      if field in STORED_FIELDS
    },
  )
  print(f"wrote {STORED}")
