"""CIFAR-10 as users have it: the Keras download, the official python archive, or image folders."""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from contract.card import CIFAR10_CLASSES
from contract.images import ImageError
from contract.images import decode_image as decode_image_bytes
from training import cache as decoded_cache
from training.splits import RawSplits

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
OFFICIAL_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


class DataError(Exception):
    """A data source the user gave that cannot be read; the message says why."""


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str

    def sizes(self) -> dict[str, int]:
        return {"train_size": len(self.y_train), "val_size": len(self.y_val), "test_size": len(self.y_test)}


def load_dataset(source: str | None, validation_split: float, seed: int, limit: int | None = None,
                 cache: bool = False) -> Dataset:
    """Read a source, take a stratified subset if asked, and split off a shuffled stratified validation set.

    With `cache` (train-cifar's default), the decoded arrays of an archive or folder are kept on disk
    (training/cache.py), so the next run on the same content skips decoding; subset and split are drawn afresh.
    """
    raw = read_source(source, cache)
    rng = np.random.default_rng(seed)
    x_train, y_train, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if limit is not None:
        keep = stratified_take(y_train, limit, rng)
        x_train, y_train = x_train[keep], y_train[keep]
        keep = stratified_take(y_test, limit, rng)
        x_test, y_test = x_test[keep], y_test[keep]
    train_idx, val_idx = stratified_split(y_train, validation_split, rng)
    return Dataset(
        x_train=x_train[train_idx],
        y_train=y_train[train_idx],
        x_val=x_train[val_idx],
        y_val=y_train[val_idx],
        x_test=x_test,
        y_test=y_test,
        class_names=raw.class_names,
        source=source or "keras.datasets.cifar10",
    )


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled indices (train, validation), with `fraction` of every class in validation."""
    train_parts, val_parts = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(members) * fraction))
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    train_idx = rng.permutation(np.concatenate(train_parts))
    val_idx = rng.permutation(np.concatenate(val_parts)) if val_parts else np.array([], dtype=int)
    return train_idx, val_idx.astype(int)


def stratified_take(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of about `count` samples, the same share of every class."""
    if count >= len(labels):
        return np.arange(len(labels))
    _, keep = stratified_split(labels, count / len(labels), rng)
    return np.sort(keep)


def read_source(source: str | None, cache: bool = False) -> RawSplits:
    """The full train and test arrays of a source; archives and folders through the decoded-data cache if asked
    (the Keras download keeps its own cache)."""
    if source is None:
        return read_keras_download()
    path = source_path(source)
    read = read_archive if path.is_file() else read_folder
    return decoded_cache.cached(path, read) if cache else read(path)


def source_path(source: str) -> Path:
    """The path of a --data source that exists and is a folder or an archive; anything else is a DataError."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    if path.is_file() and not path.name.endswith(ARCHIVE_SUFFIXES):
        raise DataError(f"unknown data layout: {path} is neither a folder nor a .tar.gz archive")
    return path


def check_source(source: str | None) -> None:
    """Fail now on a --data source that cannot be read: a missing path, a file that is no archive, a folder
    with neither layout. Nothing is decoded, so train-cifar runs this before TensorFlow loads; an archive's
    members are checked when it is read."""
    if source is None:
        return
    path = source_path(source)
    if path.is_dir() and find_official_folder(path) is None and not has_image_tree(path):
        raise layout_error(path)


def has_image_tree(root: Path) -> bool:
    """Whether `root` holds train/<class>/<image> and test/<class>/<image> files; stops at the first of each."""
    splits: set[str] = set()
    for path in root.rglob("*"):
        key = split_and_class(path.relative_to(root).parts)
        if key is not None and path.is_file():
            splits.add(key[0])
            if len(splits) == 2:
                return True
    return False


def layout_error(where: Path) -> DataError:
    """What a folder or archive with neither CIFAR-10 layout gets."""
    return DataError(
        f"unknown data layout in {where}: expected cifar-10-batches-py/ or train/<class>/ and test/<class>/ images"
    )


def read_keras_download() -> RawSplits:
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as error:  # keras raises a bare Exception when the download fails
        raise DataError(
            f"could not download CIFAR-10 through Keras ({error}); pass a local copy with --data PATH"
        ) from None
    return RawSplits(x_train, y_train.ravel().astype(np.int64), x_test, y_test.ravel().astype(np.int64), CIFAR10_CLASSES)


# --- the official "CIFAR-10 python version" archive -------------------------------------------


def unpickle_batch(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = pickle.loads(raw, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return data, np.asarray(batch[b"labels"], dtype=np.int64)


def official_splits(read_member: dict[str, bytes]) -> RawSplits:
    train = [unpickle_batch(read_member[name]) for name in OFFICIAL_TRAIN_BATCHES]
    x_test, y_test = unpickle_batch(read_member["test_batch"])
    class_names = CIFAR10_CLASSES
    if "batches.meta" in read_member:
        meta = pickle.loads(read_member["batches.meta"], encoding="bytes")
        class_names = [name.decode() for name in meta[b"label_names"]]
    return RawSplits(
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        x_test,
        y_test,
        class_names,
    )


def find_official_folder(root: Path) -> Path | None:
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return candidate
    return None


# --- class-per-folder image trees --------------------------------------------------------------


def decode_image(raw: bytes, where: str) -> np.ndarray:
    """The service's decoder, so a model sees the same pixels in training as when it is served."""
    try:
        return decode_image_bytes(raw)
    except ImageError as error:
        raise DataError(f"cannot read image {where}: {error}") from None


def class_order(names: Iterable[str]) -> list[str]:
    """The standard CIFAR-10 order when the folders are its classes, else alphabetical."""
    found = sorted(set(names))
    if set(found) == set(CIFAR10_CLASSES):
        return list(CIFAR10_CLASSES)
    return found


def tree_splits(files: dict[tuple[str, str], list[tuple[str, bytes]]]) -> RawSplits:
    """Build arrays from {(split, class): [(name, bytes), ...]}."""
    train_classes = {cls for split, cls in files if split == "train"}
    test_classes = {cls for split, cls in files if split == "test"}
    if not train_classes or not test_classes:
        raise DataError("unknown data layout: expected train/<class>/<image> and test/<class>/<image>")
    if train_classes != test_classes:
        raise DataError(f"train and test class folders differ: {sorted(train_classes ^ test_classes)}")
    class_names = class_order(train_classes)
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "test"):
        images, labels = [], []
        for label, cls in enumerate(class_names):
            for name, raw in sorted(files.get((split, cls), [])):
                images.append(decode_image(raw, name))
                labels.append(label)
        arrays[split] = (np.stack(images), np.asarray(labels, dtype=np.int64))
    return RawSplits(*arrays["train"], *arrays["test"], class_names)


def split_and_class(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """('...', 'train', 'cat', 'x.png') -> ('train', 'cat') for an image path, else None."""
    if len(parts) < 3 or Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    split, cls = parts[-3], parts[-2]
    if split not in ("train", "test") or parts[-1].startswith("."):
        return None
    return split, cls


def read_folder(root: Path) -> RawSplits:
    official = find_official_folder(root)
    if official is not None:
        members = {p.name: p.read_bytes() for p in official.iterdir() if p.is_file()}
        return official_splits(members)
    files: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for path in root.rglob("*"):
        key = split_and_class(path.relative_to(root).parts)
        if key is not None and path.is_file():
            files.setdefault(key, []).append((str(path), path.read_bytes()))
    if not files:
        raise layout_error(root)
    return tree_splits(files)


def read_archive(path: Path) -> RawSplits:
    try:
        with tarfile.open(path) as archive:
            members = [m for m in archive.getmembers() if m.isfile()]
            by_name = {Path(m.name).name: m for m in members}
            if "data_batch_1" in by_name and "test_batch" in by_name:
                wanted = [*OFFICIAL_TRAIN_BATCHES, "test_batch", "batches.meta"]
                return official_splits(
                    {n: archive.extractfile(by_name[n]).read() for n in wanted if n in by_name}
                )
            files: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
            for member in members:
                key = split_and_class(Path(member.name).parts)
                if key is not None:
                    files.setdefault(key, []).append((member.name, archive.extractfile(member).read()))
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"cannot read archive {path}: {error}") from None
    if not files:
        raise layout_error(path)
    return tree_splits(files)
