"""Attack criteria: the fitness DE minimises and the success test.

Both work on the model's output probabilities alone (black box). Targeted
attacks pass ``targets``; non-targeted ones pass ``None``.
"""

import jax.numpy as jnp


def fitness(probs, labels, targets=None):
  """Fitness to minimise, float32 [B], from probabilities float32 [B, K].

  Non-targeted: the probability of the true class. Targeted: one minus the
  probability of the target class. A NaN fitness counts as +inf, so a broken
  candidate never wins a selection.
  """
  cls = labels if targets is None else targets
  prob = jnp.take_along_axis(probs, cls[:, None], axis=-1)[:, 0]
  value = prob if targets is None else 1.0 - prob
  return jnp.where(jnp.isnan(value), jnp.inf, value)


def is_success(predicted, labels, targets=None):
  """bool [B]: the predicted class differs from the label (or equals the
  target)."""
  if targets is None:
    return predicted != labels
  return predicted == targets


def prefer(candidate_success, candidate_fitness, success, fitness):
  """bool: a candidate beats the incumbent (a success first, then a lower
  fitness)."""
  return (candidate_success & ~success) | (
    (candidate_success == success) & (candidate_fitness < fitness)
  )
