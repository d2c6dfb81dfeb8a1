"""PyTorch and ONNX models as a ``predict`` that every search takes.

``from_torch(module)`` and ``from_onnx(path)`` return ``predict(images
float32 [B, H, W, C] pixels 0..255) -> logits float32 [B, K]``, a jittable
function. The model gets the pixels as they are (normalisation stays inside
it), in NHWC or, with ``nchw=True``, NCHW order, in its own input dtype; its
output must be logits [B, K]. At the first trace for each image shape,
before any search, the model runs on test batches of 1 and 2 images: it must
give finite floating logits [B, K] for each, or ``ModelError`` says what
came (a failure inside the search would surface only as an XLA callback
error). The number of classes K is read from them.

A PyTorch module is translated by default (``backend="auto"``): exported
with ``torch.export`` and run as JAX operations (``pixeljax.torch_translate``)
inside the search's one jit, so it gets canonical convolutions, incremental
evaluation and sharding like a JAX model. The translation's logits are
checked against the module's own on the test images at the door. A module
that does not export, or uses an operator outside the translated set, runs
through a host callback instead, with a warning naming why
(``backend="translate"`` makes that an error; ``backend="callback"`` always
takes the callback).

Cost of the callback (an ONNX model, ``backend="callback"``): each model
call leaves the compiled search for Python. ``pure_callback`` hands the
callback host arrays, so the images cross to the host (on a GPU, device to
host), go to the framework's device and come back as logits the same way;
DLPack cannot spare these copies from inside a callback. On a CPU the copies
are small next to the forward pass. Install the frameworks with
``pip install "pixeljax[torch]"`` or ``"pixeljax[onnx]"``.

``load_external`` builds such a predict from command-line style strings (an
ONNX file, or a ``module:function`` torch factory and a weights file).
"""

from collections.abc import Callable
import functools
import hashlib
import importlib
import importlib.util
import numbers
import pathlib
from typing import NamedTuple
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from pixeljax.attack import evaluate


def _require(module: str, extra: str):
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise ImportError(
      f"{module} is needed for this adapter: pip install "
      f'"pixeljax[{extra}]" ({error})'
    ) from error


def _check_batch_size(batch_size):
  if batch_size is None:
    return None
  if (
    isinstance(batch_size, bool)
    or not isinstance(batch_size, numbers.Integral)
    or batch_size < 1
  ):
    raise ValueError(
      f"batch_size must be None or an int >= 1, got {batch_size!r}"
    )
  return int(batch_size)


class ModelError(ValueError):
  """A model refused at the door: on test images, before any search, it
  raised or gave no usable logits.

  The message starts with the argument that names the model (``module`` or
  ``path``) and says what came. ``images`` is the shape [B, H, W, C] of the
  images it failed on; when the model raised, its own exception is the
  ``__cause__``.
  """

  def __init__(self, message: str, images: tuple):
    super().__init__(message)
    self.images = tuple(images)


def _image_shape(images) -> tuple:
  """(H, W, C) of float images [B, H, W, C]; a ValueError otherwise."""
  if images.ndim != 4:
    raise ValueError(
      f"images: expected float [B, H, W, C] pixels 0..255, "
      f"got shape {tuple(images.shape)}"
    )
  return tuple(int(d) for d in images.shape[1:])


def _test_images(count: int, shape) -> np.ndarray:
  """float32 [count, *shape]: fixed pseudo-random pixels 0..255. Not blank:
  a model that divides by the image's spread gives NaN on a blank image."""
  rng = np.random.default_rng(count)
  return rng.integers(0, 256, (count, *shape)).astype(np.float32)


def _callback_predict(
  run,
  *,
  batch_size,
  fixed_batch,
  argument: str,
  model: str,
  check_shape=None,
  single_fallback: bool = False,
  door=None,
):
  """A jittable predict around ``run``, a host function.

  Args:
    run: float32 [b, H, W, C] NumPy pixels -> array-like logits [b, K].
    batch_size: at most this many images per ``run`` call (None: all).
    fixed_batch: the one batch size the model accepts, or None; shorter
      pieces are padded with blank images, whose logits are dropped.
    argument: the argument named in errors about the model's output.
    model: the model as errors name it ("the Net module", a file).
    check_shape: called with each new image shape (H, W, C) before the
      model runs on it: raises if the model cannot take that shape.
    single_fallback: a model that runs 1 image but fails on 2 gets one
      image per call (with a warning) instead of a ``ModelError``.
    door: a dict, or None: receives the model's logits float32 [B, K] on
      the door's test images (``_test_images(B, shape)``, B = 1 and 2),
      keyed (B, H, W, C), for a caller that checks another path against
      them without running the model again.
  """
  step = fixed_batch or batch_size
  classes = {}  # image shape (H, W, C) -> K

  def forward(images):
    """float32 [n, H, W, C] -> float32 [n, K], ``step`` images at a time."""
    outputs, size = [], step or max(len(images), 1)
    for start in range(0, len(images), size):
      piece = images[start : start + size]
      count = len(piece)
      if fixed_batch and count < fixed_batch:
        blank = np.zeros((fixed_batch - count, *piece.shape[1:]), piece.dtype)
        piece = np.concatenate([piece, blank])
      logits = np.asarray(run(piece))
      if logits.ndim != 2 or logits.shape[0] != len(piece):
        raise ModelError(
          f"{argument}: expected logits [B, K] for images of shape "
          f"{piece.shape} (NHWC), got an output of shape {logits.shape}",
          piece.shape,
        )
      if not np.issubdtype(logits.dtype, np.floating):
        raise ModelError(
          f"{argument}: expected floating logits [B, K], got {logits.dtype}",
          piece.shape,
        )
      outputs.append(logits[:count].astype(np.float32))
    return np.concatenate(outputs)

  def checked(count, shape, hint=""):
    """The model's logits [count, K] on test images, or ``ModelError``."""
    images = _test_images(count, shape)
    try:
      logits = forward(images)
    except ModelError:
      raise
    except Exception as error:
      raise ModelError(
        f"{argument}: {model} raised on images [B, H, W, C] = "
        f"{list(images.shape)}: {type(error).__name__}: {error}{hint}",
        images.shape,
      ) from error
    if not np.all(np.isfinite(logits)):
      raise ModelError(
        f"{argument}: {model} gives NaN or inf logits for test images "
        f"[B, H, W, C] = {list(images.shape)}",
        images.shape,
      )
    if door is not None:
      door[images.shape] = logits
    return logits

  def probe(shape):
    """K for images of ``shape``, once the model has run on 1 and 2."""
    nonlocal step
    if check_shape is not None:
      check_shape(shape)
    num_classes = checked(1, shape).shape[1]
    hint = (
      ""
      if single_fallback
      else "; a model that takes one image at a time needs batch_size=1"
    )
    try:
      logits = checked(2, shape, hint)
    except ModelError as error:
      if not single_fallback or step == 1:
        raise
      # Its batch axis is dynamic in name only: run it one image at a time.
      warnings.warn(
        f"{error}; running it on one image per call (slower)", stacklevel=3
      )
      step = 1
      logits = checked(2, shape)
    if logits.shape[1] != num_classes:
      raise ModelError(
        f"{argument}: {model} gives {num_classes} logits per image on 1 "
        f"image, {logits.shape[1]} on 2",
        (2, *shape),
      )
    return num_classes

  def host(images):
    images = np.asarray(images, np.float32)
    flat = images.reshape(-1, *images.shape[-3:])
    return forward(flat).reshape(*images.shape[:-3], -1)

  def predict(images):
    shape = _image_shape(images)
    if shape not in classes:
      classes[shape] = probe(shape)
    out = jax.ShapeDtypeStruct((images.shape[0], classes[shape]), jnp.float32)
    # The model is batched already: under vmap it gets the stacked batches
    # (host() folds every leading axis into one batch).
    return jax.pure_callback(
      host, out, images.astype(jnp.float32), vmap_method="broadcast_all"
    )

  return predict


# How from_torch runs a module: translated to JAX operations (falling back
# to the callback with a warning under "auto"), or through a host callback.
TORCH_BACKENDS = ("auto", "translate", "callback")
# The translation's logits must match the module's to this share of the
# largest |logit| on the door's test images (float rounding is ~1e-6).
TRANSLATION_TOLERANCE = 1e-3


def from_torch(
  module,
  *,
  nchw: bool = False,
  device=None,
  dtype=None,
  batch_size: int | None = None,
  backend: str = "auto",
) -> Callable:
  """A PyTorch module as a pixeljax ``predict``.

  Args:
    module: a ``torch.nn.Module`` in eval mode (every submodule too),
      ``module(x) -> logits [B, K]`` with ``x`` pixels 0..255 as float
      [B, H, W, C], or [B, C, H, W] when ``nchw``. It runs under
      ``torch.no_grad()``.
    nchw: the module takes NCHW images (the PyTorch convention).
    device: where the module runs through the callback (a ``torch.device``
      or a string); default: the device of its first parameter or buffer,
      else the CPU. The translation runs on JAX's devices.
    dtype: the module's input dtype (a floating ``torch.dtype``); default:
      the dtype of its first floating parameter, else float32. Only float32
      modules are translated.
    batch_size: at most this many images per module call (None: each chunk
      of the search in one call).
    backend: "auto" (default): translate the module into JAX operations
      (``pixeljax.torch_translate``) at the first trace for each image
      shape, with its parameters and buffers as read then; where it cannot
      be translated (it does not export, an operator outside the set, a
      dtype other than float32, logits that differ from the module's), run
      it through a host callback, with a warning that says why.
      "translate": the same, but raise ``torch_translate.TranslationError``
      (``UnsupportedOperator`` names the operator and the submodule)
      instead of falling back. "callback": always the host callback.

  Returns:
    ``predict(images float32 [B, H, W, C]) -> logits float32 [B, K]``.

  Raises:
    ValueError: the module or a submodule is in training mode; an unknown
      backend.
    ModelError: (at the first trace for each image shape) the module
      raised, or gave no finite floating logits [B, K], on test images.
    TranslationError: (backend="translate", at the first trace for each
      image shape) the module could not be translated.
  """
  torch = _require("torch", "torch")
  if not isinstance(module, torch.nn.Module):
    raise TypeError(
      f"module must be a torch.nn.Module, got {type(module).__name__}"
    )
  _check_eval(module)
  if not isinstance(nchw, bool):
    raise TypeError(f"nchw must be a bool, got {nchw!r}")
  if backend not in TORCH_BACKENDS:
    raise ValueError(
      f"backend: expected one of {', '.join(TORCH_BACKENDS)}, got {backend!r}"
    )
  tensors = [*module.parameters(), *module.buffers()]
  device = (
    torch.device(device)
    if device is not None
    else (tensors[0].device if tensors else torch.device("cpu"))
  )
  if dtype is None:
    dtype = next(
      (t.dtype for t in tensors if t.is_floating_point()), torch.float32
    )
  if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
    raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")

  def run(images):
    shape = images.shape
    if nchw:
      images = images.transpose(0, 3, 1, 2)
    # A writable, contiguous copy where needed: torch shares its memory.
    images = np.require(images, requirements=["C", "W"])
    with torch.no_grad():
      out = module(torch.from_numpy(images).to(device=device, dtype=dtype))
    if not isinstance(out, torch.Tensor):
      raise ModelError(
        f"module: expected a tensor of logits [B, K], got {type(out).__name__}",
        shape,
      )
    out = out.detach().cpu()
    # Integer logits stay integers, for the dtype check to refuse them.
    return (out.float() if out.is_floating_point() else out).numpy()

  batch_size = _check_batch_size(batch_size)
  door = {}  # (B, H, W, C) -> the module's logits on the door's test images
  callback = _callback_predict(
    run,
    batch_size=batch_size,
    fixed_batch=None,
    argument="module",
    model=f"the {type(module).__name__} module",
    door=None if backend == "callback" else door,
  )
  if backend == "callback":
    return callback
  return _translated_predict(
    module,
    callback,
    door,
    nchw=nchw,
    dtype=dtype,
    batch_size=batch_size,
    strict=backend == "translate",
  )


def _translated_predict(
  module, callback, door, *, nchw, dtype, batch_size, strict
):
  """A predict that runs ``module`` translated into JAX operations, per
  image shape, or ``callback`` where that fails (an error when ``strict``).

  ``door`` receives the module's own logits on the door's test images of 1
  and 2 when ``callback`` first sees an image shape (see
  ``_callback_predict``): the translation must give them, to
  ``TRANSLATION_TOLERANCE``, so the module runs on them once.
  """
  torch = _require("torch", "torch")
  from pixeljax import torch_translate

  forwards = {}  # image shape (H, W, C) -> JAX forward, or None: callback
  name = type(module).__name__

  def translated(shape):
    """The JAX forward for images of ``shape``; TranslationError if none."""
    if dtype != torch.float32:
      raise torch_translate.TranslationError(
        f"the translation runs float32 modules; this one takes {dtype}"
      )
    height, width, channels = shape
    layout = (channels, height, width) if nchw else shape
    translation = torch_translate.translate(module, (2, *layout), dtype)

    def forward(params, images):
      # An NCHW module gets the NHWC images as they are: the translation
      # holds its maps channels-last.
      x = images.astype(jnp.float32)
      return translation.apply(params, x, channels_last=nchw).astype(
        jnp.float32
      )

    for count in (1, 2):
      images = _test_images(count, shape)
      want = door[(count, *shape)]
      # Compiled ahead of time: called under the search's trace, a jitted
      # function would be traced into it instead of run.
      params = translation.params
      compiled = jax.jit(forward).lower(params, images).compile()
      got = np.asarray(compiled(params, images))
      scale = max(float(np.abs(want).max()), 1e-12)
      gap = (
        float(np.abs(got - want).max()) / scale
        if got.shape == want.shape
        else np.inf
      )
      if not gap <= TRANSLATION_TOLERANCE:
        raise torch_translate.TranslationError(
          f"the translation's logits {list(got.shape)} differ from the "
          f"module's {list(want.shape)} by {gap:.3g} of the largest logit "
          f"on test images [B, H, W, C] = {[count, *shape]}"
        )
    return functools.partial(forward, translation.params)

  def prepare(shape):
    # The door: the module itself must run on the test images (ModelError);
    # its logits there land in ``door``.
    jax.eval_shape(callback, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    try:
      return translated(shape)
    except torch_translate.TranslationError as error:
      if strict:
        raise
      warnings.warn(
        f"module: the {name} module runs through a host callback (slower, "
        f"and opaque to incremental evaluation): {error}",
        stacklevel=4,
      )
      return None

  def predict(images):
    shape = _image_shape(images)
    if shape not in forwards:
      forwards[shape] = prepare(shape)
    forward = forwards[shape]
    if forward is None:
      return callback(images)
    if batch_size is None or images.shape[0] <= batch_size:
      return forward(images)
    return evaluate.in_chunks(forward, images, batch_size)

  return predict


def _check_eval(module):
  """ValueError naming the first of ``module`` and its submodules that is in
  training mode: one dropout left on makes every attack result random."""
  for name, sub in module.named_modules():
    if sub.training:
      which = (
        f"its submodule {name!r} ({type(sub).__name__})"
        if name
        else f"the {type(sub).__name__} module"
      )
      raise ValueError(
        f"module: expected a module in eval mode (batch norm on its running "
        f"statistics, dropout off), but {which} is in training mode; call "
        "module.eval() first, which sets every submodule"
      )


_ONNX_DTYPES = {
  "tensor(float)": np.float32,
  "tensor(float16)": np.float16,
  "tensor(double)": np.float64,
  "tensor(uint8)": np.uint8,
}


def _onnx_layout(declared, image_shape, nchw):
  """Whether images [H, W, C] go to a model input declared ``declared``
  (ints or names per axis) as NCHW; ``nchw`` None: as the model declares."""
  height, width, channels = image_shape

  def fits(dims):
    return all(
      not isinstance(d, int) or d == e for d, e in zip(declared[1:], dims)
    )

  as_nhwc, as_nchw = (
    fits((height, width, channels)),
    fits((channels, height, width)),
  )
  if nchw is None:
    if as_nhwc != as_nchw:
      return as_nchw
    fit = "both" if as_nchw else "neither of"
    raise ValueError(
      f"nchw: the model's input {list(declared)} fits {fit} [B, H, W, C] "
      f"and [B, C, H, W] for images [H, W, C] = {list(image_shape)}; pass "
      f"nchw=True or nchw=False"
    )
  if not (as_nchw if nchw else as_nhwc):
    order = "[B, C, H, W]" if nchw else "[B, H, W, C]"
    raise ValueError(
      f"images of shape [H, W, C] = {list(image_shape)} as {order} do not "
      f"fit the model's input {list(declared)} (nchw={nchw})"
    )
  return nchw


def from_onnx(
  path,
  *,
  nchw: bool | None = None,
  providers=None,
  session_options=None,
  batch_size: int | None = None,
) -> Callable:
  """An ONNX model, run by onnxruntime, as a pixeljax ``predict``.

  Args:
    path: the .onnx file. Its one input takes pixels 0..255 (float32,
      float16, float64 or uint8); its first output is logits [B, K].
    nchw: the input is [B, C, H, W]; None: read from the input's declared
      shape (an error when it fits both orders or declares no sizes).
    providers: onnxruntime execution providers; default: every available
      one, in onnxruntime's order of preference.
    session_options: an ``onnxruntime.SessionOptions`` (threads, graph
      optimisation), or None for onnxruntime's defaults.
    batch_size: at most this many images per call (None: each chunk of the
      search in one call). A model whose batch axis is fixed gets exactly
      that many, padded with blank images; one whose batch axis is declared
      dynamic but that fails on 2 images gets one image per call, with a
      warning.

  Returns:
    ``predict(images float32 [B, H, W, C]) -> logits float32 [B, K]``.

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: onnxruntime cannot load the file (not ONNX, empty), or its
      input is not one image tensor of rank 4.
    ModelError: (at the first trace for each image shape) the model failed,
      or gave no finite floating logits [B, K], on a test image.
  """
  ort = _require("onnxruntime", "onnx")
  if nchw is not None and not isinstance(nchw, bool):
    raise TypeError(f"nchw must be None or a bool, got {nchw!r}")
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"path: no such ONNX file: {path}")
  try:
    session = ort.InferenceSession(
      str(path),
      sess_options=session_options,
      providers=providers or ort.get_available_providers(),
    )
  except Exception as error:
    # onnxruntime's own errors (InvalidProtobuf, ...) say the file is bad.
    if not type(error).__module__.startswith("onnxruntime"):
      raise
    raise ValueError(
      f"path: {path} is not an ONNX model that onnxruntime can load: "
      f"{type(error).__name__}: {error}"
    ) from error
  inputs = session.get_inputs()
  if len(inputs) != 1:
    raise ValueError(
      f"path: expected a model with one input (the images), "
      f"{path} has {[i.name for i in inputs]}"
    )
  declared = list(inputs[0].shape)
  if len(declared) != 4 or inputs[0].type not in _ONNX_DTYPES:
    raise ValueError(
      f"path: expected an input of rank 4 of type "
      f"{', '.join(_ONNX_DTYPES)}, {path} declares {inputs[0].type} "
      f"{declared}"
    )
  name, dtype = inputs[0].name, _ONNX_DTYPES[inputs[0].type]
  batch_axis = declared[0]
  fixed = batch_axis if isinstance(batch_axis, int) and batch_axis > 0 else None
  layouts = {}  # image shape -> NCHW or not

  def check_shape(shape):
    layouts[shape] = _onnx_layout(declared, shape, nchw)

  def run(images):
    if layouts[images.shape[1:]]:
      images = images.transpose(0, 3, 1, 2)
    feed = np.ascontiguousarray(images.astype(dtype, copy=False))
    return session.run(None, {name: feed})[0]

  return _callback_predict(
    run,
    batch_size=_check_batch_size(batch_size),
    fixed_batch=fixed,
    argument="path",
    model=str(path),
    check_shape=check_shape,
    single_fallback=fixed is None,
  )


class External(NamedTuple):
  """A model from outside pixeljax, as the command line needs it.

  Attributes:
    predict: float32 [B, H, W, C] pixels 0..255 -> logits float32 [B, K].
    num_classes: K.
    identity: name, architecture and {file name: sha256} of the files read.
  """

  predict: Callable
  num_classes: int
  identity: dict


def _sha256(path: pathlib.Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _factory(spec: str):
  """The callable that ``spec``, "package.module:function" or
  "path/to/file.py:function", names."""
  where, _, function = spec.rpartition(":")
  if not where or not function:
    raise ValueError(
      f"torch_factory: expected 'module:function' or "
      f"'path/to/file.py:function', got {spec!r}"
    )
  if where.endswith(".py"):
    file = pathlib.Path(where)
    if not file.is_file():
      raise FileNotFoundError(f"torch_factory: no such file: {file}")
    loader = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(loader)
    try:
      loader.loader.exec_module(module)
    except SyntaxError as error:
      raise ValueError(
        f"torch_factory: {file}, line {error.lineno}: "
        f"{type(error).__name__}: {error.msg}"
      ) from error
  else:
    module = importlib.import_module(where)
  found = getattr(module, function, None)
  if not callable(found):
    raise ValueError(f"torch_factory: {where} has no function {function!r}")
  return found


def _torch_module(factory: str, weights):
  """The factory's module, with the weights file loaded, in eval mode."""
  torch = _require("torch", "torch")
  module = _factory(factory)()
  if not isinstance(module, torch.nn.Module):
    raise TypeError(
      f"torch_factory: {factory} returned "
      f"{type(module).__name__}, expected a torch.nn.Module"
    )
  if weights is not None:
    if weights.suffix == ".safetensors":
      from safetensors.torch import load_file

      state = load_file(weights)
    else:  # weights_only: loading runs no code from the file
      state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
      module.load_state_dict(state)
    except RuntimeError as error:
      raise ValueError(
        f"weights: {weights} does not fit the module of {factory}: {error}"
      ) from error
  return module.eval()


def load_external(
  *,
  onnx=None,
  torch_factory: str | None = None,
  weights=None,
  nchw: bool | None = None,
  image_shape=(32, 32, 3),
  num_classes: int | None = None,
  batch_size: int | None = None,
  backend: str = "auto",
) -> External:
  """A model named the way a command line names it.

  Args:
    onnx: an .onnx file (see ``from_onnx``); or else
    torch_factory: "package.module:function" or "path/to/file.py:function",
      a function of no arguments that returns the ``torch.nn.Module``;
    weights: with ``torch_factory``, a state dict file (.safetensors, or a
      ``torch.save`` file, read with ``weights_only=True``), loaded strictly.
    nchw: the model takes NCHW images; None: from the ONNX input's declared
      shape, and NHWC for a torch module.
    image_shape: [H, W, C] of the images to attack: K is read at this shape.
    num_classes: the number of classes the images have; an error if the
      model gives another number of logits.
    batch_size: at most this many images per model call.
    backend: with ``torch_factory``, how the module runs (see
      ``from_torch``): translated into JAX by default.

  Returns:
    An ``External``: the predict, K, and an identity for the run settings.
  """
  if (onnx is None) == (torch_factory is None):
    raise ValueError(
      "load_external: pass exactly one of onnx and torch_factory"
    )
  if onnx is not None and weights is not None:
    raise ValueError(
      "weights: only for torch_factory; an ONNX file holds its weights"
    )
  files = []
  if onnx is not None:
    files.append(pathlib.Path(onnx))
    predict = from_onnx(onnx, nchw=nchw, batch_size=batch_size)
    identity = dict(name=files[0].stem, architecture="onnx")
  else:
    if weights is not None:
      weights = pathlib.Path(weights)
      if not weights.is_file():
        raise FileNotFoundError(f"weights: no such file: {weights}")
      files.append(weights)
    module = _torch_module(torch_factory, weights)
    predict = from_torch(
      module, nchw=bool(nchw), batch_size=batch_size, backend=backend
    )
    identity = dict(
      name=torch_factory.rpartition(":")[2],
      architecture=f"torch:{torch_factory}",
    )
  probe = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  classes = int(jax.eval_shape(predict, probe).shape[1])
  if num_classes is not None and classes != num_classes:
    raise ValueError(
      f"num_classes: the model gives {classes} logits for "
      f"images [H, W, C] = {list(image_shape)}, but there are "
      f"{num_classes} classes"
    )
  identity["files"] = {f.name: _sha256(f) for f in files}
  return External(predict, classes, identity)
