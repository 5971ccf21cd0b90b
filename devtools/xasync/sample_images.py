"""Small real images made on the fly (Pillow), so tests and benchmarks need no binary fixtures."""

from __future__ import annotations

import base64
import io

from PIL import Image


def png_bytes(width: int = 32, height: int = 24, color: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(width: int = 32, height: int = 24) -> str:
    return base64.b64encode(png_bytes(width, height)).decode()
