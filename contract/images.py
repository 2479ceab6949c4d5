"""Image bytes -> validated uint8 (32, 32, 3) arrays: the one decoder of training and serving.

The image-folder loader and the service both call `decode_image`, so a file gives the same pixels
when a model is trained on it and when it is served. The service decodes itself (not BentoML's PIL
field) so that the declared Content-Type is ignored and every bad file is a 4xx with a one-line reason.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIZE = (32, 32)
# Formats we accept; others (EPS runs Ghostscript, etc.) are refused before any decoding.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
FORMAT_LIST = "PNG, JPEG, GIF, BMP, WebP, TIFF, PPM"
DEFAULT_MAX_PIXELS = 40_000_000  # width * height; the service's CIFAR10_MAX_IMAGE_PIXELS default
# A tile or strip may exceed the image it belongs to (TIFF tiles are multiples of 16), but not by much.
MIN_BLOCK_PIXELS = 512 * 512
TIFF_TILE_WIDTH, TIFF_TILE_LENGTH, TIFF_ROWS_PER_STRIP = 322, 323, 278
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
HIGH_DEPTH_WORK_SIZE = (SIZE[0] * 4, SIZE[1] * 4)  # high bit depths are shrunk to this before scaling
# We enforce our own (lower) pixel limit before decoding, so Pillow's warning is only log noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(ValueError):
    """A client-side image problem; status_code is the HTTP answer."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass
class OpenedImage:
    """An image whose header passed every check, ready to decode; `pixels` is what decoding will hold."""

    image: Image.Image
    data: bytes
    pixels: int


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode any supported image to RGB 32x32 uint8, whatever its format, mode or size."""
    return decode_opened(open_image(data, max_pixels))


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> OpenedImage:
    """Read the header only and check what decoding would cost, before any pixel is decoded.

    The size, every tile or strip the decoder allocates (a 1x1 TIFF may declare one 32768x32768 tile)
    and the JPEG draft scale are settled here; only the first frame of GIF, TIFF or WebP is ever decoded.
    """
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
    try:
        _check_pixels(image, max_pixels)
        image.draft("RGB", (SIZE[0] * 4, SIZE[1] * 4))  # JPEG: decode at reduced scale, much faster
    except BaseException:
        image.close()
        raise
    return OpenedImage(image, data, image.size[0] * image.size[1])


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    """The image, and each block its decoder allocates at once, within `max_pixels` and the image."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
    for block_width, block_height in _decoder_blocks(image):
        block = block_width * block_height
        if block > max(width * height, MIN_BLOCK_PIXELS) or block > max_pixels:
            raise ImageError(
                f"{image.format} image of {width}x{height} pixels declares a {block_width}x{block_height} "
                f"tile or strip: refused (a decompression bomb)"
            )


def _decoder_blocks(image: Image.Image) -> list[tuple[int, int]]:
    """Sizes of what the decoder fills at once: every tile's extent, and TIFF's own tiles and strips
    (libtiff allocates a whole tile, whatever part of it the image uses)."""
    blocks = [(x1 - x0, y1 - y0) for _, (x0, y0, x1, y1), *_ in image.tile]
    tags = getattr(image, "tag_v2", None)
    if image.format == "TIFF" and tags is not None:
        width, height = image.size
        if TIFF_TILE_WIDTH in tags or TIFF_TILE_LENGTH in tags:
            blocks.append((int(tags.get(TIFF_TILE_WIDTH, width)), int(tags.get(TIFF_TILE_LENGTH, height))))
        rows = int(tags.get(TIFF_ROWS_PER_STRIP, height))
        blocks.append((width, min(rows, height)))
    return blocks


def decode_opened(opened: OpenedImage) -> np.ndarray:
    """Decode a checked image to RGB 32x32 uint8 (the costly part: run it off the event loop)."""
    with opened.image as image:
        if image.format == "PNG":
            _verify_png(opened.data)
        try:
            image.load()
            rgb = to_rgb(ImageOps.exif_transpose(image))
            small = rgb.resize(SIZE, Image.Resampling.LANCZOS, reducing_gap=3.0)
        except Image.DecompressionBombError:
            raise ImageError(f"image has too many pixels ({image.size[0]}x{image.size[1]})") from None
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
    if image.mode in HIGH_DEPTH_MODES:
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
    """16-bit/int/float grey to 8-bit by range: a plain convert would clip most pixels to white.

    The image is shrunk in its own mode first (box filter), so the float arithmetic touches a few
    thousand pixels, never a float64 copy of the full image."""
    width, height = image.size
    target = (min(width, HIGH_DEPTH_WORK_SIZE[0]), min(height, HIGH_DEPTH_WORK_SIZE[1]))
    if target != image.size:
        image = image.resize(target, Image.Resampling.BOX)
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
