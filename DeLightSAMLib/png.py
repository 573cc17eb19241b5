"""A small PNG decoder for the images SimpleITK refuses: gray + alpha (two channels per pixel), 8 or 16 bits.

SimpleITK's reader stops at such files ("Unknown PixelType"); image editors write them whenever a gray image has
transparency. This decodes every non-palette PNG (gray, RGB, gray + alpha, RGBA; 8 or 16 bits; interlaced or not)
into an (H, W, channels) array; palette and sub-byte images are left to SimpleITK, which reads them.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import ImageError

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
# Adam7 passes: first row, first column, row step, column step
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


def read_png(path: Path) -> np.ndarray:
    """(H, W, channels) uint8 or uint16 pixels of a gray, RGB, gray + alpha or RGBA PNG of 8 or 16 bits."""
    data = path.read_bytes()
    if not data.startswith(_SIGNATURE):
        raise ImageError(f"{path} is not a PNG file")
    header, compressed, position = None, [], len(_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        if len(body) < length:
            break
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    else:
        raise ImageError(f"{path} is incomplete: it ends before the PNG end chunk; get the file again")
    if header is None:
        raise ImageError(f"{path} has no PNG header chunk; it is damaged")
    width, height, depth, colour, _, _, interlace = header
    if colour not in _CHANNELS or depth not in (8, 16):
        raise ImageError(f"{path}: PNG colour type {colour} with {depth}-bit samples is not supported here")
    try:
        raw = zlib.decompress(b"".join(compressed))
    except zlib.error as error:
        raise ImageError(f"{path} has damaged PNG image data ({error}); get the file again") from error
    channels, sample_bytes = _CHANNELS[colour], depth // 8
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    image = np.zeros((height, width, channels * sample_bytes), np.uint8)
    offset = 0
    for top, left, row_step, column_step in passes:
        rows, columns = -(-(height - top) // row_step), -(-(width - left) // column_step)
        if rows <= 0 or columns <= 0:
            continue
        stride = columns * channels * sample_bytes
        needed = rows * (stride + 1)
        if len(raw) - offset < needed:
            raise ImageError(f"{path} is incomplete: its PNG image data stops early; get the file again")
        lines = np.frombuffer(raw, np.uint8, needed, offset).reshape(rows, stride + 1)
        offset += needed
        pixels = _unfilter(lines, channels * sample_bytes, path)
        image[top::row_step, left::column_step] = pixels.reshape(rows, columns, -1)
    if sample_bytes == 2:
        return image.view(">u2").astype(np.uint16)
    return image


def _unfilter(lines: np.ndarray, pixel_bytes: int, path: Path) -> np.ndarray:
    """Undo the per-row PNG filters (none, sub, up, average, Paeth) of (rows, 1 + stride) filtered bytes."""
    rows, stride = lines.shape[0], lines.shape[1] - 1
    out = np.zeros((rows, stride), np.uint8)
    previous = np.zeros(stride, np.uint8)
    for index in range(rows):
        kind, line = lines[index, 0], lines[index, 1:]
        if kind == 0:
            row = line.copy()
        elif kind == 1:  # sub: a running sum per byte of the pixel, modulo 256
            row = np.cumsum(line.reshape(-1, pixel_bytes), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:
            row = line + previous
        elif kind in (3, 4):
            row = _unfilter_sequential(line.tolist(), previous.tolist(), pixel_bytes, kind)
        else:
            raise ImageError(f"{path} has damaged PNG image data (filter {kind}); get the file again")
        out[index] = previous = row
    return out


def _unfilter_sequential(line: list[int], above: list[int], pixel_bytes: int, kind: int) -> np.ndarray:
    """Average (3) and Paeth (4) filters: each byte depends on the one a pixel to its left."""
    row = [0] * len(line)
    for i, value in enumerate(line):
        left = row[i - pixel_bytes] if i >= pixel_bytes else 0
        up = above[i]
        if kind == 3:
            predicted = (left + up) >> 1
        else:
            corner = above[i - pixel_bytes] if i >= pixel_bytes else 0
            estimate = left + up - corner
            distance_left, distance_up, distance_corner = (
                abs(estimate - left),
                abs(estimate - up),
                abs(estimate - corner),
            )
            if distance_left <= distance_up and distance_left <= distance_corner:
                predicted = left
            elif distance_up <= distance_corner:
                predicted = up
            else:
                predicted = corner
        row[i] = (value + predicted) & 0xFF
    return np.array(row, np.uint8)
