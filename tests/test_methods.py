"""Searches by name: options, errors and budgets."""

import jax
import numpy as np
import pytest

import pixeljax
from pixeljax.attack import methods
from tests import test_regression as regression
from tests import toy_models


def test_every_method_has_its_functions_options():
  assert methods.METHODS == (
    "de",
    "seeded-de",
    "corner",
    "corner-search",
    "sparse-rs",
  )
  assert "popsize" in methods.options_of("de")
  assert "top_pixels" in methods.options_of("corner-search")
  assert "top_pixels" not in methods.options_of("sparse-rs")
  assert "pixels" not in methods.options_of("corner")


def test_unknown_method_and_foreign_option_are_named():
  with pytest.raises(ValueError, match="method must be one of.*'pgd'"):
    methods.plan("pgd", (8, 8, 3))
  with pytest.raises(TypeError, match="'corner' takes no option pixels"):
    methods.plan("corner", (8, 8, 3), pixels=2)
  with pytest.raises(TypeError, match="'sparse-rs' takes no option block"):
    methods.plan("sparse-rs", (8, 8, 3), block=8)
  with pytest.raises(ValueError, match="max_queries"):
    methods.plan("corner-search", (8, 8, 3), max_queries=10)


def test_stream_attack_checks_the_method_before_any_work():
  predict = toy_models.small_cnn(3)
  images = np.zeros((2, 8, 8, 3), np.uint8)
  with pytest.raises(TypeError, match="takes no option popsize"):
    pixeljax.stream_attack(
      predict,
      images,
      np.zeros(2, int),
      key=jax.random.key(0),
      method="corner",
      popsize=10,
    )


@pytest.mark.parametrize("name", sorted(regression.TOY_CASES))
def test_budget_bounds_the_queries_and_is_reached_without_early_stop(name):
  method, _, options = regression.TOY_CASES[name]
  _, images, _, _ = regression.toy_problem()
  budget = methods.budget(method, images.shape[1:], **options)
  queries = np.load(regression.STORED)[f"{name}/queries"]
  assert queries.max() <= budget
  if options.get("early_stop") is False:
    np.testing.assert_array_equal(queries, budget)
  else:
    assert queries.min() < budget  # some image stopped early
