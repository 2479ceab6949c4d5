"""benchmarks/images.py, the one image loader of the serving benchmarks (serve, soak, peers, middleware_cost)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.images import load_images

FIXTURE = Path(__file__).parent / "fixtures" / "images-tiny.tar.gz"


def test_images_are_spread_over_every_class_of_the_test_split(tmp_path: Path) -> None:
    from_archive, described = load_images(FIXTURE, 10)
    assert len(from_archive) == 10 and str(FIXTURE) in described
    assert {Path(name).parts[-2] for name, _ in from_archive} == {
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    from_folder, _ = load_images(tmp_path, 10)
    assert [data for _, data in from_folder] == [data for _, data in from_archive]


def test_generated_images_decode_as_32x32_jpegs() -> None:
    images, described = load_images(None, 3, seed=1)
    assert len(images) == 3 and "generated" in described
    assert all(Image.open(io.BytesIO(data)).size == (32, 32) for _, data in images)
    assert images == load_images(None, 3, seed=1)[0]


def test_a_missing_source_is_one_clear_message(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no such file or folder"):
        load_images(tmp_path / "nothing.tar.gz", 4)
