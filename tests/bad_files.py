"""A corpus of hostile and odd uploads, built in memory (nothing big is shipped with the tests).

`corpus()` maps a short name to (bytes, expected status, a piece of the expected message); a
status of 200 means the file is a valid image the service must classify.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, bit_depth: int = 8, color_type: int = 2, rows: int | None = None) -> bytes:
    """A PNG of width x height all-zero pixels, compressed row by row (never held in memory).

    Deflate tops out near 1000:1, so 20000x20000 RGB (1.2 GB of pixels) is about 1.2 MB and takes
    seconds to build; `rows` stops the data after that many rows (the header still claims all).
    8-bit grey gives 400 million pixels in about 390 KB, 1-bit grey in about 50 KB.
    """
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = bytes(1 + (width * channels * bit_depth + 7) // 8)  # filter byte 0 + zero pixels
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height if rows is None else rows)]
    idat = b"".join(parts) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bad_crc_png(data: bytes) -> bytes:
    """Flip the CRC of the first IDAT chunk (the header stays valid)."""
    start = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[start : start + 4])[0]
    crc_at = start + 8 + length
    return data[:crc_at] + bytes(b ^ 0xFF for b in data[crc_at : crc_at + 4]) + data[crc_at + 4 :]


def bad_crc_header_png(data: bytes) -> bytes:
    """Flip the CRC of IHDR: Pillow refuses it while reading the header."""
    return data[:29] + bytes(b ^ 0xFF for b in data[29:33]) + data[33:]


def tiff_with_compression(image: Image.Image, compression: int) -> bytes:
    """A well-formed TIFF whose Compression tag names a scheme Pillow has no decoder for."""
    data = bytearray(encode(image, "TIFF"))  # uncompressed, little-endian ('II*\0')
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack("<I", data[4:8])[0]
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[entry : entry + 4])
        if tag == 259:  # Compression, SHORT
            assert kind == 3
            data[entry + 8 : entry + 10] = struct.pack("<H", compression)
            return bytes(data)
    raise AssertionError("no Compression tag in the TIFF Pillow wrote")


def multi_frame_gif(rgb: Image.Image, frames: int = 5) -> bytes:
    images = [rgb.rotate(30 * i).convert("P") for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=50, loop=0)


SVG = b"""<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><rect width="32" height="32" fill="red"/></svg>
"""
HTML = b"<!DOCTYPE html><html><head><title>cat</title></head><body><img src=cat.jpg></body></html>\n"


def corpus() -> dict[str, tuple[bytes, int, str]]:
    """name -> (file bytes, expected status, a piece of the expected message ('' for 200))."""
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    png = encode(rgb, "PNG")
    jpeg = encode(rgb, "JPEG", quality=90)
    rgb16 = np.asarray(rgb).astype(np.uint16) * 257
    return {
        # refused: 4xx with a one-line message
        "zero_bytes": (b"", 400, "empty file"),
        "text": (b"a plain text file, not pixels\n" * 20, 415, "not a supported image"),
        "html": (HTML, 415, "not a supported image"),
        "svg": (SVG, 415, "not a supported image"),
        "truncated_png": (png[: len(png) // 2], 400, "truncated"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], 400, "truncated"),
        "png_header_only": (png[:33], 400, "could not read PNG image"),
        "png_bad_crc_idat": (bad_crc_png(png), 400, "could not decode PNG"),
        "png_bad_crc_ihdr": (bad_crc_header_png(png), 400, "bad header checksum"),
        "tiff_jpeg2000_compression": (tiff_with_compression(rgb, 34712), 400, "could not read TIFF image"),
        "tiff_old_jpeg_no_tables": (tiff_with_compression(rgb, 6), 400, "could not decode TIFF image"),
        "tiff_zstd_garbage": (tiff_with_compression(rgb, 50000), 400, "could not decode TIFF image"),
        "bomb_20000_rgb": (png_bomb(20000, 20000, rows=1000), 400, "pixels"),
        "bomb_20000_grey": (png_bomb(20000, 20000, color_type=0), 400, "pixels"),
        "bomb_20000_grey_1bit": (png_bomb(20000, 20000, bit_depth=1, color_type=0), 400, "pixels"),
        "bomb_40000_1bit_under_pillow_limit": (png_bomb(40000, 2000, bit_depth=1, color_type=0), 400, "over the limit"),
        # valid, however odd: 200
        "animated_gif": (multi_frame_gif(rgb), 200, ""),
        "one_pixel": (encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), 200, ""),
        "one_pixel_jpeg": (encode(Image.new("RGB", (1, 1), (10, 200, 30)), "JPEG"), 200, ""),
        "one_by_thousand": (encode(Image.new("L", (1, 1000), 128), "PNG"), 200, ""),
        "png_16bit_grey": (encode(Image.fromarray(rng.integers(0, 65536, (30, 30)).astype(np.uint16)), "PNG"), 200, ""),
        "png_16bit_rgb": (_png_16bit_rgb(rgb16), 200, ""),
        "cmyk_jpeg": (encode(rgb.convert("CMYK"), "JPEG"), 200, ""),
        "grey_alpha_png": (encode(rgb.convert("LA"), "PNG"), 200, ""),
        "grey_alpha_webp": (encode(rgb.convert("RGBA"), "WEBP"), 200, ""),
        "palette_transparency": (encode(rgb.convert("P"), "PNG", transparency=0), 200, ""),
        "tiff_lzw": (encode(rgb, "TIFF", compression="tiff_lzw"), 200, ""),
    }


def _png_16bit_rgb(pixels: np.ndarray) -> bytes:
    """16-bit RGB PNG written by hand (Pillow cannot save that mode)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")
