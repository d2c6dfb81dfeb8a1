"""Engine efficiency for each common way of writing a model: the model zoo.

For every entry: plain ``jax.jit(predict)`` images/s and attack evaluations/s
(early stop off) at the same chunk on the same device, timed in alternation
in one run (``throughput.measure_efficiency``); their ratio is the engine's
efficiency, 1.0 when the attack costs exactly its forward passes. Each entry
is also set against its native speed: the model's forward pass in its own
framework at the same batch (a JAX model: ``jax.jit(predict)``; the torch
module in PyTorch; the ONNX file in onnxruntime), timed right before and
after, so an adapter is compared with the module it wraps, not with itself.
Entries:
  * Flax NNX: pixeljax's SmallCNN and AllConv from the registry;
  * Flax linen, plain ``lax`` with HWIO kernels, with PyTorch's OIHW kernels,
    an NCHW model that transposes inside, and Equinox (vmapped over the
    batch): one CIFAR-10 CNN (4 3x3 convolutions with ReLU, 2 max-pools, 2
    dense layers), skipped cleanly where the framework is not installed;
  * the PyTorch rebuild of SmallCNN through ``adapters.from_torch``
    (translated into JAX, the default, and through the host callback) and
    its ONNX export through ``adapters.from_onnx``;
  * the OIHW model once more with the engine's convolution canonicalisation
    switched off (``canonical.for_loops``): the engine as it was before.

Random weights throughout: efficiency does not depend on them.

Run from the repository root:
  python -m benchmarks.models          # about 4 minutes on 2 idle CPU cores
  python -m benchmarks.models --only lax-oihw,torch --repeats 5
Writes benchmarks/results/models_<platform>.{json,md}.
"""

import argparse
import contextlib
import os
import tempfile
from unittest import mock
import warnings

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import throughput
from pixeljax import adapters
from pixeljax import models
from pixeljax.attack import canonical
from pixeljax.huge_pages import restart_with_huge_pages

# The shared CNN: (in, out) channels of each 3x3 convolution, a 2x2 max-pool
# after the 2nd and 4th, then dense 8 * 8 * 64 -> 256 -> 10.
_CONVS = ((3, 32), (32, 32), (32, 64), (64, 64))
_HIDDEN = 256


class Skip(Exception):
  """An entry whose framework is not installed."""


def _weights(seed: int = 0):
  """The shared CNN's weights, PyTorch layouts: conv kernels [O, I, 3, 3]
  and dense [out, in], float32 NumPy."""
  rng = np.random.default_rng(seed)
  convs = [rng.normal(0, np.sqrt(2 / (9 * i)), (o, i, 3, 3)) for i, o in _CONVS]
  dense = [
    rng.normal(0, np.sqrt(2 / n), (m, n))
    for n, m in ((8 * 8 * 64, _HIDDEN), (_HIDDEN, 10))
  ]
  return (
    [w.astype(np.float32) for w in convs],
    [w.astype(np.float32) for w in dense],
  )


def _count(arrays) -> int:
  return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(arrays)))


def _torch_native(torch, module):
  """``native(images float32 [B, H, W, C]) -> run()``: the NCHW module's
  forward pass in PyTorch on those images (transposed once, beforehand)."""

  def native(images):
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    def run():
      with torch.no_grad():
        module(x)

    return run

  return native


def lax_cnn(layout: str):
  """The shared CNN in plain lax, NHWC, kernels stored ``layout``."""
  convs, dense = _weights()
  if layout == "HWIO":
    convs = [w.transpose(2, 3, 1, 0) for w in convs]
  convs = [jnp.asarray(w) for w in convs]
  dense = [jnp.asarray(w.T) for w in dense]  # [in, out]

  def predict(images):
    x = (images - 127.5) / 64.0
    for i, w in enumerate(convs):
      x = jax.nn.relu(
        lax.conv_general_dilated(
          x, w, (1, 1), "SAME", dimension_numbers=("NHWC", layout, "NHWC")
        )
      )
      if i % 2:
        b, h, w_, c = x.shape
        x = x.reshape(b, h // 2, 2, w_ // 2, 2, c).max(axis=(2, 4))
    x = jax.nn.relu(x.reshape(x.shape[0], -1) @ dense[0])
    return x @ dense[1]

  return predict, _count(convs + dense), None


def nchw_cnn():
  """The shared CNN written the PyTorch way: NCHW activations (the images
  transposed on entry), OIHW kernels, dense weights [out, in]."""
  convs, dense = _weights()
  convs, dense = (
    [jnp.asarray(w) for w in convs],
    [jnp.asarray(w) for w in dense],
  )

  def predict(images):
    x = ((images - 127.5) / 64.0).transpose(0, 3, 1, 2)
    for i, w in enumerate(convs):
      x = jax.nn.relu(lax.conv_general_dilated(x, w, (1, 1), "SAME"))
      if i % 2:
        b, c, h, w_ = x.shape
        x = x.reshape(b, c, h // 2, 2, w_ // 2, 2).max(axis=(3, 5))
    # Flatten in NHWC order, as the other entries' dense layer expects.
    x = x.transpose(0, 2, 3, 1).reshape(x.shape[0], -1)
    return jax.nn.relu(x @ dense[0].T) @ dense[1].T

  return predict, _count(convs + dense), None


def linen_cnn():
  """The shared CNN as a Flax linen module (its own initialisation)."""
  try:
    from flax import linen
  except ImportError as error:
    raise Skip(f"flax.linen: {error}") from None

  class CNN(linen.Module):
    @linen.compact
    def __call__(self, x):
      x = (x - 127.5) / 64.0
      for i, (_, width) in enumerate(_CONVS):
        x = linen.relu(linen.Conv(width, (3, 3))(x))
        if i % 2:
          x = linen.max_pool(x, (2, 2), (2, 2))
      x = linen.relu(linen.Dense(_HIDDEN)(x.reshape(x.shape[0], -1)))
      return linen.Dense(10)(x)

  module = CNN()
  params = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  return lambda images: module.apply(params, images), _count(params), None


def equinox_cnn():
  """The shared CNN in Equinox: per-image NCHW modules, vmapped."""
  try:
    import equinox as eqx
  except ImportError as error:
    raise Skip(f"equinox: {error}") from None
  keys = iter(jax.random.split(jax.random.key(0), 8))
  convs = [eqx.nn.Conv2d(i, o, 3, padding=1, key=next(keys)) for i, o in _CONVS]
  pool = eqx.nn.MaxPool2d(2, 2)
  dense = [
    eqx.nn.Linear(8 * 8 * 64, _HIDDEN, key=next(keys)),
    eqx.nn.Linear(_HIDDEN, 10, key=next(keys)),
  ]

  def one(image):  # [H, W, C] -> [10]
    x = ((image - 127.5) / 64.0).transpose(2, 0, 1)
    for i, conv in enumerate(convs):
      x = jax.nn.relu(conv(x))
      if i % 2:
        x = pool(x)
    return dense[1](jax.nn.relu(dense[0](x.reshape(-1))))

  params = _count(eqx.filter((convs, dense), eqx.is_array))
  return jax.vmap(one), params, None


def nnx_registry(name: str):
  """pixeljax's own Flax NNX model ``name``, random weights."""
  model = models.create_model(name, rngs=nnx.Rngs(0))
  return models.make_predict(model), models.param_count(model), None


def _torch_smallcnn():
  """The registry SmallCNN (random weights) rebuilt in PyTorch, NCHW."""
  try:
    import torch

    from benchmarks import torch_victims
  except ImportError as error:
    raise Skip(f"torch: {error}") from None
  model = models.create_model("smallcnn", rngs=nnx.Rngs(0))
  torch.manual_seed(0)
  return torch, torch_victims.to_torch(model), models.param_count(model)


def torch_adapter(backend: str = "translate"):
  """SmallCNN's PyTorch rebuild through ``adapters.from_torch``: translated
  into JAX operations, or through the host callback."""
  torch, module, params = _torch_smallcnn()
  predict = adapters.from_torch(module, nchw=True, backend=backend)
  return predict, params, _torch_native(torch, module)


def onnx_adapter(folder: str):
  """SmallCNN's PyTorch rebuild exported to ONNX, through
  ``adapters.from_onnx`` (onnxruntime)."""
  try:
    import onnxruntime
  except ImportError as error:
    raise Skip(f"onnxruntime: {error}") from None
  torch, module, params = _torch_smallcnn()
  path = f"{folder}/smallcnn.onnx"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    # The TorchScript exporter: no onnxscript needed, and it takes a second.
    torch.onnx.export(
      module,
      (torch.zeros(1, 3, 32, 32),),
      path,
      dynamo=False,
      input_names=["pixels"],
      dynamic_axes={"pixels": {0: "batch"}},
    )
  session = onnxruntime.InferenceSession(
    path, providers=onnxruntime.get_available_providers()
  )

  def native(images):
    feed = {"pixels": np.ascontiguousarray(images.transpose(0, 3, 1, 2))}
    return lambda: session.run(None, feed)

  return adapters.from_onnx(path), params, native


# key, framework, how the model is written, builder(folder) -> (predict,
# parameter count, native): native(images float32 [B, H, W, C]) gives a
# blocking call of the model's forward pass in its own framework, or is None
# for a JAX model (its native speed is jax.jit(predict)'s).
ZOO = (
  (
    "nnx-smallcnn",
    "Flax NNX",
    "pixeljax SmallCNN (registry)",
    lambda _: nnx_registry("smallcnn"),
  ),
  (
    "nnx-allconv",
    "Flax NNX",
    "pixeljax AllConv (registry)",
    lambda _: nnx_registry("allconv"),
  ),
  (
    "linen",
    "Flax linen",
    "shared CNN, nn.Conv (NHWC, HWIO)",
    lambda _: linen_cnn(),
  ),
  (
    "lax-hwio",
    "plain lax",
    "shared CNN, NHWC, HWIO kernels",
    lambda _: lax_cnn("HWIO"),
  ),
  (
    "lax-oihw",
    "plain lax",
    "shared CNN, NHWC, OIHW kernels (PyTorch's)",
    lambda _: lax_cnn("OIHW"),
  ),
  (
    "nchw",
    "plain lax",
    "shared CNN, NCHW inside, OIHW, dense [out, in]",
    lambda _: nchw_cnn(),
  ),
  (
    "equinox",
    "Equinox",
    "shared CNN, eqx.nn per image (NCHW), vmapped",
    lambda _: equinox_cnn(),
  ),
  (
    "torch",
    "PyTorch",
    "SmallCNN rebuild, adapters.from_torch (translated)",
    lambda _: torch_adapter(),
  ),
  (
    "torch-callback",
    "PyTorch",
    "SmallCNN rebuild, adapters.from_torch(backend='callback')",
    lambda _: torch_adapter("callback"),
  ),
  (
    "onnx",
    "ONNX",
    "SmallCNN export, adapters.from_onnx (onnxruntime)",
    onnx_adapter,
  ),
  (
    "lax-oihw-unfixed",
    "plain lax",
    "OIHW kernels, engine without canonical.for_loops (before the fix)",
    lambda _: lax_cnn("OIHW"),
  ),
)


def _versions() -> dict:
  """Versions of the optional frameworks that are installed."""
  found = {}
  for name in ("torch", "onnxruntime", "equinox"):
    try:
      found[name] = __import__(name).__version__
    except ImportError:
      pass
  return found


def _native_times(run, args, repeats: int, warmup: bool = False) -> list:
  """Seconds per call of the blocking ``run()``, ``repeats`` medians over
  as many calls as one of ``measure_efficiency``'s attacks evaluates."""
  images = max(1, 2 * args.batch // args.popsize)
  calls = max(1, images * args.popsize * (args.generations + 1) // args.batch)
  return [
    common.time_call(run, min_seconds=0, min_repeats=calls, warmup=warmup)
    for _ in range(repeats)
  ]


def measure(key, builder, folder, args) -> dict:
  """One entry's row: rates and efficiency, or why it was skipped."""
  try:
    predict, params, native = builder(folder)
  except Skip as skip:
    print(f"  {key}: skipped ({skip})")
    return {"skipped": str(skip)}
  repeats, switch = args.repeats, contextlib.nullcontext()
  if key.endswith("-unfixed"):
    # 25x slower: one alternating pair of timings is enough to show it.
    repeats = 1
    switch = mock.patch.object(canonical, "for_loops", lambda p: p)
  if native is not None:
    images = throughput.random_images(args.batch, 0).astype(np.float32)
    run_native = native(images)
    native_times = _native_times(run_native, args, repeats, warmup=True)
  with switch:
    predict_rate, attack_rate, count, evaluations = (
      throughput.measure_efficiency(
        predict, args.batch, args.popsize, args.generations, repeats
      )
    )
  if native is None:
    native_rate = predict_rate
  else:
    native_times += _native_times(run_native, args, repeats)
    native_rate = args.batch / float(np.median(native_times))
  row = {
    "parameters": params,
    "predict_images_per_second": predict_rate,
    "attack_evaluations_per_second": attack_rate,
    "efficiency": attack_rate / predict_rate,
    "native_images_per_second": native_rate,
    "of_native": attack_rate / native_rate,
    "images": count,
    "evaluations": evaluations,
    "repeats": repeats,
  }
  print(
    f"  {key}: predict {predict_rate:.0f} images/s, attack "
    f"{attack_rate:.0f} evaluations/s: efficiency {row['efficiency']:.2f}, "
    f"{row['of_native']:.2f} of native ({native_rate:.0f} images/s)"
  )
  return row


def _markdown(payload) -> str:
  stamp, settings = payload["stamp"], payload["settings"]
  generations = settings["generations"]
  versions = "".join(
    f", {name} {version}" for name, version in payload["versions"].items()
  )
  rows = []
  for entry in payload["entries"]:
    if "skipped" in entry:
      rows.append(
        [
          entry["framework"],
          entry["written"],
          "",
          "",
          "",
          "",
          "",
          f"skipped: {entry['skipped']}",
        ]
      )
      continue
    rows.append(
      [
        entry["framework"],
        entry["written"],
        f"{entry['parameters']:,}",
        f"{entry['predict_images_per_second']:.0f}",
        f"{entry['attack_evaluations_per_second']:.0f}",
        f"**{entry['efficiency']:.2f}**",
        f"{entry['native_images_per_second']:.0f}",
        f"**{entry['of_native']:.2f}**",
      ]
    )
  return (
    f"# Engine efficiency by model style, {stamp['device']} "
    f"({stamp['platform']}), {stamp['date']}\n\n"
    f"jax {stamp['jax']}, flax {stamp['flax']}{versions}, "
    f"{stamp['cpu_count']} CPU cores, load average "
    f"{settings['load_average']['start']:.1f} at the start and "
    f"{settings['load_average']['end']:.1f} at the end. Chunk of "
    f"{settings['batch']} "
    f"candidates, popsize {settings['popsize']}, {generations} "
    f"generation{'s' if generations != 1 else ''} after the initial "
    "population, early stop off; plain `jax.jit(predict)` and the attack "
    f"timed in alternation, medians of {settings['repeats']}. Random "
    "weights. Efficiency = attack evaluations/s / predict images/s (1.0: "
    "the attack costs exactly its forward passes). Native images/s: the "
    "model's forward pass in its own framework at the same batch (PyTorch "
    "for the torch module, onnxruntime for the ONNX file, `jax.jit` for a "
    "JAX model), timed just before and after its attack; attack / native "
    "is what a user of that framework gets inside the attack. Rates differ "
    "between rows by design (different networks) and move with the load "
    "of a shared machine; compare each row's own ratios.\n\n"
    + common.markdown_table(
      [
        "framework",
        "model",
        "parameters",
        "predict images/s",
        "attack evaluations/s",
        "efficiency",
        "native images/s",
        "attack / native",
      ],
      rows,
    )
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--batch",
    type=int,
    default=400,
    help="candidates per model call (default 400)",
  )
  parser.add_argument("--popsize", type=int, default=200)
  parser.add_argument("--generations", type=int, default=1)
  parser.add_argument(
    "--repeats",
    type=int,
    default=3,
    help="alternating timings of predict and attack",
  )
  parser.add_argument(
    "--only",
    default="",
    help="comma-separated entry keys (default: all): "
    + ", ".join(key for key, *_ in ZOO),
  )
  parser.add_argument(
    "--name", default=None, help="results file stem (default models_<platform>)"
  )
  args = parser.parse_args(argv)
  keys = [k for k in args.only.split(",") if k]
  unknown = set(keys) - {key for key, *_ in ZOO}
  if unknown:
    parser.error(f"--only: unknown entries {sorted(unknown)}")
  print(f"Model zoo on {jax.devices()[0].device_kind}")
  load_before = os.getloadavg()[0]
  entries = []
  with tempfile.TemporaryDirectory() as folder:
    for key, framework, written, builder in ZOO:
      if keys and key not in keys:
        continue
      entries.append(
        dict(
          key=key,
          framework=framework,
          written=written,
          **measure(key, builder, folder, args),
        )
      )
  payload = {
    "stamp": common.stamp(),
    "versions": _versions(),
    "settings": {
      "batch": args.batch,
      "popsize": args.popsize,
      "generations": args.generations,
      "repeats": args.repeats,
      "pixels": 1,
      "weights": "random",
      # Above the core count, other work shared the CPU with this run.
      "load_average": {"start": load_before, "end": os.getloadavg()[0]},
    },
    "entries": entries,
  }
  name = args.name or f"models_{payload['stamp']['platform']}"
  paths = common.write_results(name, payload, _markdown(payload))
  print("wrote " + ", ".join(paths))


if __name__ == "__main__":
  restart_with_huge_pages()  # as the `pixeljax` program runs
  main()
