"""CIFAR-10 and image-folder loading.

`load_cifar10(split)` tries these sources, in this order, and returns the first
that has the data:

1. `source=` if given, else the `PIXELJAX_DATA` environment variable: a path to
   - an image-folder tree `{train,test}/<class>/*.png|jpg` (or a folder holding
     exactly one such tree, like `cifar10-jpeg/`), or a .tar.gz/.tgz/.tar of it;
   - the original CIFAR-10 python archive `cifar-10-python.tar.gz`, or the
     folder it extracts to (`data_batch_1..5`, `test_batch`, `batches.meta`).
2. tensorflow-datasets, when installed and the `cifar10` data set is prepared.
3. The original archive from its home page, downloaded into the cache folder
   and checked against its published md5 (skipped with `download=False`).

Decoded arrays of sources 1 and 3 are cached as uncompressed .npz files in
`PIXELJAX_CACHE` (default `~/.cache/pixeljax`), keyed by the source's path, size
and modification time, so a second load takes a fraction of a second. A cache
file that cannot be read (truncated, damaged) is decoded again and rewritten; a
cache that cannot be written is skipped with a warning.

A source that does not exist is noted and the next is tried; when none has the
data, one `DataNotFoundError` lists each source and why it failed. A source
that exists but is damaged (truncated archive, unreadable image) raises
`DataCorruptError` naming the file, rather than silently falling back.
"""

from __future__ import annotations

from collections.abc import Sequence
import concurrent.futures
import hashlib
import io
import os
import pathlib
import pickle
import tarfile
from typing import NamedTuple
import urllib.request
import warnings
import zipfile
import zlib

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from pixeljax.files import write_atomic

CIFAR10_CLASSES = (
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Larger images are refused from their header, before any pixel is decoded: a
# decompression bomb (a small file claiming a huge size) never gets its memory.
MAX_IMAGE_PIXELS = 8192 * 8192
_PY_BATCHES = {
  "train": [f"data_batch_{i}" for i in range(1, 6)],
  "test": ["test_batch"],
}
_HOW_TO = (
  "To provide CIFAR-10, do one of:\n"
  "  - set PIXELJAX_DATA (or pass source=) to an image-folder tree "
  "{train,test}/<class>/*.png|jpg, a .tar.gz of one, or the original "
  "cifar-10-python.tar.gz (or its extracted folder);\n"
  "  - pip install tensorflow-datasets and prepare 'cifar10';\n"
  f"  - allow a download of {CIFAR10_URL}.\n"
  "For a few hundred packaged test images, use "
  "pixeljax.data.load_cifar10_sample()."
)


class DataNotFoundError(FileNotFoundError):
  """No source had the requested data; the message lists each one tried."""


class DataCorruptError(ValueError):
  """A source exists but cannot be read; the message names the file."""


class Dataset(NamedTuple):
  """images uint8 [N, H, W, 3]; labels int64 [N]; class_names tuple of K str."""

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]


class ImageFolder(NamedTuple):
  """`Dataset` plus `paths`: the file each image came from (list of N str),
  and `skipped`: the (file, reason) pairs of unreadable images left out, if
  asked."""

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  paths: list[str]
  skipped: tuple[tuple[str, str], ...] = ()


class _Missing(Exception):
  """Internal: this source does not have the data; try the next one."""


# ----------------------------------------------------------------------------
# Public entry points


def load_cifar10(
  split: str, *, source: str | os.PathLike | None = None, download: bool = True
) -> Dataset:
  """Loads a CIFAR-10 split from the first source that has it (see module doc).

  Args:
    split: "train" (50,000 images) or "test" (10,000 images).
    source: a path that overrides `PIXELJAX_DATA`.
    download: whether the last resort may fetch the original archive.

  Returns:
    `Dataset(images uint8 [N,32,32,3], labels int64 [N], class_names)`.

  Raises:
    DataNotFoundError: no source had the data (lists what was tried and why).
    DataCorruptError: a source exists but is damaged.
  """
  if split not in SPLITS:
    raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
  tried = []
  path = source if source is not None else os.environ.get("PIXELJAX_DATA")
  label = "source= argument" if source is not None else "PIXELJAX_DATA"
  if path:
    try:
      return _load_path_cached(pathlib.Path(path).expanduser(), split)
    except _Missing as e:
      tried.append(f"{label} ({path}): {e}")
  else:
    tried.append(f"{label}: not set")
  try:
    return _load_tfds(split)
  except _Missing as e:
    tried.append(f"tensorflow-datasets: {e}")
  if download:
    try:
      return _load_path_cached(_download_original(), split)
    except _Missing as e:
      tried.append(f"download ({CIFAR10_URL}): {e}")
  else:
    tried.append("download: disabled (download=False)")
  lines = "\n".join(f"  {i}. {t}" for i, t in enumerate(tried, 1))
  raise DataNotFoundError(
    f"CIFAR-10 {split!r} split not found. Sources tried, in "
    f"order:\n{lines}\n{_HOW_TO}"
  )


def load_cifar10_sample() -> ImageFolder:
  """The packaged sample of 300 CIFAR-10 test images (30 of each class).

  See `pixeljax/samples/README.md` for where they came from.

  Returns:
    `ImageFolder(images uint8 [300,32,32,3], labels int64 [300], class_names,
    paths)`, paths naming each image's file in the source data set.
  """
  from importlib import resources

  ref = resources.files("pixeljax") / "samples" / "cifar10_test_sample.npz"
  with ref.open("rb") as f, np.load(f) as z:
    return ImageFolder(
      z["images"],
      z["labels"].astype(np.int64),
      tuple(str(c) for c in z["class_names"]),
      [str(p) for p in z["paths"]],
    )


def load_image_folder(
  path: str | os.PathLike,
  *,
  size: tuple[int, int] | None = None,
  class_names: Sequence[str] | None = None,
  skip_bad: bool = False,
) -> ImageFolder:
  """Reads `path/<class>/*.png|jpg|jpeg` into arrays, for attacking your own
  pictures.

  An image is bad when it cannot be read or decoded, or when its header claims
  more than `MAX_IMAGE_PIXELS` (8192 x 8192) pixels, or Pillow's
  `Image.MAX_IMAGE_PIXELS` if lower: such an image (possibly a decompression
  bomb) is refused before its pixels are decoded.

  Args:
    path: a folder with one sub-folder per class.
    size: (height, width) to resize every image to (bilinear); None keeps
      the sizes, which must then all be equal.
    class_names: the label order; default: the canonical CIFAR-10 order if the
      sub-folders are exactly those ten classes, else the sorted folder names.
    skip_bad: leave bad images out (listed in `skipped`) instead of raising.

  Returns:
    `ImageFolder(images uint8 [N,H,W,3], labels int64 [N], class_names, paths,
    skipped)`, sorted by class then file name; grey or RGBA pictures are
    converted to RGB. `skipped`: (file, reason) of each bad image left out.

  Raises:
    DataCorruptError: a bad image (naming it), unless `skip_bad`; with
      `skip_bad`, when every image is bad.
  """
  root = pathlib.Path(path)
  if not root.is_dir():
    raise FileNotFoundError(
      f"path: expected an image folder, {root} is not a directory"
    )
  classes = _class_order(
    [d.name for d in root.iterdir() if d.is_dir()], class_names
  )
  items = []
  for label, name in enumerate(classes):
    folder = root / name
    if not folder.is_dir():
      raise ValueError(f"class_names: {name!r} has no folder in {root}")
    files = sorted(
      f
      for f in folder.iterdir()
      if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
    )
    items += [(str(f), label) for f in files]
  if not items:
    raise FileNotFoundError(
      f"path: no {'/'.join(IMAGE_SUFFIXES)} images under {root}/<class>/"
    )
  images, skipped = _decode_all(
    [(p, lambda p=p: pathlib.Path(p).read_bytes()) for p, _ in items],
    size,
    skip_bad=skip_bad,
  )
  if skipped:
    left_out = {i for i, _ in skipped}
    items = [it for i, it in enumerate(items) if i not in left_out]
  labels = np.array([lab for _, lab in items], np.int64)
  return ImageFolder(
    images,
    labels,
    classes,
    [p for p, _ in items],
    tuple((name, reason) for _, (name, reason) in skipped),
  )


# ----------------------------------------------------------------------------
# Path sources (folder, image tar, CIFAR python archive) and their cache


def _load_path_cached(path: pathlib.Path, split: str) -> Dataset:
  if not path.exists():
    raise _Missing(f"{path} does not exist")
  cache = _cache_file(path, split)
  if cache.exists():
    try:
      return _read_cache(cache)
    except (
      OSError,
      ValueError,
      KeyError,
      EOFError,
      zipfile.BadZipFile,
      zlib.error,
    ):
      pass  # truncated, damaged or unreadable: decoded and rewritten below
  data = _load_path(path, split)
  try:
    cache.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: a concurrent reader never sees half a file.
    write_atomic(
      cache,
      lambda f: np.savez(
        f,
        images=data.images,
        labels=data.labels,
        class_names=np.array(data.class_names),
      ),
    )
  except (
    OSError
  ) as e:  # the cache only saves time: a full or read-only disk costs no data
    warnings.warn(
      f"cannot write the data cache {cache}: {e}; set PIXELJAX_CACHE to a "
      "writable folder to skip decoding next time",
      RuntimeWarning,
      stacklevel=3,
    )
  return data


def _read_cache(cache: pathlib.Path) -> Dataset:
  """The arrays of a cache file; raises on a damaged or inconsistent one."""
  with np.load(cache) as z:
    data = Dataset(
      z["images"], z["labels"], tuple(str(c) for c in z["class_names"])
    )
  if (
    data.images.dtype != np.uint8
    or data.images.ndim != 4
    or data.labels.ndim != 1
    or len(data.labels) != len(data.images)
  ):
    raise ValueError(f"{cache}: unexpected arrays")
  return data


def cache_dir() -> pathlib.Path:
  """The folder for decoded arrays and downloads: `PIXELJAX_CACHE` or
  ~/.cache/pixeljax."""
  return pathlib.Path(
    os.environ.get("PIXELJAX_CACHE") or "~/.cache/pixeljax"
  ).expanduser()


def _cache_file(path: pathlib.Path, split: str) -> pathlib.Path:
  path = path.resolve()
  if path.is_dir():
    # A folder's own mtime changes when entries are added or removed; its
    # split and class folders' mtimes catch changes one and two levels down.
    stats = [path.stat()] + [p.stat() for p in sorted(path.glob("*/"))]
    stats += [p.stat() for p in sorted(path.glob(f"*/{split}/*/"))]
    stats += [p.stat() for p in sorted(path.glob(f"{split}/*/"))]
    ident = [(s.st_size, s.st_mtime_ns) for s in stats]
  else:
    s = path.stat()
    ident = [(s.st_size, s.st_mtime_ns)]
  key = hashlib.sha256(repr((str(path), ident)).encode()).hexdigest()[:16]
  return cache_dir() / f"cifar10-{split}-{key}.npz"


def _load_path(path: pathlib.Path, split: str) -> Dataset:
  if path.is_dir():
    return _load_dir(path, split)
  name = path.name.lower()
  if not name.endswith((".tar.gz", ".tgz", ".tar")):
    raise _Missing(
      f"{path} is neither a folder nor a .tar.gz/.tgz/.tar archive"
    )
  try:
    with tarfile.open(path, "r:*") as tar:
      first = next((m.name for m in tar if m.isfile()), "")
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise DataCorruptError(f"cannot read archive {path}: {e}") from e
  if "cifar-10-batches-py" in first:
    return _load_python_tar(path, split)
  return _load_image_tar(path, split)


def _load_dir(path: pathlib.Path, split: str) -> Dataset:
  for root in (path, path / "cifar-10-batches-py"):
    if (root / "batches.meta").is_file():
      return _load_python_dir(root, split)
  candidates = [path] + sorted(d for d in path.iterdir() if d.is_dir())
  for root in candidates:
    if (root / split).is_dir():
      data = load_image_folder(root / split)
      _check_cifar_shape(data.images, root / split)
      return Dataset(data.images, data.labels, data.class_names)
  raise _Missing(
    f"{path} has no {split}/<class>/ image folder and no CIFAR-10 python "
    "batches"
  )


def _load_image_tar(path: pathlib.Path, split: str) -> Dataset:
  """Reads members `[prefix/]split/<class>/<file>.png|jpg` of an image tar."""
  members = []  # (member name, class folder, bytes)
  try:
    with tarfile.open(path, "r:*") as tar:
      for m in tar:
        parts = m.name.split("/")
        if (
          m.isfile()
          and len(parts) >= 3
          and parts[-3] == split
          and parts[-1].lower().endswith(IMAGE_SUFFIXES)
        ):
          members.append((m.name, parts[-2], tar.extractfile(m).read()))
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise DataCorruptError(f"cannot read archive {path}: {e}") from e
  if not members:
    raise _Missing(f"{path} holds no {split}/<class>/*.png|jpg images")
  classes = _class_order(sorted({c for _, c, _ in members}), None)
  index = {c: i for i, c in enumerate(classes)}
  members.sort(key=lambda t: (index[t[1]], t[0]))
  images, _ = _decode_all(
    [(f"{path}:{n}", lambda b=b: b) for n, _, b in members], None
  )
  _check_cifar_shape(images, path)
  labels = np.array([index[c] for _, c, _ in members], np.int64)
  return Dataset(images, labels, classes)


class _BatchUnpickler(pickle.Unpickler):
  """Unpickles CIFAR-10 batches, refusing any class but numpy's array parts."""

  _ALLOWED = {
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
  }

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    return super().find_class(module, name)


def _read_batch(raw: bytes, where: str) -> dict:
  try:
    return _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
  except Exception as e:  # pickle raises many types on damaged input
    raise DataCorruptError(f"cannot read CIFAR-10 batch {where}: {e}") from e


def _python_batches(files: dict[str, bytes], split: str, where: str) -> Dataset:
  images, labels = [], []
  for name in _PY_BATCHES[split]:
    if name not in files:
      raise _Missing(f"{where} lacks {name}")
    batch = _read_batch(files[name], f"{where}/{name}")
    try:
      data = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
      labels.append(np.asarray(batch[b"labels"], np.int64))
    except (KeyError, ValueError) as e:
      raise DataCorruptError(
        f"CIFAR-10 batch {where}/{name} is malformed: {e}"
      ) from e
    images.append(data.transpose(0, 2, 3, 1))  # stored as [N, C, H, W]
  names = CIFAR10_CLASSES
  if "batches.meta" in files:
    meta = _read_batch(files["batches.meta"], f"{where}/batches.meta")
    names = tuple(n.decode() for n in meta.get(b"label_names", [])) or names
  return Dataset(
    np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), names
  )


def _load_python_dir(root: pathlib.Path, split: str) -> Dataset:
  wanted = _PY_BATCHES[split] + ["batches.meta"]
  files = {n: (root / n).read_bytes() for n in wanted if (root / n).is_file()}
  return _python_batches(files, split, str(root))


def _load_python_tar(path: pathlib.Path, split: str) -> Dataset:
  wanted = set(_PY_BATCHES[split] + ["batches.meta"])
  files = {}
  try:
    with tarfile.open(path, "r:*") as tar:
      for m in tar:
        base = m.name.rsplit("/", 1)[-1]
        if m.isfile() and base in wanted:
          files[base] = tar.extractfile(m).read()
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise DataCorruptError(f"cannot read archive {path}: {e}") from e
  return _python_batches(files, split, str(path))


# ----------------------------------------------------------------------------
# tensorflow-datasets and download


def _load_tfds(split: str) -> Dataset:
  try:
    import tensorflow_datasets as tfds  # optional, heavy: import only here
  except ImportError:
    raise _Missing("not installed (pip install tensorflow-datasets)") from None
  try:
    ds = tfds.load(
      "cifar10", split=split, batch_size=-1, download=False, as_supervised=True
    )
    images, labels = tfds.as_numpy(ds)
  except (
    Exception
  ) as e:  # tfds raises assorted errors when the data is not prepared
    raise _Missing(f"cifar10 not prepared ({type(e).__name__}: {e})") from None
  return Dataset(
    np.asarray(images, np.uint8), np.asarray(labels, np.int64), CIFAR10_CLASSES
  )


def _md5(path: pathlib.Path) -> str:
  h = hashlib.md5()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _download_original() -> pathlib.Path:
  """The verified original archive in the cache, fetched if absent."""
  target = cache_dir() / "cifar-10-python.tar.gz"
  if target.exists() and _md5(target) == CIFAR10_MD5:
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  part = target.with_suffix(f".{os.getpid()}.part")
  try:
    with (
      urllib.request.urlopen(CIFAR10_URL, timeout=30) as r,
      open(part, "wb") as f,
    ):
      while block := r.read(1 << 20):
        f.write(block)
      f.flush()
      os.fsync(f.fileno())
  except (
    OSError
  ) as e:  # URLError, timeouts and refused connections are OSErrors
    part.unlink(missing_ok=True)
    raise _Missing(f"download failed ({e})") from None
  if (digest := _md5(part)) != CIFAR10_MD5:
    part.unlink()
    raise _Missing(f"downloaded file has md5 {digest}, expected {CIFAR10_MD5}")
  os.replace(part, target)
  return target


# ----------------------------------------------------------------------------
# Decoding helpers


def _class_order(
  found: Sequence[str], given: Sequence[str] | None
) -> tuple[str, ...]:
  if given is not None:
    return tuple(given)
  if set(found) == set(CIFAR10_CLASSES) and len(found) == len(CIFAR10_CLASSES):
    return CIFAR10_CLASSES
  return tuple(sorted(found))


def _decode_one(read, size: tuple[int, int] | None) -> np.ndarray | str:
  """The image uint8 [H, W, 3], or why it cannot be had (str)."""
  try:
    raw = read()
  except OSError as e:
    return f"cannot read it: {e.strerror or e}"
  try:
    # Image.open reads only the header: the size is known before any decoding.
    with Image.open(io.BytesIO(raw)) as im:
      limit = min(MAX_IMAGE_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_IMAGE_PIXELS)
      if im.width * im.height > limit:
        return (
          f"{im.width}x{im.height} pixels is over the limit of {limit} "
          "(a decompression bomb?)"
        )
      im = im.convert("RGB")
      if size is not None:
        im = im.resize((size[1], size[0]), Image.BILINEAR)
      return np.asarray(im, np.uint8)
  except UnidentifiedImageError:  # its message shows the BytesIO, not the file
    return "not an image Pillow can identify"
  except Exception as e:  # Pillow's decoders raise many types on damaged input
    return str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"


def _decode_all(
  items, size: tuple[int, int] | None, *, skip_bad: bool = False
) -> tuple[np.ndarray, list[tuple[int, tuple[str, str]]]]:
  """Decodes (name, read-bytes callable) pairs in threads: Pillow frees the GIL.

  Returns:
    (images uint8 [M, H, W, 3], skipped): with `skip_bad`, the bad images are
    left out and listed in `skipped` as (position in items, (name, reason));
    without, the first bad one raises `DataCorruptError`.
  """
  if size is not None and (len(size) != 2 or min(size) < 1):
    raise ValueError(
      f"size: expected (height, width) of positive ints, got {size!r}"
    )
  workers = min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    decoded = list(
      pool.map(lambda it: _decode_one(it[1], size), items, chunksize=256)
    )
  skipped = [
    (i, (name, got))
    for i, ((name, _), got) in enumerate(zip(items, decoded))
    if isinstance(got, str)
  ]
  if skipped and not skip_bad:
    name, reason = skipped[0][1]
    more = (
      f" (and {len(skipped) - 1} more bad images)" if len(skipped) > 1 else ""
    )
    raise DataCorruptError(f"cannot decode image {name}: {reason}{more}")
  kept = [
    (name, a) for (name, _), a in zip(items, decoded) if not isinstance(a, str)
  ]
  if not kept:
    raise DataCorruptError(
      f"every one of the {len(items)} images is bad; the first, "
      f"{skipped[0][1][0]}: {skipped[0][1][1]}"
    )
  first_name, first = kept[0]
  odd = next((name for name, a in kept if a.shape != first.shape), None)
  if odd is not None:
    raise ValueError(
      f"images differ in size: {first_name} is {first.shape}, {odd} "
      "is not; pass size=(height, width) to resize them"
    )
  return np.stack([a for _, a in kept]), skipped


def _check_cifar_shape(images: np.ndarray, where) -> None:
  if images.shape[1:] != (32, 32, 3):
    raise DataCorruptError(
      f"{where}: expected 32x32 RGB images, got {images.shape[1:]}"
    )
