"""Image bytes -> validated uint8 (32, 32, 3) arrays: the one decoder of training and serving.

The image-folder loader and the service both call `decode_image`, so a file gives the same pixels
when a model is trained on it and when it is served. The service decodes itself (not BentoML's PIL
field) so that the declared Content-Type is ignored and every bad file is a 4xx with a one-line reason.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIZE = (32, 32)
# Formats we accept; others (EPS runs Ghostscript, etc.) are refused before any decoding.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
FORMAT_LIST = "PNG, JPEG, GIF, BMP, WebP, TIFF, PPM"
DEFAULT_MAX_PIXELS = 40_000_000  # width * height; the service's CIFAR10_MAX_IMAGE_PIXELS default
# We enforce our own (lower) pixel limit before decoding, so Pillow's warning is only log noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(ValueError):
    """A client-side image problem; status_code is the HTTP answer."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode any supported image to RGB 32x32 uint8, whatever its format, mode or size."""
    if not data:
        raise ImageError("empty file (0 bytes): expected an image")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except Image.DecompressionBombError:
        raise ImageError(f"image has too many pixels (limit {max_pixels})") from None
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise ImageError(f"could not read image header: {_reason(exc)}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
            )
        if image.format == "PNG":
            _verify_png(data)
        try:
            image.draft("RGB", (SIZE[0] * 4, SIZE[1] * 4))  # JPEG: decode at reduced scale, much faster
            image.load()
            rgb = to_rgb(ImageOps.exif_transpose(image))
            small = rgb.resize(SIZE, Image.Resampling.LANCZOS, reducing_gap=3.0)
        except Image.DecompressionBombError:
            raise ImageError(f"image has too many pixels (limit {max_pixels})") from None
        except Exception as exc:
            raise ImageError(f"could not decode {image.format} image (truncated or corrupt?): {_reason(exc)}") from None
    return np.asarray(small, dtype=np.uint8)


# Leading bytes of the formats we accept: a file that starts like one but that Pillow cannot open
# is a corrupt (or unsupported variant of a) known format, not an unknown one.
SIGNATURES = {
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "TIFF": (b"II*\x00", b"MM\x00*"),
    "BMP": (b"BM",),
}


def sniff_format(data: bytes) -> str | None:
    """The accepted format whose signature `data` starts with, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for name, signatures in SIGNATURES.items():
        if data.startswith(signatures):
            return name
    return None


def _unidentified(data: bytes) -> ImageError:
    """Why Pillow could not open the file: an unknown format (415), or a broken known one (400)."""
    name = sniff_format(data)
    if name is None:
        return ImageError(f"not a supported image (or its header is corrupt): expected {FORMAT_LIST}", 415)
    reason = "header is corrupt or uses an unsupported variant"
    Image.init()
    opener = Image.OPEN.get(name)
    if opener is not None:
        try:  # the format's own plugin says what is wrong (Image.open hides it)
            opener[0](io.BytesIO(data)).close()
        except Exception as exc:
            reason = _reason(exc)
    return ImageError(f"could not read {name} image (corrupt, or a variant that cannot be decoded): {reason}")


def _verify_png(data: bytes) -> None:
    """Pillow skips the CRC of image data while decoding; a checksum error means a damaged file."""
    try:
        with Image.open(io.BytesIO(data), formats=("PNG",)) as check:
            check.verify()
    except Exception as exc:
        raise ImageError(f"could not decode PNG image (truncated or corrupt?): {_reason(exc)}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to RGB: transparency over white, 16-bit and float scaled rather than clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _high_depth_to_l(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit/int/float grey to 8-bit by range: a plain convert would clip most pixels to white."""
    array = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        top = 1.0 if array.size and np.nanmax(array) <= 1.0 else 255.0
    else:
        top = 255.0 if array.size and array.max() <= 255 else 65535.0
    scaled = np.clip(np.nan_to_num(array) / top * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled)


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
