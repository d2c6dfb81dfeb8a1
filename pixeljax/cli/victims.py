"""The victim of a run: a shipped model, a weights card, or an ONNX or PyTorch
model (through ``pixeljax.adapters``), with an identity for run.json."""

from collections.abc import Callable
import hashlib
import importlib.util
import pathlib
import pickle
from typing import NamedTuple

from pixeljax.cli.settings import AttackSettings
from pixeljax.errors import InputError
from pixeljax.models import registry
from pixeljax.models import weights as weights_lib

# The default victim: the first of these whose weights ship.
DEFAULT_MODEL_ORDER = ("allconv", "nin", "vgg16", "smallcnn")


class Victim(NamedTuple):
  """predict: f32 [B, H, W, 3] in 0..255 -> logits f32 [B, K]."""

  predict: Callable
  num_classes: int
  identity: dict  # name, architecture and file hashes: part of the settings


def shipped_default() -> str | None:
  """The default model: the first of DEFAULT_MODEL_ORDER that ships."""
  shipped = weights_lib.shipped_models()
  return next((m for m in DEFAULT_MODEL_ORDER if m in shipped), None)


def load_victim(name: str | None, weights: str | None) -> Victim:
  """A shipped model by name (default: ``shipped_default()``) or the model of
  a weights card; ``InputError`` saying what exists when neither works."""
  if weights is not None:
    path = pathlib.Path(weights)
    if not path.is_file():
      raise InputError(
        f"--weights {path}: no such file; pass the NAME.json "
        "card written next to the .safetensors files"
      )
    try:
      model, card = weights_lib.load_weights(path)
    except ValueError as e:
      raise InputError(f"--weights: {e}") from None
    model.eval()
    name = card.get("name", path.stem)
  else:
    shipped = weights_lib.shipped_models()
    train_hint = (
      "train one with `pixeljax train --model smallcnn --out "
      "DIR`, then pass --weights DIR/smallcnn.json"
    )
    if name is None:
      name = shipped_default()
      if name is None:
        raise InputError(
          f"no trained weights ship with this install; {train_hint}"
        )
    if name not in shipped:
      known = ", ".join(shipped) or "none"
      raise InputError(
        f"--model {name!r}: no such model with shipped weights; known: "
        f"{known}. Architectures {', '.join(sorted(registry.MODELS))} can "
        f"be trained: {train_hint.replace('smallcnn', 'NAME')}"
      )
    model = weights_lib.load_victim(name)
    card = weights_lib.shipped_card(name)
  identity = dict(
    name=name, architecture=card["architecture"], files=card["files"]
  )
  return Victim(
    registry.make_predict(model), int(card.get("num_classes", 10)), identity
  )


# The arguments of pixeljax.adapters that its messages start with.
_ADAPTER_ARGUMENTS = ("path", "torch_factory", "module", "weights", "nchw")


def _file_sha256(path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _nchw_hint(options: AttackSettings, error: Exception) -> str:
  """A hint when a torch module without --nchw failed as an NCHW module
  given NHWC images does (a RuntimeError from its first layer)."""
  if options.torch and not options.nchw and isinstance(error, RuntimeError):
    return "; a module that takes [B, C, H, W] needs --nchw"
  return ""


def load_external_victim(options: AttackSettings) -> Victim:
  """The --onnx or --torch (with --torch-weights) model as a Victim, its
  K read from its test runs (``adapters.ModelError``) at the run's image
  shape ([size, size, 3] for --folder, else [32, 32, 3]).

  Its identity holds the name (the ONNX file's stem, or the factory's
  function), the architecture, the layout and the sha256 of each file read
  (the ONNX file; a --torch factory file and its weights), not their paths.
  ``InputError`` naming the option when the model cannot be loaded or run.
  """
  from pixeljax import adapters

  if options.onnx is not None:
    flag, framework, extra = f"--onnx {options.onnx}", "onnxruntime", "onnx"
  else:
    flag, framework, extra = f"--torch {options.torch}", "torch", "torch"
  if importlib.util.find_spec(framework) is None:
    raise InputError(
      f"{flag}: needs {framework}, which is not installed: "
      f'pip install "pixeljax[{extra}]"'
    )
  size = options.size if options.folder is not None else 32
  try:
    external = adapters.load_external(
      onnx=options.onnx,
      torch_factory=options.torch,
      weights=options.torch_weights,
      nchw=options.nchw,
      image_shape=(size, size, 3),
    )
  except adapters.ModelError as e:
    # The model ran on test images at the door and failed there.
    cause = e.__cause__
    if cause is None:  # it gave no usable logits: the message says what
      raise InputError(f"{flag}: {str(e).partition(': ')[2]}") from None
    hint = (
      _nchw_hint(options, cause)
      if e.images[0] == 1
      else "; it runs on one image but not on a batch of them"
    )
    raise InputError(
      f"{flag}: cannot load or run the model: {type(cause).__name__}: "
      f"{cause} (on images [B, H, W, C] = {list(e.images)}){hint}"
    ) from None
  except Exception as e:
    # The factory's code and the frameworks raise what they like; what
    # names a bad file or model is the user's to fix, anything else a bug.
    foreign = type(e).__module__.split(".")[0] in ("onnxruntime", "safetensors")
    if not foreign and not isinstance(
      e,
      (
        ValueError,
        TypeError,
        KeyError,
        OSError,
        RuntimeError,
        ImportError,
        pickle.UnpicklingError,
      ),
    ):
      raise
    argument, colon, rest = str(e).partition(": ")
    if colon and argument in _ADAPTER_ARGUMENTS:  # adapters' own checks
      where = (
        f"--torch-weights {options.torch_weights}"
        if argument == "weights"
        else flag
      )
      raise InputError(f"{where}: {rest}") from None
    # The file, the framework or the factory's own code failed.
    raise InputError(
      f"{flag}: cannot load or run the model: {type(e).__name__}: {e}"
      f"{_nchw_hint(options, e)}"
    ) from None
  identity = dict(external.identity, nchw=bool(options.nchw))
  where, _, function = (options.torch or "").rpartition(":")
  if where.endswith(".py"):  # the factory's code is part of the model
    factory = pathlib.Path(where)
    identity["architecture"] = f"torch:{factory.name}:{function}"
    identity["files"] = {
      factory.name: _file_sha256(factory),
      **identity["files"],
    }
  return Victim(external.predict, external.num_classes, identity)
