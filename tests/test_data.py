"""Data sources (focalnet.datasets), transforms and loaders of focalnet.train.data, on the data sets that
packages ship."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from focalnet import datasets as DS
from focalnet.train import data as D
from focalnet.train.recipes import get_recipe

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", n) for n in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def make_image_tree(root: Path, classes=("cat", "dog"), per_class: int = 6, size: int = 20, splits=("train", "val")) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for ci, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                # class 0 bright on the left, class 1 bright on the right: learnable, not trivial noise
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                half = slice(0, size // 2) if ci == 0 else slice(size // 2, size)
                img[:, half] += 150
                Image.fromarray(img).save(root / split / c / f"{i}.png")
    return root


def test_read_idx_plain_and_gzipped(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, arr)
        np.testing.assert_array_equal(DS.read_idx(tmp_path / name), arr)
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 100) + b"\x00" * 10)
    with pytest.raises(DS.DataUnavailableError, match="truncated"):
        DS.read_idx(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DS.DataUnavailableError, match="not an IDX"):
        DS.read_idx(tmp_path / "junk")


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package():
    splits, found = DS.load_fashion_mnist(download=False)
    xtr, ytr = splits["train"]
    xte, yte = splits["test"]
    assert xtr.shape == (60000, 1, 28, 28) and xte.shape == (10000, 1, 28, 28)
    assert xtr.dtype == torch.uint8 and ytr.min() == 0 and ytr.max() == 9
    assert torch.bincount(yte).tolist() == [1000] * 10
    # the statistics the transforms normalise with are those of the training images
    assert abs(xtr.float().div(255).mean().item() - DS.FASHION_MNIST_MEAN[0]) < 1e-3
    assert abs(xtr.float().div(255).std().item() - DS.FASHION_MNIST_STD[0]) < 1e-3


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(DS, "FASHION_MNIST_DIRS", (str(tmp_path / "nowhere"),))
    monkeypatch.setenv("FOCALNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FOCALNET_DATA", raising=False)
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    with pytest.raises(DS.DataUnavailableError) as e:
        DS.load_fashion_mnist(download=False)
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg and "nowhere" in msg


def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path, monkeypatch):
    monkeypatch.setattr(DS, "FASHION_MNIST_DIRS", ())
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    splits, found = DS.load_fashion_mnist(tmp_path, download=False)
    assert found == tmp_path and splits["train"][0].shape == (20, 1, 28, 28) and len(splits["test"][1]) == 10


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_training_and_canvases_read_the_same_fashion_mnist():
    from focalnet.dense.data import load_fashion_mnist as canvas_items

    splits, _ = DS.load_fashion_mnist(download=False)
    images, labels = canvas_items("test")
    assert torch.equal(splits["test"][0][:, 0], torch.from_numpy(images))
    assert torch.equal(splits["test"][1], torch.from_numpy(labels))


def test_data_set_names_and_aliases_are_one_list():
    assert DS.builtin_dataset("FashionMNIST") == DS.builtin_dataset("fashion_mnist") == "fashion-mnist"
    assert DS.builtin_dataset("fmnist") == "fashion-mnist"
    assert DS.builtin_dataset("sklearn_digits") == DS.builtin_dataset("Digits") == "digits"
    assert DS.builtin_dataset("/data/imagenet") is None


def test_unknown_interpolation_is_an_error_for_every_split():
    from focalnet.errors import FocalNetError

    info = D.DataInfo("x", ["a", "b"], 1, 8, (0.5,), (0.5,), "tensor")
    for training in (True, False):
        with pytest.raises(FocalNetError, match="unknown interpolation 'bicubix'"):
            D.build_transform(info, get_recipe("small", interpolation="bicubix", img_size=16), training=training)


def test_digits_split_is_fixed_and_stratified():
    a, b = DS.load_digits(), DS.load_digits()
    assert len(a["train"][0]) == 1437 and len(a["test"][0]) == 360
    assert torch.equal(a["test"][0], b["test"][0])
    counts = torch.bincount(a["test"][1])
    assert counts.min() >= 35  # every digit in the test split


def test_pad_crop_flip_is_a_shift_and_a_mirror():
    img = torch.arange(1 * 6 * 6, dtype=torch.uint8).view(1, 6, 6) * 5
    tf = D.PadCropFlip(pad=0, hflip=0.0, mean=(0.0,), std=(1.0,))
    torch.testing.assert_close(tf(img), img.float() / 255)
    tf = D.PadCropFlip(pad=0, hflip=1.0, mean=(0.5,), std=(0.25,))
    torch.testing.assert_close(tf(img), (img.float().flip(-1) / 255 - 0.5) / 0.25)
    tf = D.PadCropFlip(pad=2, hflip=0.0, mean=(0.0,), std=(1.0,))
    torch.manual_seed(0)
    outs = [tf(img) for _ in range(30)]
    assert all(o.shape == (1, 6, 6) for o in outs)
    assert len({o.sum().item() for o in outs}) > 3  # different shifts cut off different pixels


def test_eval_transform_of_folders_is_the_authors():
    info = D.DataInfo("x", ["a", "b"], 3, None, (0.5,) * 3, (0.5,) * 3, "folder")
    tf = D.build_transform(info, get_recipe("imagenet"), training=False)
    names = [type(t).__name__ for t in tf.transforms]
    assert names[:2] == ["Resize", "CenterCrop"]
    assert tf.transforms[0].size in (256, [256], (256,)) and "bicubic" in str(tf.transforms[0].interpolation).lower()
    tf = D.build_transform(info, get_recipe("imagenet", crop_pct=1.0), training=False)
    assert tf.transforms[0].size in (224, [224], (224,))


def test_image_folder_classes_and_bad_files(tmp_path):
    root = make_image_tree(tmp_path / "set")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    recipe = get_recipe("imagenet", img_size=32)
    train, val, info = D.build_datasets(str(root), recipe)
    assert info.class_names == ["cat", "dog"] and info.kind == "folder" and info.eval_split == "val"
    assert len(train) == 13 and len(val) == 12
    x, y, bad = D.collate([train[i] for i in range(len(train))])
    assert x.shape == (12, 3, 32, 32) and len(bad) == 1 and "broken.jpg" in bad[0]
    (root / "val" / "bird").mkdir()
    with pytest.raises(ValueError, match="bird"):
        D.build_datasets(str(root), recipe)


def test_missing_folder_layout_is_explained(tmp_path):
    with pytest.raises(D.DataUnavailableError, match="train/CLASS"):
        D.build_datasets(str(tmp_path), get_recipe("imagenet"))
    with pytest.raises(D.DataUnavailableError, match="neither"):
        D.build_datasets(str(tmp_path / "nope"), get_recipe("imagenet"))


def test_loader_order_depends_only_on_seed_and_epoch():
    x = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 4, 4).contiguous()
    ds = D.TensorImages(x, torch.arange(40) % 2, transform=lambda t: t.float())
    first = D.build_loader(ds, batch_size=8, training=True, seed=3)
    second = D.build_loader(ds, batch_size=8, training=True, seed=3)
    D.set_loader_epoch(first, 0, 3)
    order0 = torch.cat([b[0][:, 0, 0, 0] for b in first])
    D.set_loader_epoch(first, 1, 3)
    order1 = torch.cat([b[0][:, 0, 0, 0] for b in first])
    D.set_loader_epoch(second, 1, 3)  # a resumed run starts at epoch 1 directly
    assert torch.equal(order1, torch.cat([b[0][:, 0, 0, 0] for b in second]))
    assert not torch.equal(order0, order1)
    # evaluation shards cover every image once, without padding
    shards = [D.build_loader(ds, batch_size=7, training=False, rank=r, world_size=3) for r in range(3)]
    seen = sorted(int(v) for s in shards for b in s for v in b[0][:, 0, 0, 0])
    assert seen == list(range(40))
