"""benchmarks.incremental_profile: HLO classification, FLOPs and time shares."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import incremental as incremental_bench
from benchmarks import incremental_profile as profile_lib
from pixeljax.attack import incremental

POPSIZE = 4


@pytest.fixture(scope="module")
def compiled():
  """A one-stage dense-head CNN's two programs at d = 1, compiled for one
  chunk of 2 images x 4 candidates, with their parsed HLO."""
  predict = incremental_bench.small_cnn((4,), "max", "dense", "NHWC")
  evaluator = incremental.evaluator(predict, (32, 32, 3), 1)
  images = jax.random.randint(jax.random.key(0), (2, 32, 32, 3), 0, 256).astype(
    jnp.uint8
  )
  chunks = profile_lib.chunk_args(
    images, 1, POPSIZE, 2 * POPSIZE, jax.random.key(1)
  )
  full, windowed = profile_lib.programs(predict, evaluator)
  hlo = {
    name: profile_lib.parse_hlo(f.lower(*chunks[0]).compile().as_text())
    for name, f in (("full", full), ("incremental", windowed))
  }
  return evaluator, chunks, full, hlo


def test_hlo_flops_match_the_counted_flops(compiled):
  evaluator, chunks, _, hlo = compiled
  (chunk,) = chunks
  batch = chunk[1].shape[0]
  full = profile_lib.classify(hlo["full"])
  windowed = profile_lib.classify(hlo["incremental"])

  def flops(table):
    return sum(f for c, f, _ in table.values() if c != "clean maps")

  assert flops(full) == batch * evaluator.full_flops
  assert flops(windowed) == batch * evaluator.flops
  categories = {c for c, _, _ in windowed.values()}
  assert {"conv", "patch assembly", "clean maps", "dot"} <= categories
  assert "inject" in {c for c, _, _ in full.values()}


def test_split_convs_pairs_layers_in_order():
  def row(*layers):
    convs = [dict(kernel=k, out=o, ms=1.0, gflop=2.0) for k, o in layers]
    return dict(ms={}, gflop={}, conv_layers=convs)

  # The second layer's window has the size of the third layer's whole map.
  full = row(("3x3 8>8", "16x16"), ("3x3 8>8", "16x16"), ("3x3 8>8", "8x8"))
  windowed = row(("3x3 8>8", "5x5"), ("3x3 8>8", "8x8"), ("3x3 8>8", "8x8"))
  profile_lib.split_convs(full, windowed)
  assert [c["whole"] for c in windowed["conv_layers"]] == [False, False, True]
  assert windowed["ms"] == {"conv windows": 2.0, "conv whole map": 1.0}
  assert full["gflop"] == {"conv whole map": 6.0}


def test_shared_time_splits_overlaps_and_counts_gaps():
  spans = [("a", 0, 10), ("b", 5, 15), ("c", 20, 25)]
  own, idle, total = profile_lib.shared_time(spans)
  assert own == {"a": 7.5, "b": 7.5, "c": 5}
  assert (idle, total) == (5, 25)


def test_profile_shares_out_the_traced_calls(compiled):
  _, chunks, full, hlo = compiled
  _, ms, idle, traced, calls = profile_lib.profile(full, chunks, repeats=1)
  assert calls == 1
  assert set(ms) <= set(hlo["full"]["ENTRY"])
  assert any(name.startswith("conv") for name in ms)
  assert sum(ms.values()) + idle == pytest.approx(traced)
