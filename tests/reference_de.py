"""A plain NumPy one-pixel DE, one image at a time: the paper's algorithm
written as straightforwardly as possible, to check the engine against."""

import numpy as np


def _softmax(logits):
  shifted = logits - logits.max(axis=-1, keepdims=True)
  exp = np.exp(shifted)
  return exp / exp.sum(axis=-1, keepdims=True)


def _decode_and_inject(image, candidate):
  height, width, channels = image.shape
  out = image.copy()
  for pixel in candidate.reshape(-1, 2 + channels):
    x = int(np.clip(np.floor(pixel[0]), 0, width - 1))
    y = int(np.clip(np.floor(pixel[1]), 0, height - 1))
    out[y, x] = np.clip(np.round(pixel[2:]), 0, 255)
  return out


def attack_one(
  predict_numpy, image, label, rng, *, pixels, popsize, maxiter, mutation=0.5
):
  """Non-targeted DE/rand/1, no crossover, greedy selection, early stop.

  Returns whether the attack fooled the model.
  """
  height, width, channels = image.shape
  upper = np.tile([width, height] + [255.0] * channels, pixels)

  def evaluate(population):
    batch = np.stack([_decode_and_inject(image, c) for c in population])
    probs = _softmax(predict_numpy(batch.astype(np.float32)))
    return probs[:, label], probs.argmax(axis=-1) != label

  population = np.empty((popsize, pixels, 2 + channels))
  population[..., 0] = rng.uniform(0, width, (popsize, pixels))
  population[..., 1] = rng.uniform(0, height, (popsize, pixels))
  population[..., 2:] = np.clip(
    rng.normal(128, 127, (popsize, pixels, channels)), 0, 255
  )
  population = population.reshape(popsize, -1)
  fitness, fooled = evaluate(population)
  for _ in range(maxiter):
    if fooled.any():
      return True
    children = np.empty_like(population)
    for i in range(popsize):
      others = [j for j in range(popsize) if j != i]
      r1, r2, r3 = rng.choice(others, size=3, replace=False)
      children[i] = population[r1] + mutation * (
        population[r2] - population[r3]
      )
    children = np.clip(children, 0, upper)
    child_fitness, fooled = evaluate(children)
    better = child_fitness < fitness
    population[better] = children[better]
    fitness[better] = child_fitness[better]
  return bool(fooled.any())
