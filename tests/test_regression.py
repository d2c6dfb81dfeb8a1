"""Every search gives, for the same key, exactly the results stored before
the searches moved onto one driver (commit 1eedbaf).

``tests/data/search_results.npz`` holds every ``AttackResult`` field of each
case below as computed at that commit; ``python -m tests.test_regression``
rewrites it, which only a deliberate change of results may do.
"""

import pathlib

import jax
import numpy as np
import pytest

import pixeljax
from pixeljax.data import load_cifar10_sample
from pixeljax.models.weights import load_predict
from tests import toy_models

STORED = pathlib.Path(__file__).parent / "data" / "search_results.npz"


def _toy_problem(count: int = 6, size: int = 12):
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


def _stream(predict, images, labels, **options):
  """Results of ``stream_attack`` put back in the images' order."""
  parts = list(pixeljax.stream_attack(predict, images, labels, **options))
  order = np.argsort(np.concatenate([indices for indices, _ in parts]))
  return pixeljax.AttackResult(
    *(
      np.concatenate([getattr(r, name) for _, r in parts])[order]
      for name in pixeljax.AttackResult._fields
    )
  )


def _cases():
  """name -> a function computing that case's ``AttackResult``."""
  toy, images, labels, targets = _toy_problem()
  key = jax.random.key(7)
  return {
    "de_1px": lambda: pixeljax.batched_attack(
      toy, images, labels, key=key, popsize=16, maxiter=5
    ),
    "de_3px_targeted_crossover_no_early_stop": lambda: pixeljax.batched_attack(
      toy,
      images,
      labels,
      key=key,
      targets=targets,
      pixels=3,
      popsize=12,
      maxiter=4,
      crossover=0.7,
      early_stop=False,
    ),
    "de_stream_2px": lambda: _stream(
      toy,
      images,
      labels,
      key=key,
      pixels=2,
      popsize=8,
      maxiter=6,
      slots=2,
      refill_every=2,
    ),
    "corner": lambda: pixeljax.corner_attack(toy, images, labels, block=64),
    "corner_targeted_no_early_stop": lambda: pixeljax.corner_attack(
      toy, images, labels, targets=targets, early_stop=False
    ),
    "corner_search_2px": lambda: pixeljax.corner_search(
      toy,
      images,
      labels,
      key=key,
      pixels=2,
      max_queries=1152 + 160,
      proposals=16,
    ),
    "sparse_rs_3px_targeted": lambda: pixeljax.corner_search(
      toy,
      images,
      labels,
      key=key,
      pixels=3,
      targets=targets,
      max_queries=200,
      proposals=16,
      scan=False,
    ),
    "seeded_1px": lambda: pixeljax.seeded_attack(
      toy, images, labels, key=key, popsize=8, maxiter=4
    ),
    "seeded_3px_targeted": lambda: pixeljax.seeded_attack(
      toy,
      images,
      labels,
      key=key,
      pixels=3,
      targets=targets,
      popsize=8,
      maxiter=3,
      crossover=0.5,
    ),
    "smallcnn_de_1px": lambda: pixeljax.batched_attack(
      *_smallcnn_problem(), key=key, popsize=20, maxiter=3
    ),
  }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_results_as_before_the_driver(name):
  stored = np.load(STORED)
  result = CASES[name]()
  for field in pixeljax.AttackResult._fields:
    np.testing.assert_array_equal(
      getattr(result, field), stored[f"{name}/{field}"], err_msg=field
    )


if __name__ == "__main__":
  STORED.parent.mkdir(exist_ok=True)
  np.savez_compressed(
    STORED,
    **{
      f"{name}/{field}": value
      for name, case in CASES.items()
      for field, value in case()._asdict().items()
    },
  )
  print(f"wrote {STORED}")
