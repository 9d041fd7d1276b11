"""A loss-curve PNG with no plotting library: a raster, lines, a 3x5 bitmap font, zlib.

Invariants:
- `loss_curve(path, series)` writes a valid 8-bit RGB PNG: axes, one polyline per series (in
  `COLOURS` order) over the epochs, the y range and epoch count labelled, and a legend.
- A y axis spanning more than two decades is drawn on a log scale (and labelled so).
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

from .files import atomic_write

WIDTH, HEIGHT, MARGIN = 640, 400, 48
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
_FONT = {  # 3x5 glyphs, rows top to bottom, 3 bits each
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "e": "000111111100111", "a": "000111001111111", "c": "000111100100111", "h": "100100111101101",
    "i": "010000010010010", "l": "010010010010010", "n": "000110101101101", "o": "000111101101111",
    "p": "000111101111100", "r": "000111100100100", "s": "000111110011111", "t": "010111010010011",
    "v": "000101101101010", "g": "000111101111001", "y": "000101111001111", "x": "000101010101101",
    "u": "000101101101111", "m": "000111111101101", "d": "001001111101111", " ": "000000000000000",
    "/": "001001010100100", "%": "101001010100101",
}


def loss_curve(path: str, series: dict[str, list[float]], title: str = "loss"):
    canvas = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
    values = [v for ys in series.values() for v in ys if math.isfinite(v)]
    if not values:
        values = [0.0, 1.0]
    lo, hi = min(values), max(values)
    log = lo > 0 and hi / lo > 100
    transform = (lambda v: math.log10(v)) if log else (lambda v: v)
    tlo, thi = transform(lo), transform(hi)
    if thi == tlo:
        tlo, thi = tlo - 1, thi + 1
    epochs = max((len(ys) for ys in series.values()), default=1)

    def point(i, v):
        x = MARGIN + (WIDTH - 2 * MARGIN) * (i / max(epochs - 1, 1))
        y = HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * ((transform(v) - tlo) / (thi - tlo))
        return int(round(x)), int(round(y))

    _line(canvas, MARGIN, HEIGHT - MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN, (0, 0, 0))
    _line(canvas, MARGIN, MARGIN, MARGIN, HEIGHT - MARGIN, (0, 0, 0))
    _text(canvas, 4, MARGIN - 4, f"{hi:.3g}", (0, 0, 0))
    _text(canvas, 4, HEIGHT - MARGIN - 4, f"{lo:.3g}", (0, 0, 0))
    _text(canvas, MARGIN, HEIGHT - MARGIN + 10, "1", (0, 0, 0))
    _text(canvas, WIDTH - MARGIN - 12, HEIGHT - MARGIN + 10, str(epochs), (0, 0, 0))
    _text(canvas, WIDTH // 2 - 20, HEIGHT - MARGIN + 24, "epoch", (0, 0, 0))
    _text(canvas, MARGIN, 12, title + (" log" if log else ""), (0, 0, 0))
    for k, (name, ys) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        points = [point(i, v) for i, v in enumerate(ys) if math.isfinite(v)]
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            _line(canvas, x0, y0, x1, y1, colour)
        for x, y in points[-1:]:
            canvas[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = colour
        legend_y = 12 + 14 * k
        canvas[legend_y:legend_y + 8, WIDTH - 130:WIDTH - 110] = colour
        _text(canvas, WIDTH - 104, legend_y, name, (0, 0, 0))
    _write_png(path, canvas)


def _line(canvas, x0, y0, x1, y1, colour):
    steps = max(abs(x1 - x0), abs(y1 - y0), 1)
    for t in range(steps + 1):
        x = round(x0 + (x1 - x0) * t / steps)
        y = round(y0 + (y1 - y0) * t / steps)
        if 0 <= x < WIDTH and 0 <= y < HEIGHT:
            canvas[y, x] = colour
            if y + 1 < HEIGHT:
                canvas[y + 1, x] = colour


def _text(canvas, x, y, text, colour, scale: int = 2):
    for character in text.lower():
        glyph = _FONT.get(character, _FONT[" "])
        for row in range(5):
            for column in range(3):
                if glyph[3 * row + column] == "1":
                    top, left = y + row * scale, x + column * scale
                    canvas[top:top + scale, left:left + scale] = colour
        x += 4 * scale


def _write_png(path: str, canvas: np.ndarray):
    rows = b"".join(b"\x00" + canvas[y].tobytes() for y in range(canvas.shape[0]))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", canvas.shape[1], canvas.shape[0], 8, 2, 0, 0, 0)
    with atomic_write(path, "plot") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9))
                + chunk(b"IEND", b""))
