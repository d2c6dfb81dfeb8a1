"""Model names -> constructors, and the pure `predict` the attack engine
takes."""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx
import jax
import jax.numpy as jnp

from pixeljax.models.allconv import AllConv
from pixeljax.models.nin import NiN
from pixeljax.models.smallcnn import SmallCNN
from pixeljax.models.vgg import VGG16

MODELS: dict[str, type[nnx.Module]] = {
  "allconv": AllConv,
  "nin": NiN,
  "vgg16": VGG16,
  "smallcnn": SmallCNN,
}


def create_model(
  name: str, *, rngs: nnx.Rngs, num_classes: int = 10, dtype=jnp.float32
) -> nnx.Module:
  """A freshly initialised model by registry name; `dtype` is the compute
  dtype (e.g. jnp.bfloat16 on a GPU), parameters stay float32."""
  if name not in MODELS:
    raise ValueError(f"name: expected one of {sorted(MODELS)}, got {name!r}")
  return MODELS[name](num_classes, rngs=rngs, dtype=dtype)


def param_count(model: nnx.Module) -> int:
  """Number of trainable parameters (nnx.Param entries)."""
  return sum(
    x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
  )


def make_predict(model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
  """The model as a pure function, for the attack engine.

  The model is copied and put in eval mode (batch norm uses its running
  statistics, dropout is off), split once, and closed over; the caller's
  model is left as it was.

  Returns:
    `predict(images f32 [B, H, W, 3] in 0..255) -> logits f32 [B, K]`: pure and
    jittable, no side effects.
  """
  model = nnx.clone(model)
  model.eval()
  graphdef, state = nnx.split(model)

  def predict(images: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(images)

  return predict
