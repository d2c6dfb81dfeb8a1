"""Model weights as safetensors files plus a JSON card; the shipped victims.

On disk, for a model saved under `NAME` in a folder:

    NAME.json                                   the card (below)
    NAME.safetensors                            all tensors, when <= 16 MB
    NAME-00001-of-0000K.safetensors ...         or K shards, with
    NAME.safetensors.index.json                 {"metadata": ...,
                                                 "weight_map": {tensor: file}}

The card records the registry architecture, parameter count, the storage
dtype, every tensor's shape, the sha256 of every file, and whatever the
trainer adds (test accuracy and on which data, the training command, the
date). Tensors are stored as float32, or as float16 to halve the files (VGG16:
38 MiB instead of 76); either way they load as float32. Loading rebuilds the
architecture, checks the card and files against it and fails with a
ValueError on any mismatch: safetensors holds plain arrays, so loading an
untrusted file runs no code. A card is untrusted input too: every field is
type-checked, and it may name only files in its own folder.
"""

from __future__ import annotations

from collections.abc import Callable
import datetime
import hashlib
from importlib import resources
import json
import pathlib
import re
import reprlib
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from pixeljax.files import write_atomic
from pixeljax.models.registry import MODELS
from pixeljax.models.registry import create_model
from pixeljax.models.registry import make_predict
from pixeljax.models.registry import param_count

CARD_FORMAT = "pixeljax.weights/1"
MAX_SHARD_BYTES = 16 * 2**20
# The dtypes a card may store its tensors in (its "dtype" field).
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_NAME = (
  200  # leaves room for the longest suffix within a 255-byte file name
)


def _flat(model: nnx.Module) -> dict[str, nnx.Variable]:
  """Tensor name ("convs.0.bn.mean") -> Variable, for every array in the
  model."""
  return {
    ".".join(map(str, path)): var
    for path, var in nnx.to_flat_state(nnx.state(model))
  }


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def check_storage_dtype(storage_dtype: Any, what: str = "storage_dtype") -> str:
  """Returns `storage_dtype` if it is a key of `STORAGE_DTYPES`, else raises
  a ValueError naming it `what`."""
  if not isinstance(storage_dtype, str) or storage_dtype not in STORAGE_DTYPES:
    raise ValueError(
      f"{what}: expected one of {list(STORAGE_DTYPES)}, got "
      f"{reprlib.repr(storage_dtype)}"
    )
  return storage_dtype


def _stored(name: str, array: np.ndarray, storage_dtype: str) -> np.ndarray:
  """`array` (float32) cast to `storage_dtype`; a ValueError if a finite
  value does not fit (float16 ends at 65504)."""
  with np.errstate(over="ignore"):  # checked below, with a clearer message
    stored = np.asarray(array, np.float32).astype(STORAGE_DTYPES[storage_dtype])
  overflow = np.isfinite(array) & ~np.isfinite(stored)
  if overflow.any():
    raise ValueError(
      f"storage_dtype: tensor {name} holds values beyond {storage_dtype}'s "
      f"range (largest magnitude {np.abs(array[overflow]).max():.6g}); "
      "store it as float32"
    )
  return stored


def round_to_storage(model: nnx.Module, storage_dtype: str) -> None:
  """Rounds every array of `model` in place to what `save_weights` stores
  with `storage_dtype`, so that the network evaluated is the one saved.

  Raises:
    ValueError: `storage_dtype` is unknown, or a value does not fit it.
  """
  check_storage_dtype(storage_dtype)
  for name, var in _flat(model).items():
    value = np.asarray(jax.device_get(var.get_value()), np.float32)
    rounded = _stored(name, value, storage_dtype).astype(np.float32)
    var.set_value(jnp.asarray(rounded, var.get_value().dtype))


def check_name(name: Any, what: str = "name") -> str:
  """Returns `name` if it is a plain file name (or stem) in one folder, else
  raises a ValueError saying why, naming it `what`.

  Plain: a non-empty str of at most 200 characters, with no path separator
  (/ or \\), no ':', no control character and no leading '.' (so neither '.'
  nor '..', nor hidden); it can never reach outside the folder it is joined to.
  """
  if not isinstance(name, str):
    raise ValueError(
      f"{what}: expected a plain file name (str), got {type(name).__name__} "
      f"{reprlib.repr(name)}"
    )
  why = (
    "is empty"
    if not name
    else f"is longer than {_MAX_NAME} characters"
    if len(name) > _MAX_NAME
    else "holds a path separator or ':'"
    if any(c in name for c in "/\\:")
    else "holds a control character"
    if any(ord(c) < 32 or ord(c) == 127 for c in name)
    else "starts with '.'"
    if name.startswith(".")
    else None
  )
  if why:
    raise ValueError(
      f"{what}: expected a plain file name in one folder, got "
      f"{reprlib.repr(name)}, which {why}"
    )
  return name


def _shards(
  tensors: dict[str, np.ndarray], max_bytes: int
) -> list[dict[str, np.ndarray]]:
  """Packs tensors, in order, into groups of at most `max_bytes` (a larger
  tensor gets a group of its own)."""
  groups, size = [{}], 0
  for name, arr in tensors.items():
    if groups[-1] and size + arr.nbytes > max_bytes:
      groups.append({})
      size = 0
    groups[-1][name] = arr
    size += arr.nbytes
  return groups


def save_weights(
  model: nnx.Module,
  directory: str | pathlib.Path,
  name: str,
  *,
  architecture: str,
  card: dict[str, Any] | None = None,
  max_shard_bytes: int = MAX_SHARD_BYTES,
  storage_dtype: str = "float32",
) -> pathlib.Path:
  """Writes the model's arrays (params and batch statistics) and its card.

  Args:
    model: the NNX model.
    directory: output folder (created if missing).
    name: file stem, e.g. "smallcnn".
    architecture: the model's registry name (a key of `MODELS`).
    card: extra card fields (test accuracy, eval data, training command...).
    max_shard_bytes: files larger than this are split into shards.
    storage_dtype: "float32", or "float16" for files of half the size; the
      values are rounded to it (see `round_to_storage` to evaluate the
      rounded network first).

  Returns:
    The card's path, `directory/name.json`.

  Raises:
    ValueError: a bad argument, or a value beyond float16's range.
  """
  check_name(name)
  check_storage_dtype(storage_dtype)
  if architecture not in MODELS:
    raise ValueError(
      f"architecture: expected one of {sorted(MODELS)}, got {architecture!r}"
    )
  if max_shard_bytes < 1:
    raise ValueError(
      f"max_shard_bytes: expected a positive int, got {max_shard_bytes}"
    )
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tensors = {
    k: np.asarray(jax.device_get(v.get_value()), np.float32)
    for k, v in _flat(model).items()
  }
  num_classes = int(tensors[_logits_bias(tensors)].shape[0])
  tensors = {k: _stored(k, a, storage_dtype) for k, a in tensors.items()}
  groups = _shards(tensors, max_shard_bytes)
  files = {}
  for i, group in enumerate(groups, 1):
    fname = (
      f"{name}.safetensors"
      if len(groups) == 1
      else f"{name}-{i:05d}-of-{len(groups):05d}.safetensors"
    )
    # Not safetensors.numpy.save_file: it makes files readable by their owner
    # only.
    write_atomic(directory / fname, safetensors.numpy.save(group))
    files[fname] = _sha256(directory / fname)
  index = None
  if len(groups) > 1:
    index = f"{name}.safetensors.index.json"
    weight_map = {t: f for f, g in zip(files, groups) for t in g}
    total = sum(a.nbytes for a in tensors.values())
    write_atomic(
      directory / index,
      json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1
      ).encode(),
    )
  out = {
    "format": CARD_FORMAT,
    "name": name,
    "architecture": architecture,
    "num_classes": num_classes,
    "param_count": param_count(model),
    "dtype": storage_dtype,
    "tensors": {k: list(a.shape) for k, a in tensors.items()},
    "files": files,
    "index": index,
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    **(card or {}),
  }
  path = directory / f"{name}.json"
  write_atomic(
    path, json.dumps(out, indent=1).encode()
  )  # last: it names the files above
  return path


def _logits_bias(tensors: dict[str, np.ndarray]) -> str:
  # The last bias in insertion order is the classifier's in every registry
  # model.
  return [
    k
    for k in tensors
    if k.endswith("classifier.bias") or k.endswith("fc3.bias")
  ][-1]


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def read_card(card_path: str | pathlib.Path) -> dict[str, Any]:
  """Reads a weights card (JSON) and checks the type of every field it uses.

  Raises:
    ValueError: naming the card file and the field, when the card cannot be
      read, is not a JSON object of format `CARD_FORMAT`, lacks a field, or
      holds a field of the wrong type (a storage `dtype` outside
      `STORAGE_DTYPES`, absent meaning float32); or when `name`, `files` or
      `index` is not a plain file name (see `check_name`).
  """
  path = pathlib.Path(card_path)
  try:
    card = json.loads(path.read_bytes())
  except (
    OSError,
    ValueError,
    RecursionError,
  ) as e:  # ValueError: bad JSON or encoding
    raise ValueError(f"card_path: cannot read weights card {path}: {e}") from e
  if not isinstance(card, dict):
    raise ValueError(
      f"card_path: {path} is not a {CARD_FORMAT} card: expected a JSON "
      f"object, got a JSON {type(card).__name__}"
    )
  missing = {"format", "architecture", "param_count", "tensors", "files"} - set(
    card
  )
  if card.get("format") != CARD_FORMAT or missing:
    raise ValueError(
      f"card_path: {path} is not a {CARD_FORMAT} card "
      f"(format {reprlib.repr(card.get('format'))}, missing {sorted(missing)})"
    )

  def bad(field, expected):
    return ValueError(
      f"{path}: field {field!r}: expected {expected}, got "
      f"{reprlib.repr(card[field])}"
    )

  def plain(field, name):
    try:
      check_name(name, f"{path}: field {field!r}")
    except ValueError as e:
      raise ValueError(
        f"{e}; a card may name only files in its own folder"
      ) from None

  if "name" in card:
    plain("name", card["name"])
  if not isinstance(card["architecture"], str):
    raise bad("architecture", "a registry name (str)")
  if "num_classes" in card and not (
    _is_int(card["num_classes"]) and 2 <= card["num_classes"] < 2**31
  ):
    raise bad("num_classes", "an int from 2 to 2**31 - 1")
  if not _is_int(card["param_count"]) or card["param_count"] < 0:
    raise bad("param_count", "an int >= 0")
  stored = card.get("dtype", "float32")
  if not isinstance(stored, str) or stored not in STORAGE_DTYPES:
    raise bad("dtype", f"one of {list(STORAGE_DTYPES)}")
  tensors = card["tensors"]
  if not (
    isinstance(tensors, dict)
    and all(
      isinstance(v, list) and all(_is_int(d) and d >= 0 for d in v)
      for v in tensors.values()
    )
  ):
    raise bad(
      "tensors", "an object {tensor name: shape as a list of ints >= 0}"
    )
  files = card["files"]
  if not (
    isinstance(files, dict)
    and files
    and all(isinstance(v, str) and _SHA256.fullmatch(v) for v in files.values())
  ):
    raise bad(
      "files",
      "a non-empty object {file name: sha256 as 64 lowercase hex digits}",
    )
  for fname in files:
    plain("files", fname)
  if card.get("index") is not None:
    plain("index", card["index"])
  return card


def load_weights(
  card_path: str | pathlib.Path, *, dtype=jnp.float32
) -> tuple[nnx.Module, dict[str, Any]]:
  """Rebuilds a model from its card and safetensors files, checking both.

  Args:
    card_path: the `NAME.json` card written by `save_weights`.
    dtype: compute dtype of the rebuilt model.

  Returns:
    (model, card): the model in train mode, as built (call `.eval()` or use
    `make_predict` for inference), and the card as a dict.

  Raises:
    ValueError: the card is malformed (see `read_card`) or names a file that
      resolves outside its folder; the card does not match the architecture
      (tensor names, shapes, parameter count); a file's sha256 differs from
      the card; or a file's tensors differ from the card.
  """
  card_path = pathlib.Path(card_path)
  card = read_card(card_path)
  arch = card["architecture"]
  if arch not in MODELS:
    raise ValueError(
      f"{card_path}: unknown architecture {arch!r}; known: {sorted(MODELS)}"
    )
  num_classes = card.get("num_classes", 10)
  folder = card_path.parent.resolve()
  for fname in card["files"]:
    if (card_path.parent / fname).resolve().parent != folder:
      raise ValueError(
        f"{card_path}: field 'files': {fname!r} resolves outside the "
        f"card's folder {folder} (a link?); refusing to read it"
      )
  model = nnx.eval_shape(
    lambda: create_model(
      arch, rngs=nnx.Rngs(0), num_classes=num_classes, dtype=dtype
    )
  )
  expected = {k: list(v.get_value().shape) for k, v in _flat(model).items()}
  if card["tensors"] != expected:
    diff = sorted(set(card["tensors"]) ^ set(expected))
    shapes = [
      k
      for k in expected
      if k in card["tensors"] and card["tensors"][k] != expected[k]
    ]
    raise ValueError(
      f"{card_path}: tensors do not match architecture {arch!r}: "
      f"names only on one side {diff[:5]}, shapes differ for {shapes[:5]}"
    )
  if card["param_count"] != param_count(model):
    raise ValueError(
      f"{card_path}: card says {card['param_count']} parameters, "
      f"architecture {arch!r} has {param_count(model)}"
    )
  arrays = {}
  for fname, digest in card["files"].items():
    fpath = card_path.parent / fname
    if not fpath.is_file():
      raise ValueError(f"{card_path}: weights file {fpath} is missing")
    if (actual := _sha256(fpath)) != digest:
      raise ValueError(
        f"{fpath}: sha256 {actual} differs from the card's {digest}: "
        "the file is corrupt or does not belong to this card"
      )
    try:
      arrays.update(safetensors.numpy.load_file(fpath))
    except (safetensors.SafetensorError, OSError, ValueError) as e:
      raise ValueError(f"{fpath}: not a readable safetensors file: {e}") from e
  stored = card.get("dtype", "float32")
  for k, shape in expected.items():
    if (
      k not in arrays
      or list(arrays[k].shape) != shape
      or arrays[k].dtype != STORAGE_DTYPES[stored]
    ):
      got = None if k not in arrays else (arrays[k].shape, arrays[k].dtype)
      raise ValueError(
        f"{card_path}: tensor {k} expected {stored} {shape}, files hold {got}"
      )
  flat = nnx.to_flat_state(nnx.state(model))
  nnx.update(
    model,
    nnx.from_flat_state(
      [
        (
          p,
          v.replace(jnp.asarray(arrays[".".join(map(str, p))], jnp.float32)),
        )
        for p, v in flat
      ]
    ),
  )
  return model, card


# ----------------------------------------------------------------------------
# Shipped weights (package data in pixeljax/weights/)


def _shipped_dir():
  return resources.files("pixeljax") / "weights"


def shipped_models() -> tuple[str, ...]:
  """Names of the models whose trained weights ship with the package."""
  d = _shipped_dir()
  if not d.is_dir():
    return ()
  return tuple(
    sorted(
      f.name[:-5]
      for f in d.iterdir()
      if f.name.endswith(".json") and not f.name.endswith(".index.json")
    )
  )


def load_victim(name: str, *, dtype=jnp.float32) -> nnx.Module:
  """The shipped trained model `name` (see `shipped_models()`), in eval mode."""
  shipped = shipped_models()
  if name not in shipped:
    hint = ""
    if name in MODELS:
      hint = (
        f" Train it with `python -m pixeljax.train --model {name} --out DIR`, "
        "then load it with "
        f"pixeljax.models.weights.load_weights('DIR/{name}.json')."
      )
    raise FileNotFoundError(
      f"name: no shipped weights for {name!r}; shipped: {list(shipped)}.{hint}"
    )
  with resources.as_file(_shipped_dir()) as d:
    model, _ = load_weights(pathlib.Path(d) / f"{name}.json", dtype=dtype)
  model.eval()
  return model


def shipped_card(name: str) -> dict[str, Any]:
  """The card of shipped model `name`."""
  if name not in (shipped := shipped_models()):
    raise FileNotFoundError(
      f"name: no shipped weights for {name!r}; shipped: {list(shipped)}"
    )
  with resources.as_file(_shipped_dir()) as d:
    return read_card(pathlib.Path(d) / f"{name}.json")


def load_predict(name: str) -> Callable[[jax.Array], jax.Array]:
  """The shipped model `name` as a pure `predict(f32 [B,H,W,3] 0..255) -> f32
  [B,K]`."""
  return make_predict(load_victim(name))
