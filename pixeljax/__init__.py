"""pixeljax: JAX-accelerated sparse black-box adversarial attacks.

The names below are imported on first use, so that `import pixeljax` does
not import JAX: the `pixeljax` program restarts itself before JAX starts
(`pixeljax.launch`).
"""

import importlib

# Each public name and the module that defines it.
_EXPORTS = {
  "AttackResult": "pixeljax.attack.result",
  "L0Result": "pixeljax.attack.robustness",
  "batched_attack": "pixeljax.attack.evolution",
  "corner_attack": "pixeljax.attack.corner",
  "corner_search": "pixeljax.attack.corner_search",
  "defences": "pixeljax.defences",
  "l0_robustness": "pixeljax.attack.robustness",
  "seeded_attack": "pixeljax.attack.seeded_de",
  "stream_attack": "pixeljax.attack.stream",
  "stream_l0_robustness": "pixeljax.attack.robustness",
}

__all__ = sorted(_EXPORTS)

__version__ = "0.1.0"


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'pixeljax' has no attribute {name!r}")
  module = importlib.import_module(_EXPORTS[name])
  if module.__name__ == f"pixeljax.{name}":  # a submodule: defences
    value = module
  else:
    value = getattr(module, name)
  globals()[name] = value  # later lookups skip __getattr__
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *_EXPORTS})
