#!/usr/bin/env python3
"""Writes png-bomb.png: a valid 8000x8000 RGBA PNG of black pixels, about 250 KB on the
wire and 256 MB once decoded. The hostile-input tests send it to an image pipeline, whose
decoder must refuse it within its allocation limit. Usage: python3 make_png_bomb.py"""

import os
import struct
import zlib

WIDTH = HEIGHT = 8000
CHANNELS = 4  # RGBA, 8 bits each


def chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def main() -> None:
    row = b"\x00" + b"\x00" * (WIDTH * CHANNELS)  # filter type 0, then the pixels
    z = zlib.compressobj(9)
    idat = bytearray()
    for _ in range(HEIGHT):
        idat += z.compress(row)
    idat += z.flush()
    ihdr = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 6, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b"")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "png-bomb.png")
    with open(out, "wb") as f:
        f.write(png)
    print(f"{out}: {len(png)} bytes, {WIDTH * HEIGHT * CHANNELS} bytes decoded")


if __name__ == "__main__":
    main()
