"""The CIFAR-10 images every serving benchmark sends: JPEG files spread over a data set's test split, from a
folder or a .tar(.gz) archive (the JPEG copy in ../shared/data, or the tests' tiny fixture), else generated ones.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg")


def load_images(source: Path | None, count: int, seed: int = 0) -> tuple[list[tuple[str, bytes]], str]:
    """`count` JPEGs (name, bytes) spread evenly over the test split of a folder or .tar(.gz) tree, and where they
    came from; `count` generated ones when there is no source."""
    if source is None:
        return generate_jpegs(count, seed), f"{count} generated 32x32 JPEGs (seed {seed})"
    if not source.exists():
        raise SystemExit(f"no such file or folder: {source}")
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        found = [(str(p.relative_to(source)), p) for p in files]
        chosen = _spread(_prefer_test(found), count)
        images = [(name, path.read_bytes()) for name, path in chosen]
    else:
        with tarfile.open(source) as archive:
            members = [(m.name, m) for m in archive if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES)]
            chosen = _spread(_prefer_test(members), count)
            images = [(name, archive.extractfile(member).read()) for name, member in chosen]  # type: ignore[union-attr]
    if not images:
        raise SystemExit(f"no JPEG files found in {source}")
    return images, f"{len(images)} JPEGs from {source}"


def _prefer_test(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    test = [item for item in items if "test" in Path(item[0]).parts]
    return test or items


def _spread(items: list[Any], count: int) -> list[Any]:
    """Every k-th item so that all classes (sorted folders) are represented."""
    if len(items) <= count:
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def generate_jpegs(count: int, seed: int) -> list[tuple[str, bytes]]:
    """Smooth-ish 32x32 pictures (a 4x4 colour grid plus noise) that compress like a photo."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        noise = rng.integers(-20, 21, (32, 32, 3))
        pixels = np.clip(np.kron(base, np.ones((8, 8, 1))) + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=75)
        images.append((f"generated-{i:04d}.jpg", buffer.getvalue()))
    return images
