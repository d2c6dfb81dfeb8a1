"""Data loading: image folders, their archives, the CIFAR-10 python format,
the cache, and the errors for missing or damaged data."""

import io
import os
import pickle
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image
import pytest

from pixeljax import data
from pixeljax.data import CIFAR10_CLASSES
from pixeljax.data import DataCorruptError
from pixeljax.data import DataNotFoundError
from pixeljax.data import load_cifar10
from pixeljax.data import load_cifar10_sample
from pixeljax.data import load_image_folder


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
  """Every test gets its own cache and no PIXELJAX_DATA from the caller."""
  monkeypatch.setenv("PIXELJAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.delenv("PIXELJAX_DATA", raising=False)


def _image(seed, size=(32, 32)):
  return np.random.default_rng(seed).integers(
    0, 256, size + (3,), dtype=np.uint8
  )


def _make_tree(root, classes=("cat", "dog", "zebra"), per_class=(2, 3, 1)):
  """root/{train,test}/<class>/NNNN.png; returns {split: (images, labels)}."""
  out = {}
  for s, split in enumerate(("train", "test")):
    imgs, labels = [], []
    for c, (name, n) in enumerate(zip(classes, per_class)):
      (root / split / name).mkdir(parents=True)
      for i in range(n + s):
        img = _image(100 * s + 10 * c + i)
        Image.fromarray(img).save(root / split / name / f"{i:04d}.png")
        imgs.append(img)
        labels.append(c)
    out[split] = (np.stack(imgs), np.array(labels))
  return out


def _tar(src_dir, tar_path, arcname):
  with tarfile.open(tar_path, "w:gz") as t:
    t.add(src_dir, arcname=arcname)
  return tar_path


def test_image_folder_tree_and_its_tar(tmp_path):
  expected = _make_tree(tmp_path / "tree")
  for source in (
    tmp_path / "tree",
    _tar(tmp_path / "tree", tmp_path / "t.tar.gz", "pfx"),
  ):
    for split in ("train", "test"):
      ds = load_cifar10(split, source=source)
      assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (32, 32, 3)
      assert ds.labels.dtype == np.int64
      assert ds.class_names == (
        "cat",
        "dog",
        "zebra",
      )  # not CIFAR's ten: sorted
      np.testing.assert_array_equal(
        ds.images, expected[split][0]
      )  # PNG is lossless
      np.testing.assert_array_equal(ds.labels, expected[split][1])


def test_folder_with_cifar_classes_uses_canonical_order(tmp_path):
  names = sorted(CIFAR10_CLASSES)  # alphabetical differs from canonical
  _make_tree(tmp_path, classes=names, per_class=[1] * 10)
  ds = load_cifar10("train", source=tmp_path)
  assert ds.class_names == CIFAR10_CLASSES
  first_of_each = [ds.images[ds.labels == c][0] for c in range(10)]
  for c, name in enumerate(CIFAR10_CLASSES):
    np.testing.assert_array_equal(
      first_of_each[c], _image(10 * names.index(name))
    )


def _python_archive(tmp_path, n_per_batch=4):
  """A CIFAR-10 python-format archive (protocol-2 pickles, as the original)."""
  root = tmp_path / "cifar-10-batches-py"
  root.mkdir()
  rng = np.random.default_rng(0)
  batches = {}
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    chw = rng.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(
      0, 10, n_per_batch
    ).tolist()  # plain ints, as the original
    batches[name] = (chw.transpose(0, 2, 3, 1), labels)
    with open(root / name, "wb") as f:
      pickle.dump(
        {b"data": chw.reshape(n_per_batch, -1), b"labels": labels},
        f,
        protocol=2,
      )
  with open(root / "batches.meta", "wb") as f:
    pickle.dump(
      {b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f, protocol=2
    )
  return (
    root,
    _tar(root, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    batches,
  )


def test_cifar_python_archive_and_folder(tmp_path):
  root, archive, batches = _python_archive(tmp_path)
  for source in (archive, root, tmp_path):
    train = load_cifar10("train", source=source)
    test = load_cifar10("test", source=source)
    assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (
      4,
      32,
      32,
      3,
    )
    assert (
      train.class_names == CIFAR10_CLASSES and train.labels.dtype == np.int64
    )
    np.testing.assert_array_equal(test.images, batches["test_batch"][0])
    np.testing.assert_array_equal(test.labels, batches["test_batch"][1])
    np.testing.assert_array_equal(train.images[4:8], batches["data_batch_2"][0])


def test_pickle_with_code_is_refused(tmp_path):
  root, _, _ = _python_archive(tmp_path)

  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  (root / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
  with pytest.raises(DataCorruptError, match="test_batch.*refusing"):
    load_cifar10("test", source=root)


def test_cache_hit_is_identical_and_skips_decoding(tmp_path, monkeypatch):
  _make_tree(tmp_path / "tree")
  first = load_cifar10("test", source=tmp_path / "tree")
  assert list((tmp_path / "cache").glob("cifar10-test-*.npz"))

  def no_decoding(*args):
    raise AssertionError("the cache was not used")

  monkeypatch.setattr(data, "_load_path", no_decoding)
  second = load_cifar10("test", source=tmp_path / "tree")
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("keep", [0, 0.5, -30])
def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch, keep):
  _make_tree(tmp_path / "tree")
  first = load_cifar10("test", source=tmp_path / "tree")
  [cache] = (tmp_path / "cache").glob("cifar10-test-*.npz")
  raw = cache.read_bytes()
  cache.write_bytes(
    raw[: int(keep * len(raw)) if isinstance(keep, float) else keep]
  )
  decoded = []
  real = data._load_path
  monkeypatch.setattr(
    data, "_load_path", lambda *a: decoded.append(a) or real(*a)
  )
  second = load_cifar10("test", source=tmp_path / "tree")
  assert len(decoded) == 1
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)
  assert cache.read_bytes() == raw  # rewritten whole
  assert [p.name for p in (tmp_path / "cache").iterdir()] == [
    cache.name
  ]  # no temp file left


def test_cache_is_synced_before_it_is_renamed(tmp_path, monkeypatch):
  _make_tree(tmp_path / "tree")
  calls = []
  real_fsync, real_replace = os.fsync, os.replace
  monkeypatch.setattr(
    os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd)
  )
  monkeypatch.setattr(
    os, "replace", lambda *a: calls.append("replace") or real_replace(*a)
  )
  load_cifar10("test", source=tmp_path / "tree")
  assert calls == ["fsync", "replace"]


def test_unwritable_cache_still_gives_the_data(tmp_path, monkeypatch):
  expected = _make_tree(tmp_path / "tree")
  (tmp_path / "blocker").write_text("a file where the cache folder should be")
  monkeypatch.setenv("PIXELJAX_CACHE", str(tmp_path / "blocker"))
  with pytest.warns(RuntimeWarning, match="cannot write the data cache"):
    ds = load_cifar10("test", source=tmp_path / "tree")
  np.testing.assert_array_equal(ds.images, expected["test"][0])


def test_cache_is_keyed_by_source(tmp_path):
  _make_tree(tmp_path / "a")
  _make_tree(tmp_path / "b", per_class=(1, 1, 1))
  assert len(load_cifar10("test", source=tmp_path / "a").images) == 9
  assert len(load_cifar10("test", source=tmp_path / "b").images) == 6


def test_nothing_found_lists_every_source(tmp_path, monkeypatch):
  monkeypatch.setenv("PIXELJAX_DATA", str(tmp_path / "nowhere"))
  monkeypatch.setattr(
    data, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz"
  )
  with pytest.raises(DataNotFoundError) as e:
    load_cifar10("test")
  msg = str(e.value)
  for part in (
    "PIXELJAX_DATA",
    "nowhere",
    "does not exist",
    "tensorflow-datasets",
    "download",
    "127.0.0.1",
    "load_cifar10_sample",
  ):
    assert part in msg
  assert isinstance(e.value, FileNotFoundError)


def test_truncated_archive_names_the_file(tmp_path):
  _make_tree(tmp_path / "tree")
  archive = _tar(tmp_path / "tree", tmp_path / "t.tar.gz", "pfx")
  raw = archive.read_bytes()
  archive.write_bytes(raw[: len(raw) // 2])
  with pytest.raises(DataCorruptError, match="t.tar.gz"):
    load_cifar10("test", source=archive)


def test_unreadable_image_names_the_file(tmp_path):
  _make_tree(tmp_path / "tree")
  (tmp_path / "tree" / "test" / "dog" / "9999.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(DataCorruptError, match="9999.jpg") as e:
    load_cifar10("test", source=tmp_path / "tree")
  assert "BytesIO" not in str(e.value)


def test_bad_split():
  with pytest.raises(ValueError, match="split"):
    load_cifar10("validation")


def test_image_folder_resize_and_paths(tmp_path):
  for i, (cls, size) in enumerate(
    [("a", (20, 30)), ("a", (40, 10)), ("b", (32, 32))]
  ):
    (tmp_path / cls).mkdir(exist_ok=True)
    img = Image.fromarray(_image(i, size).repeat(1, axis=0)).convert(
      "L"
    )  # grey -> RGB
    img.save(tmp_path / cls / f"{i}.jpg")
  with pytest.raises(ValueError, match="size=") as e:
    load_image_folder(tmp_path)
  assert "0.jpg" in str(e.value)
  got = load_image_folder(tmp_path, size=(24, 16))
  assert got.images.shape == (3, 24, 16, 3) and got.images.dtype == np.uint8
  assert got.class_names == ("a", "b") and got.labels.tolist() == [0, 0, 1]
  assert [os.path.basename(p) for p in got.paths] == ["0.jpg", "1.jpg", "2.jpg"]


def _png_claiming(width, height):
  """A valid 4x4 PNG whose header (IHDR) claims width x height."""
  buf = io.BytesIO()
  Image.fromarray(_image(0, (4, 4))).save(buf, "PNG")
  raw = bytearray(buf.getvalue())
  raw[16:24] = struct.pack(">II", width, height)
  raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
  return bytes(raw)


def _folder_with_bad_images(root):
  """root/{a,b}/: three good PNGs, a truncated JPEG and two bombs."""
  (root / "a").mkdir(parents=True)
  (root / "b").mkdir()
  good = [_image(i) for i in range(3)]
  Image.fromarray(good[0]).save(root / "a" / "0.png")
  Image.fromarray(good[1]).save(root / "a" / "3.png")
  Image.fromarray(good[2]).save(root / "b" / "1.png")
  Image.fromarray(_image(9)).save(root / "a" / "1.jpg")
  jpeg = (root / "a" / "1.jpg").read_bytes()
  (root / "a" / "1.jpg").write_bytes(jpeg[: len(jpeg) // 2])
  (root / "a" / "2.png").write_bytes(
    _png_claiming(100_000, 100_000)
  )  # Pillow's own limit
  (root / "b" / "0.png").write_bytes(
    _png_claiming(9000, 9000)
  )  # 81 Mpx: over ours
  return good


def test_bad_images_name_the_file(tmp_path):
  _folder_with_bad_images(tmp_path)
  with pytest.raises(
    DataCorruptError, match=r"(?i)1\.jpg: .*truncated.*2 more"
  ) as e:
    load_image_folder(tmp_path)
  assert "BytesIO" not in str(e.value)
  (tmp_path / "a" / "1.jpg").unlink()
  with pytest.raises(DataCorruptError, match=r"2\.png: .*decompression bomb"):
    load_image_folder(tmp_path)
  (tmp_path / "a" / "2.png").unlink()
  with pytest.raises(
    DataCorruptError, match=r"0\.png: 9000x9000 pixels is over the limit"
  ):
    load_image_folder(tmp_path)


def test_bad_images_can_be_skipped(tmp_path):
  good = _folder_with_bad_images(tmp_path)
  got = load_image_folder(tmp_path, skip_bad=True)
  np.testing.assert_array_equal(got.images, np.stack(good))
  assert got.labels.tolist() == [0, 0, 1]
  assert [os.path.relpath(p, tmp_path) for p in got.paths] == [
    os.path.join("a", "0.png"),
    os.path.join("a", "3.png"),
    os.path.join("b", "1.png"),
  ]
  reasons = {os.path.relpath(p, tmp_path): r for p, r in got.skipped}
  assert sorted(reasons) == [
    os.path.join(*p) for p in (("a", "1.jpg"), ("a", "2.png"), ("b", "0.png"))
  ]
  assert "truncated" in reasons[os.path.join("a", "1.jpg")].lower()
  assert "decompression bomb" in reasons[os.path.join("a", "2.png")]
  assert (
    "9000x9000 pixels is over the limit" in reasons[os.path.join("b", "0.png")]
  )


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillows_lower_pixel_limit_is_honoured(tmp_path, monkeypatch):
  (tmp_path / "a").mkdir()
  Image.fromarray(_image(0, (40, 40))).save(tmp_path / "a" / "big.png")
  Image.fromarray(_image(1, (40, 10))).save(tmp_path / "a" / "small.png")
  monkeypatch.setattr(
    Image, "MAX_IMAGE_PIXELS", 1000
  )  # 1600 px: Pillow only warns
  got = load_image_folder(tmp_path, size=(8, 8), skip_bad=True)
  assert [os.path.basename(p) for p in got.paths] == ["small.png"]
  assert (
    "big.png" in got.skipped[0][0]
    and "over the limit of 1000" in got.skipped[0][1]
  )


def test_only_bad_images_is_an_error_even_when_skipping(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "x.png").write_bytes(b"not a png")
  with pytest.raises(
    DataCorruptError, match="every one of the 1 images is bad.*x.png"
  ):
    load_image_folder(tmp_path, skip_bad=True)


def test_packaged_sample():
  s = load_cifar10_sample()
  assert s.images.shape == (300, 32, 32, 3) and s.images.dtype == np.uint8
  assert np.bincount(s.labels).tolist() == [30] * 10
  assert s.class_names == CIFAR10_CLASSES
  assert s.paths[0] == "test/airplane/0000.jpg"


@pytest.fixture
def real_data(monkeypatch):
  """The shared CIFAR-10 copy named by the caller's PIXELJAX_DATA, with the
  default cache."""
  path = os.environ.get("PIXELJAX_DATA_REAL")
  if not path:
    pytest.skip("PIXELJAX_DATA is not set: no real CIFAR-10 to test against")
  monkeypatch.delenv("PIXELJAX_CACHE", raising=False)
  return path


def test_real_cifar10_test_split(real_data):
  ds = load_cifar10("test", source=real_data)
  assert ds.images.shape == (10000, 32, 32, 3) and ds.images.dtype == np.uint8
  assert np.bincount(ds.labels).tolist() == [1000] * 10
  assert ds.class_names == CIFAR10_CLASSES
  np.testing.assert_allclose(
    ds.images.reshape(-1, 3).mean(0), (125.4, 123.1, 114.0), atol=1.5
  )
