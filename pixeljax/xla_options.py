"""XLA options that pixeljax's own programs set before JAX starts."""

from __future__ import annotations

import os

# XLA's CPU backend hands convolutions, matrix products and reductions to
# YNNPACK by default (jax 0.10). On the 2-core Xeon development machine (AVX-512
# and AMX), XLA's own (Eigen) convolutions are faster: with YNNPACK off,
# AllConv's forward pass runs 1.9x faster and its train step 1.25x
# (benchmarks/results/train_throughput_cpu.md records both settings), and the
# paper's 1-pixel attack (population 400) 1.8-2.4x faster on the three victims,
# 1.9-3.9x with incremental evaluation. The `pixeljax` program, `python -m
# pixeljax.train` and the paper-table benchmark set it; Python callers choose
# by calling prefer_xla_cpu_convolutions() first.
NO_YNNPACK = "--xla_cpu_experimental_ynn_fusion_type="


def prefer_xla_cpu_convolutions() -> None:
  """Turns XLA's CPU use of YNNPACK off, unless XLA_FLAGS already sets it.

  XLA reads XLA_FLAGS once, when JAX first creates its CPU backend: call this
  before any JAX computation (it changes nothing after). Other backends
  ignore the option.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {NO_YNNPACK}".strip()
