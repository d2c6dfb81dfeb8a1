"""XLA options that pixeljax's own programs set before JAX starts."""

from __future__ import annotations

import os
import re

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
# The same, as one program's compiler option (jax.jit(compiler_options=)).
_YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"


def prefer_xla_cpu_convolutions() -> None:
  """Turns XLA's CPU use of YNNPACK off, unless XLA_FLAGS already sets it.

  XLA reads XLA_FLAGS once, when JAX first creates its CPU backend: call this
  before any JAX computation (it changes nothing after). Other backends
  ignore the option.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {NO_YNNPACK}".strip()


def ynnpack_runs_cpu_convolutions() -> bool:
  """Whether XLA's CPU backend hands convolutions to YNNPACK in this process,
  as XLA_FLAGS sets it (XLA's default: it does)."""
  match = re.search(
    rf"--{_YNN_FUSION_TYPE}=(\S*)", os.environ.get("XLA_FLAGS", "")
  )
  return match is None or "conv" in match.group(1)


def attack_program_options(incremental: bool) -> tuple:
  """XLA options for one compiled attack program, as hashable (name, value)
  pairs for ``jax.jit(compiler_options=dict(...))``.

  An incremental program convolves many small windows (a few cells each),
  which YNNPACK runs at a quarter to a half of the FLOP rate of XLA's own
  convolutions, where the full pass of some small CNNs runs faster on
  YNNPACK (benchmarks/results/incremental_cpu.md). So on CPU an incremental
  program is compiled with YNNPACK off, whatever XLA_FLAGS sets for the
  rest of the process; a full-pass program keeps the process's setting.
  """
  import jax

  if incremental and jax.default_backend() == "cpu":
    return ((_YNN_FUSION_TYPE, ""),)
  return ()
