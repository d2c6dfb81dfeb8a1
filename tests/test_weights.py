"""Weights on disk: round trip, sharding, card checks, and the shipped
victims."""

import hashlib
import json

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixeljax.data import load_cifar10_sample
from pixeljax.models import SmallCNN
from pixeljax.models import make_predict
from pixeljax.models import weights
from pixeljax.models.weights import load_predict
from pixeljax.models.weights import load_victim
from pixeljax.models.weights import load_weights
from pixeljax.models.weights import round_to_storage
from pixeljax.models.weights import save_weights
from pixeljax.models.weights import shipped_card
from pixeljax.models.weights import shipped_models


def _trained_like_model():
  """A SmallCNN with non-trivial batch statistics, so they must round-trip
  too."""
  model = SmallCNN(rngs=nnx.Rngs(3))
  bn = model.convs[1].bn
  bn.mean[...] = jnp.linspace(-1, 1, bn.mean[...].size)
  bn.var[...] = jnp.linspace(0.5, 2, bn.var[...].size)
  return model


@pytest.fixture(scope="module")
def images():
  return jnp.asarray(load_cifar10_sample().images[:8], jnp.float32)


def test_round_trip_gives_identical_logits(tmp_path, images):
  model = _trained_like_model()
  card_path = save_weights(
    model, tmp_path, "m", architecture="smallcnn", card={"test_accuracy": 0.5}
  )
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    "m.json",
    "m.safetensors",
  ]
  loaded, card = load_weights(card_path)
  assert card["test_accuracy"] == 0.5 and card["param_count"] == 242_474
  np.testing.assert_array_equal(
    make_predict(loaded)(images), make_predict(model)(images)
  )


def test_sharding(tmp_path, images):
  model = _trained_like_model()
  card_path = save_weights(
    model, tmp_path, "m", architecture="smallcnn", max_shard_bytes=300_000
  )
  card = json.loads(card_path.read_text())
  shards = sorted(p.name for p in tmp_path.glob("m-*.safetensors"))
  assert (
    len(shards) >= 3
    and shards[0] == f"m-00001-of-{len(shards):05d}.safetensors"
  )
  assert (
    sorted(card["files"]) == shards
    and not (tmp_path / "m.safetensors").exists()
  )
  index = json.loads((tmp_path / card["index"]).read_text())
  assert set(index["weight_map"]) == set(card["tensors"])
  assert set(index["weight_map"].values()) == set(shards)
  assert index["metadata"]["total_size"] == 4 * sum(
    np.prod(s) for s in card["tensors"].values()
  )
  loaded, _ = load_weights(card_path)
  np.testing.assert_array_equal(
    make_predict(loaded)(images), make_predict(model)(images)
  )


def test_float16_storage_halves_the_files_and_loads_the_rounded_network(
  tmp_path, images
):
  model = _trained_like_model()
  single = save_weights(model, tmp_path / "32", "m", architecture="smallcnn")
  half = save_weights(
    model,
    tmp_path / "16",
    "m",
    architecture="smallcnn",
    storage_dtype="float16",
  )
  card = json.loads(half.read_text())
  assert card["dtype"] == "float16"
  sizes = [(p.parent / "m.safetensors").stat().st_size for p in (single, half)]
  assert sizes[1] < 0.51 * sizes[0]
  loaded, _ = load_weights(half)
  for leaf in jax.tree.leaves(nnx.state(loaded)):
    assert leaf.dtype == jnp.float32
  # What loads is what round_to_storage makes of the model, to the bit.
  round_to_storage(model, "float16")
  np.testing.assert_array_equal(
    make_predict(loaded)(images), make_predict(model)(images)
  )
  # Rounded already: a second rounding changes nothing.
  again = save_weights(
    model,
    tmp_path / "16b",
    "m",
    architecture="smallcnn",
    storage_dtype="float16",
  )
  assert json.loads(again.read_text())["files"] == card["files"]


def test_a_value_beyond_float16_is_refused_not_saved_as_inf(tmp_path):
  model = _trained_like_model()
  model.convs[1].bn.var[...] = model.convs[1].bn.var[...].at[3].set(1e5)
  with pytest.raises(ValueError, match=r"storage_dtype: tensor convs\.1\.bn"):
    save_weights(
      model, tmp_path, "m", architecture="smallcnn", storage_dtype="float16"
    )
  assert not list(tmp_path.iterdir())
  with pytest.raises(ValueError, match="storage_dtype: expected one of"):
    save_weights(
      model, tmp_path, "m", architecture="smallcnn", storage_dtype="int8"
    )


def test_files_of_another_dtype_than_the_card_are_refused(tmp_path):
  half = save_weights(
    _trained_like_model(),
    tmp_path,
    "m",
    architecture="smallcnn",
    storage_dtype="float16",
  )
  _edit(half, lambda c: c.update(dtype="float32"))
  with pytest.raises(
    ValueError, match="expected float32 .*, files hold .*float16"
  ):
    load_weights(half)


@pytest.fixture
def saved(tmp_path):
  return save_weights(
    _trained_like_model(), tmp_path, "m", architecture="smallcnn"
  )


def _edit(card_path, fn):
  card = json.loads(card_path.read_text())
  fn(card)
  card_path.write_text(json.dumps(card))


def test_card_shape_mismatch(saved):
  _edit(saved, lambda c: c["tensors"].update({"classifier.bias": [11]}))
  with pytest.raises(ValueError, match="shapes differ for.*classifier.bias"):
    load_weights(saved)


def test_card_names_other_architecture(saved):
  _edit(saved, lambda c: c.update(architecture="nin"))
  with pytest.raises(ValueError, match="do not match architecture 'nin'"):
    load_weights(saved)


def test_card_param_count_mismatch(saved):
  _edit(saved, lambda c: c.update(param_count=1))
  with pytest.raises(ValueError, match="card says 1 parameters"):
    load_weights(saved)


def test_corrupted_file(saved):
  f = saved.parent / "m.safetensors"
  raw = bytearray(f.read_bytes())
  raw[-5] ^= 0xFF
  f.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match="m.safetensors: sha256 .* differs"):
    load_weights(saved)


def test_not_a_card(tmp_path):
  (tmp_path / "x.json").write_text("{}")
  with pytest.raises(ValueError, match="not a pixeljax.weights/1 card"):
    load_weights(tmp_path / "x.json")


def test_no_shipped_weights_says_how_to_train(monkeypatch, tmp_path):
  # A package without VGG16's weights, whichever victims ship today.
  monkeypatch.setattr(weights, "_shipped_dir", lambda: tmp_path)
  assert shipped_models() == ()
  with pytest.raises(
    FileNotFoundError, match="python -m pixeljax.train --model vgg16"
  ):
    load_victim("vgg16")


@pytest.mark.parametrize("name", shipped_models())
def test_shipped_victim_matches_its_card(name):
  card = shipped_card(name)
  assert card["eval_data"]["num_images"] == 10_000
  assert card["dtype"] == "float16" or name == "smallcnn"
  sample = load_cifar10_sample()
  logits = jax.jit(load_predict(name))(jnp.asarray(sample.images, jnp.float32))
  assert np.isfinite(np.asarray(logits)).all()
  accuracy = float((logits.argmax(-1) == sample.labels).mean())
  # 300 images: the standard error is about 2-2.6 points.
  assert abs(accuracy - card["test_accuracy"]) < 0.08, (
    accuracy,
    card["test_accuracy"],
  )


def test_the_paper_victims_that_ship_beat_the_paper():
  paper = {"allconv": 0.869, "nin": 0.874, "vgg16": 0.834}
  for name in set(paper) & set(shipped_models()):
    assert shipped_card(name)["test_accuracy"] >= paper[name], name


def test_written_files_follow_the_umask(tmp_path):
  reference = tmp_path / "reference"
  reference.write_bytes(b"")  # what a plain open() makes under this umask
  mode = reference.stat().st_mode & 0o777
  model = _trained_like_model()
  card_path = save_weights(
    model, tmp_path / "w", "m", architecture="smallcnn", max_shard_bytes=300_000
  )
  written = sorted((tmp_path / "w").iterdir())
  assert len(written) >= 5 and not any(
    p.name.startswith(".") for p in written
  )  # no temp file
  assert {p.name: p.stat().st_mode & 0o777 for p in written} == {
    p.name: mode for p in written
  }
  load_weights(card_path)


@pytest.mark.parametrize(
  "edit, field, phrase",
  [
    (lambda c: [c], "", "expected a JSON object, got a JSON list"),
    (
      lambda c: {**c, "files": list(c["files"])},
      "'files'",
      "expected a non-empty object",
    ),
    (lambda c: {**c, "files": {}}, "'files'", "expected a non-empty object"),
    (lambda c: {**c, "files": {k: 1 for k in c["files"]}}, "'files'", "sha256"),
    (
      lambda c: {**c, "tensors": list(c["tensors"])},
      "'tensors'",
      "expected an object",
    ),
    (
      lambda c: {**c, "tensors": {"a": "3x3"}},
      "'tensors'",
      "shape as a list of ints",
    ),
    (
      lambda c: {**c, "num_classes": "ten"},
      "'num_classes'",
      "expected an int from 2",
    ),
    (
      lambda c: {**c, "num_classes": True},
      "'num_classes'",
      "expected an int from 2",
    ),
    (lambda c: {**c, "param_count": 1.5}, "'param_count'", "expected an int"),
    (lambda c: {**c, "dtype": "int8"}, "'dtype'", "expected one of"),
    (lambda c: {**c, "dtype": ["float16"]}, "'dtype'", "expected one of"),
    (
      lambda c: {**c, "architecture": ["smallcnn"]},
      "'architecture'",
      "expected a registry",
    ),
    (
      lambda c: {k: v for k, v in c.items() if k != "tensors"},
      "",
      "missing ['tensors']",
    ),
    (
      lambda c: {**c, "format": {"a": 1}},
      "",
      "is not a pixeljax.weights/1 card",
    ),
  ],
)
def test_malformed_card_is_a_clear_value_error(saved, edit, field, phrase):
  saved.write_text(json.dumps(edit(json.loads(saved.read_text()))))
  with pytest.raises(ValueError) as e:
    load_weights(saved)
  assert type(e.value) is ValueError
  assert (
    str(saved) in str(e.value)
    and field in str(e.value)
    and phrase in str(e.value)
  )


@pytest.mark.parametrize(
  "text", ["[1, 2", "\xff\xfe{", "[" * 100_000 + "]" * 100_000]
)
def test_unreadable_card_is_a_clear_value_error(tmp_path, text):
  (tmp_path / "x.json").write_bytes(text.encode("latin-1"))
  with pytest.raises(ValueError, match="cannot read weights card .*x.json"):
    load_weights(tmp_path / "x.json")


@pytest.mark.parametrize(
  "fname",
  [
    "../m.safetensors",
    "/etc/passwd",
    "sub/m.safetensors",
    "..",
    ".m.safetensors",
    "c:m.safetensors",
  ],
)
def test_card_may_name_only_files_in_its_folder(tmp_path, fname, monkeypatch):
  outside = tmp_path / "m.safetensors"
  saved = save_weights(
    _trained_like_model(), tmp_path / "card", "m", architecture="smallcnn"
  )
  (saved.parent / "m.safetensors").rename(outside)
  (saved.parent / "sub").mkdir()
  (saved.parent / "sub" / "m.safetensors").write_bytes(outside.read_bytes())
  _edit(saved, lambda c: c.update(files={fname: c["files"]["m.safetensors"]}))
  opened = []
  monkeypatch.setattr(
    "pixeljax.models.weights._sha256", lambda p: opened.append(p)
  )
  with pytest.raises(
    ValueError, match=f"{saved}: field 'files': .*only files in its own"
  ):
    load_weights(saved)
  assert not opened


def test_card_file_linked_outside_its_folder_is_refused(tmp_path):
  saved = save_weights(
    _trained_like_model(), tmp_path / "card", "m", architecture="smallcnn"
  )
  (saved.parent / "m.safetensors").rename(tmp_path / "elsewhere.safetensors")
  (saved.parent / "m.safetensors").symlink_to(
    tmp_path / "elsewhere.safetensors"
  )
  with pytest.raises(
    ValueError, match="'m.safetensors' resolves outside the card's folder"
  ):
    load_weights(saved)


@pytest.mark.parametrize(
  "name",
  [
    "/tmp/evil",
    "../up",
    "a/b",
    "a\\b",
    ".",
    "..",
    ".hidden",
    "",
    "tab\there",
    7,
    None,
  ],
)
def test_card_name_must_be_a_plain_file_stem(saved, name):
  _edit(saved, lambda c: c.update(name=name))
  with pytest.raises(
    ValueError, match=f"{saved}: field 'name': expected a plain file name"
  ):
    load_weights(saved)
  with pytest.raises(ValueError, match="name: expected a plain file name"):
    save_weights(
      _trained_like_model(), saved.parent / "out", name, architecture="smallcnn"
    )


def test_damaged_safetensors_with_matching_card_is_a_value_error(saved):
  f = saved.parent / "m.safetensors"
  f.write_bytes(b"garbage!" * 4)
  _edit(
    saved,
    lambda c: c.update(
      files={"m.safetensors": hashlib.sha256(f.read_bytes()).hexdigest()}
    ),
  )
  with pytest.raises(
    ValueError, match="m.safetensors: not a readable safetensors file"
  ):
    load_weights(saved)
