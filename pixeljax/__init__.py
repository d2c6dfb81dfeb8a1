"""pixeljax: JAX-accelerated sparse black-box adversarial attacks."""

from pixeljax import defences as defences
from pixeljax.attack.corner import corner_attack as corner_attack
from pixeljax.attack.corner_search import corner_search as corner_search
from pixeljax.attack.evolution import batched_attack as batched_attack
from pixeljax.attack.result import AttackResult as AttackResult
from pixeljax.attack.robustness import L0Result as L0Result
from pixeljax.attack.robustness import l0_robustness as l0_robustness
from pixeljax.attack.robustness import (
  stream_l0_robustness as stream_l0_robustness,
)
from pixeljax.attack.seeded_de import seeded_attack as seeded_attack
from pixeljax.attack.stream import stream_attack as stream_attack

__all__ = [
  "AttackResult",
  "L0Result",
  "batched_attack",
  "corner_attack",
  "corner_search",
  "defences",
  "l0_robustness",
  "seeded_attack",
  "stream_attack",
  "stream_l0_robustness",
]

__version__ = "0.1.0"
