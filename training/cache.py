"""Decoded CIFAR-10 arrays kept on disk, keyed by the source's content, so a second run skips decoding.

Decoding the 60,000 JPEG files of ../shared/data/cifar10-jpeg.tar.gz takes 13-18 s on a 2-core machine;
reading the arrays back from one .npz file takes 0.3 s. The key hashes every byte the arrays come from (the
archive file, or every file of a folder with its relative path) together with the source of the code that
decodes them, so an edited image (even of the same size and time stamp), an added or removed file, or a
changed decoder always decodes again. Time stamps are never trusted: hashing the contents of the 60,000
files of the extracted folder takes about 0.9 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from importlib.util import find_spec
from typing import Any

import numpy as np

from training.splits import RawSplits

CACHE_ENV = "CIFAR_SERVE_CACHE"
# Bump when the cache file's layout changes; the decoder's own changes are caught by hashing its source.
FORMAT_VERSION = 1
ARRAYS = ("x_train", "y_train", "x_test", "y_test", "class_names")
CHUNK = 1 << 20
# The most recently used sources kept (about 185 MB each for the full data set); older ones are removed.
KEEP = 4
# The modules whose code turns files into arrays: their source is part of every key. They are found, not
# imported (training.data imports this module).
DECODERS = ("contract.images", "training.data")


def cache_dir() -> Path:
    """$CIFAR_SERVE_CACHE, else $XDG_CACHE_HOME/cifar-serve, else ~/.cache/cifar-serve: the usual places."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "cifar-serve"


def decoder_version() -> str:
    """A hash of the code that turns files into arrays (the image decoder, the loader) and of Pillow's
    version, so a change to any of them never serves arrays the new code would not produce."""
    import PIL

    digest = hashlib.sha256(f"format {FORMAT_VERSION}; pillow {PIL.__version__}".encode())
    for module in DECODERS:
        spec = find_spec(module)
        assert spec is not None and spec.origin is not None, module
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()


def update_with_archive(digest: Any, path: Path) -> None:
    """Feed an archive's bytes to `digest` in chunks (it can be large)."""
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)


def folder_files(root: str) -> list[tuple[str, str]]:
    """(relative path, path) of every file under `root`, symbolic links followed as the loader does, sorted."""
    found: list[tuple[str, str]] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(os.path.join(root, relative)) as entries:
            for entry in entries:
                name = f"{relative}/{entry.name}" if relative else entry.name
                if entry.is_dir():
                    pending.append(name)
                elif entry.is_file():
                    found.append((name, entry.path))
    return sorted(found)


def source_key(path: Path) -> str:
    """The content of an archive file or of every file in a folder, plus the decoder's version."""
    digest = hashlib.sha256(decoder_version().encode())
    if path.is_file():
        digest.update(b"archive\0")
        update_with_archive(digest, path)
    else:
        digest.update(b"folder\0")
        for relative, file in folder_files(str(path)):
            with open(file, "rb") as handle:
                data = handle.read()
            digest.update(f"{relative}\0{len(data)}\0".encode())
            digest.update(data)
    return digest.hexdigest()[:32]


def cache_file(key: str) -> Path:
    """Where the arrays of one source content live."""
    return cache_dir() / f"decoded-{key}.npz"


def load(key: str) -> RawSplits | None:
    """The cached arrays, or None when absent or unreadable (a damaged file is decoded again, never trusted)."""
    try:
        with np.load(cache_file(key), allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in ARRAYS}
        os.utime(cache_file(key))  # recently used: kept by `prune`
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    for x, y in ((x_train, arrays["y_train"]), (x_test, arrays["y_test"])):
        if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or len(x) != len(y):
            return None
    return RawSplits(x_train, arrays["y_train"].astype(np.int64), x_test, arrays["y_test"].astype(np.int64),
                     [str(name) for name in arrays["class_names"]])


def save(key: str, raw: RawSplits) -> None:
    """Write the arrays atomically (temporary file, then rename): a reader sees the whole file or none.

    A cache that cannot be written (read-only home, full disk) only costs the next run its decoding time.
    """
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".decoded-", suffix=".npz.tmp", dir=folder)
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_test, y_test=raw.y_test,
                     class_names=np.asarray(raw.class_names, dtype=str))
        os.replace(temporary, cache_file(key))
    except OSError:
        Path(temporary).unlink(missing_ok=True)
        return
    prune(folder)


def prune(folder: Path) -> None:
    """Keep the KEEP most recently used entries (every edit of a source would otherwise leave one behind),
    and drop the temporary files of writers killed over an hour ago."""
    for temporary in folder.glob(".decoded-*.npz.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - temporary.stat().st_mtime > 3600:
                temporary.unlink()
    entries = []
    for path in folder.glob("decoded-*.npz"):
        try:
            entries.append((path.stat().st_mtime, path))
        except OSError:
            continue
    for _, path in sorted(entries, reverse=True)[KEEP:]:
        path.unlink(missing_ok=True)


def cached(path: Path, read: Callable[[Path], RawSplits]) -> RawSplits:
    """`read(path)`, or the arrays a previous read of the same content left in the cache."""
    try:
        key = source_key(path)
    except OSError:  # an unreadable file: the reader says which, in its own words
        return read(path)
    raw = load(key)
    if raw is None:
        raw = read(path)
        save(key, raw)
    return raw
