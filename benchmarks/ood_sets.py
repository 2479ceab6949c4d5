"""Out-of-distribution image sets, made here or shipped inside packages (nothing downloaded), as uint8
(n, 32, 32, 3) arrays: scikit-learn's handwritten digits, crops of scikit-learn's and scikit-image's
sample photos, uniform and Gaussian noise, and flat colours.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

SIZE = 32
# scikit-image's sample photos that show none of the ten classes (its `chelsea`/`cat` is a cat, and
# `horse` is a silhouette of one), in colour or grey.
SKIMAGE_PHOTOS = ("astronaut", "camera", "coffee", "rocket", "coins", "hubble_deep_field",
                  "immunohistochemistry", "retina", "moon", "page", "text", "grass", "gravel", "brick", "clock")


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Grey, boolean or RGBA pixels -> uint8 RGB."""
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def resized(image: np.ndarray) -> np.ndarray:
    """Any size -> 32x32, with Pillow's antialiasing (as a camera photo sent to the service is shrunk)."""
    return np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.Resampling.LANCZOS))


def digits() -> np.ndarray:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) scaled to 32x32, grey in RGB."""
    from sklearn.datasets import load_digits

    grey = (load_digits().images * (255.0 / 16.0)).round().astype(np.uint8)
    return np.stack([resized(to_rgb(image)) for image in grey])


def sample_photos() -> dict[str, np.ndarray]:
    """scikit-learn's two sample photos and scikit-image's photos of none of the ten classes, as RGB."""
    from skimage import data as skimage_data
    from sklearn.datasets import load_sample_images

    sklearn_photos = load_sample_images()
    photos = {f"sklearn:{name.rsplit('/', 1)[-1]}": image
              for name, image in zip(sklearn_photos.filenames, sklearn_photos.images)}
    photos.update({f"skimage:{name}": to_rgb(getattr(skimage_data, name)()) for name in SKIMAGE_PHOTOS})
    return photos


def crops(photo: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Square crops of random size (1/8 of the short side to all of it) and place, shrunk to 32x32."""
    height, width = photo.shape[:2]
    short = min(height, width)
    out = []
    for _ in range(count):
        side = int(rng.integers(max(SIZE, short // 8), short + 1))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        out.append(resized(photo[top : top + side, left : left + side]))
    return np.stack(out)


def photo_crops(per_photo: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([crops(photo, per_photo, rng) for photo in sample_photos().values()])


def uniform_noise(count: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


def gaussian_noise(count: int, rng: np.random.Generator) -> np.ndarray:
    """Mean 128, standard deviation 64 per pixel and channel, clipped to 0-255."""
    return np.clip(rng.normal(128, 64, (count, SIZE, SIZE, 3)).round(), 0, 255).astype(np.uint8)


def flat_colours(count: int, rng: np.random.Generator) -> np.ndarray:
    """One random colour filling the whole image."""
    colours = rng.integers(0, 256, (count, 1, 1, 3), dtype=np.uint8)
    return np.broadcast_to(colours, (count, SIZE, SIZE, 3)).copy()


def ood_sets(count: int = 1000, per_photo: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Every set by name; `count` images per generated set, `per_photo` crops per sample photo."""
    rng = np.random.default_rng(seed)
    makers: dict[str, Callable[[], np.ndarray]] = {
        "digits": digits,
        "photo crops": lambda: photo_crops(per_photo, rng),
        "uniform noise": lambda: uniform_noise(count, rng),
        "gaussian noise": lambda: gaussian_noise(count, rng),
        "flat colours": lambda: flat_colours(count, rng),
    }
    return {name: make() for name, make in makers.items()}
