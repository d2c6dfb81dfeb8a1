"""benchmarks.train_profile: the train step's HLO categories, FLOPs and time
shares."""

import pytest

from benchmarks import train_profile as profile_lib

BATCH = 16
# SmallCNN: 3x3 convs 3>32 @32x32, 32>64 @16x16, 64>128 @8x8, 128>128 @4x4,
# then dense 128>10.
_CONVS = ((3, 32, 32), (32, 64, 16), (64, 128, 8), (128, 128, 4))


def _conv_flops(layers):
  return sum(
    2 * BATCH * size * size * 9 * cin * cout for cin, cout, size in layers
  )


@pytest.fixture(scope="module")
def smallcnn():
  """SmallCNN's train step and forward pass at batch 16, and their HLO."""
  return profile_lib.step_calls("smallcnn", BATCH)


def test_flops_by_category_match_the_layers(smallcnn):
  """FLOPs read from the HLO (loops' trip counts included) land in the right
  categories: each conv's forward and kernel-gradient FLOPs, the input
  gradient of every conv but the first (the images need none), the dense
  layer three times."""
  _, train_text, _, forward_text = smallcnn
  flops = {}
  for category, count in profile_lib.classify(train_text).values():
    flops[category] = flops.get(category, 0) + count
  dense = 2 * BATCH * 128 * 10
  assert flops["forward conv"] == _conv_flops(_CONVS)
  assert flops["kernel grad"] == _conv_flops(_CONVS)
  assert flops["input-grad conv"] == _conv_flops(_CONVS[1:])
  assert flops["dense"] == 3 * dense
  forward = profile_lib.classify(forward_text).values()
  assert sum(c for _, c in forward) == _conv_flops(_CONVS) + dense


def test_categories_share_out_the_traced_step(smallcnn):
  train, train_text, _, _ = smallcnn
  row = profile_lib.breakdown(train, train_text, repeats=1)
  assert row["traced_calls"] == 1
  assert not row["untraced_thunks"]
  assert sum(row["ms"].values()) == pytest.approx(row["traced_ms"])
  ran = {c for c, ms in row["ms"].items() if ms > 0}
  # Not "optimizer": on one CI machine none of its small update thunks
  # showed time of their own (fused elsewhere or too short to trace).
  assert {
    "forward conv",
    "input-grad conv",
    "kernel grad",
    "batch norm",
    "pooling",
    "augmentation",
  } <= ran
