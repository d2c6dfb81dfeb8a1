"""pixeljax: JAX-accelerated sparse black-box adversarial attacks."""

from pixeljax.attack.engine import batched_attack as batched_attack
from pixeljax.attack.result import AttackResult as AttackResult
from pixeljax.attack.stream import stream_attack as stream_attack

__all__ = [
    "AttackResult",
    "batched_attack",
    "stream_attack",
]

__version__ = "0.1.0"
