"""The decoded-data cache: a second load does not decode, a changed source always does, --no-cache writes nothing."""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import cache, data
from training.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "tests" / "fixtures" / "images-tiny"
TREE_ARCHIVE = ROOT / "tests" / "fixtures" / "images-tiny.tar.gz"
TRAIN_CIFAR = [sys.executable, "-c", "from training.cli import main; main()"]


@pytest.fixture()
def cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(folder))
    return folder


@pytest.fixture()
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many images the loader decoded (one entry per call)."""
    calls: list[int] = []
    real = data.decode_image_bytes

    def counting(raw: bytes) -> np.ndarray:
        calls.append(1)
        return real(raw)

    monkeypatch.setattr(data, "decode_image_bytes", counting)
    return calls


def bmp(colour: tuple[int, int, int]) -> bytes:
    """A 32x32 BMP: uncompressed, so every colour gives a file of the same size."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="BMP")
    return buffer.getvalue()


def load(source: Path) -> data.Dataset:
    return load_dataset(str(source), 0.0, seed=0, cache=True)


@pytest.mark.parametrize("source", [TREE, TREE_ARCHIVE], ids=["folder", "archive"])
def test_a_second_load_is_served_from_the_cache(source: Path, cache_folder: Path, decodes: list[int]) -> None:
    first = load(source)
    assert len(decodes) == 110 and len(list(cache_folder.glob("decoded-*.npz"))) == 1
    decodes.clear()
    second = load(source)
    assert not decodes, "the second load decoded images"
    for name in ("x_train", "y_train", "x_test", "y_test", "class_names"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name
    uncached = load_dataset(str(source), 0.0, seed=0, cache=False)
    assert np.array_equal(uncached.x_train, second.x_train) and uncached.class_names == second.class_names


def test_a_rewritten_image_of_the_same_size_and_mtime_is_decoded_again(tmp_path: Path, cache_folder: Path,
                                                                       decodes: list[int]) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(TREE, tree)
    image = tree / "test" / "cat" / "zz-extra.bmp"
    image.write_bytes(bmp((255, 0, 0)))
    before = image.stat()
    first = load(tree)
    cat = first.class_names.index("cat")
    assert first.x_test[first.y_test == cat][-1, 0, 0].tolist() == [255, 0, 0]  # zz-extra sorts last
    image.write_bytes(bmp((0, 0, 255)))
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert image.stat().st_size == before.st_size and image.stat().st_mtime_ns == before.st_mtime_ns
    decodes.clear()
    changed = load(tree)
    assert decodes, "a changed file was served from the cache"
    assert changed.x_test[changed.y_test == cat][-1, 0, 0].tolist() == [0, 0, 255]


def test_a_changed_archive_is_decoded_again(tmp_path: Path, cache_folder: Path, decodes: list[int]) -> None:
    archive = tmp_path / "tree.tar.gz"

    def write(colour: tuple[int, int, int]) -> None:
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(TREE / "train", arcname="train")
            tar.add(TREE / "test", arcname="test")
            info = tarfile.TarInfo("test/cat/zz-extra.bmp")
            payload = bmp(colour)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

    write((0, 255, 0))
    cat = load(archive).class_names.index("cat")
    write((0, 0, 255))
    decodes.clear()
    changed = load(archive)
    assert decodes
    assert changed.x_test[changed.y_test == cat][-1, 0, 0].tolist() == [0, 0, 255]


def test_added_or_removed_files_and_a_new_decoder_invalidate(tmp_path: Path, cache_folder: Path,
                                                              decodes: list[int],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(TREE, tree)
    load(tree)
    removed = next((tree / "train" / "dog").iterdir())
    removed.unlink()
    decodes.clear()
    assert len(load(tree).y_train) == 79 and decodes
    decodes.clear()
    load(tree)
    assert not decodes
    monkeypatch.setattr(cache, "decoder_version", lambda: "a decoder that gives other pixels")
    load(tree)
    assert decodes, "a new decoder must not be served the old decoder's arrays"


def test_a_damaged_cache_file_is_decoded_again_and_replaced(cache_folder: Path, decodes: list[int]) -> None:
    load(TREE)
    (entry,) = cache_folder.glob("decoded-*.npz")
    entry.write_bytes(entry.read_bytes()[:1000])
    decodes.clear()
    again = load(TREE)
    assert decodes and len(again.y_train) == 80
    decodes.clear()
    load(TREE)
    assert not decodes


def test_the_cache_keeps_the_most_recently_used_entries(cache_folder: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    raw = data.read_source(str(TREE))
    prune = cache.prune
    monkeypatch.setattr(cache, "prune", lambda folder: None)
    for key in range(cache.KEEP + 2):
        cache.save(f"{key:032d}", raw)
        os.utime(cache.cache_file(f"{key:032d}"), (1000 + key, 1000 + key))
    killed_writer = cache_folder / ".decoded-killed.npz.tmp"
    killed_writer.write_bytes(b"half a file")
    os.utime(killed_writer, (1000, 1000))
    assert cache.load(f"{0:032d}") is not None  # used now: kept
    prune(cache_folder)
    kept = sorted(path.name for path in cache_folder.glob("decoded-*.npz"))
    assert len(kept) == cache.KEEP and f"decoded-{0:032d}.npz" in kept
    assert f"decoded-{1:032d}.npz" not in kept and not list(cache_folder.glob(".decoded-*"))


def test_the_cache_folder_follows_the_usual_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "cifar-serve"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "cifar-serve"
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"


# train-cifar's default caching and --no-cache: tests/test_training.py, in runs it makes anyway.
