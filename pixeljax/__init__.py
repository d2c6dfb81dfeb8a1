"""pixeljax: JAX-accelerated sparse black-box adversarial attacks."""

from pixeljax.attack.engine import batched_attack as batched_attack
from pixeljax.attack.result import AttackResult as AttackResult

__all__ = [
    "AttackResult",
    "batched_attack",
]

__version__ = "0.1.0"
