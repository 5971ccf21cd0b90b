"""What the emulator's worker does to one record: load the real image, answer as the service would.

Results of the non-upscaler types are plausible and deterministic (derived from the image bytes),
not real recognition: the point is the shapes, the per-record `_status`, and real image handling.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import uuid
from collections.abc import Callable
from typing import Any

import requests
from PIL import Image, UnidentifiedImageError

MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
MAX_UPSCALED_PIXELS = 50_000_000
UPSCALE_FACTORS = {"upscale_2x": 2, "upscale_4x": 4, "upscale_8x": 8}

# Stores upscaled bytes under a name and returns the URL they are served at.
PublishImage = Callable[[bytes, str], str]


class RecordFailure(Exception):
    """The record cannot be processed; becomes a non-200 `_status` with this text."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def load_image_bytes(record: dict[str, Any], session: requests.Session, timeout: float) -> bytes:
    if record.get("_base64"):
        try:
            return base64.b64decode(str(record["_base64"]), validate=True)
        except (binascii.Error, ValueError):
            raise RecordFailure(400, "Unable to decode _base64 data") from None
    try:
        with session.get(str(record["_url"]), timeout=timeout, stream=True) as answer:
            if answer.status_code != 200:
                raise RecordFailure(400, f"Unable to download image from _url: HTTP {answer.status_code}")
            data = answer.raw.read(MAX_DOWNLOAD_BYTES + 1, decode_content=True)
    except requests.RequestException as error:
        raise RecordFailure(400, f"Unable to download image from _url: {type(error).__name__}") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise RecordFailure(400, "Image is too large")
    return data


def open_image(data: bytes) -> Image.Image:
    if not data:
        raise RecordFailure(400, "Unable to load image: the file is empty")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        reason = "not a supported image format" if isinstance(error, UnidentifiedImageError) else type(error).__name__
        raise RecordFailure(400, f"Unable to load image: {reason}") from None
    return image


def _digest_numbers(data: bytes) -> list[int]:
    return list(hashlib.sha256(data).digest())


def _grade(byte: int) -> float:
    return 5.0 + (byte % 11) / 2  # 5.0 .. 10.0 in half steps


def card_grader_result(data: bytes, image: Image.Image, endpoint: str | None) -> dict[str, Any]:
    digits = _digest_numbers(data)
    grades = {name: _grade(digits[i]) for i, name in enumerate(("corners", "edges", "surface", "centering"))}
    final = min(grades.values())  # a card grades as its weakest aspect
    condition = "Mint" if final >= 9 else "Near Mint" if final >= 8 else "Excellent" if final >= 6.5 else "Good"
    width, height = image.size
    return {
        "_objects": [{"name": "Card", "id": 0, "bound_box": [0, 0, width, height], "prob": 0.9 + digits[5] % 10 / 100}],
        "grades": {**grades, "final": final, "condition": condition},
        "card": [{"side": "front", "endpoint": endpoint or "grade"}],
    }


SETS = ("Base Set", "Jungle", "Fossil", "Team Rocket", "Gym Heroes", "Neo Genesis")
NAMES = ("Charizard", "Pikachu", "Blastoise", "Venusaur", "Mewtwo", "Gengar", "Snorlax", "Eevee")


def collectibles_result(data: bytes, image: Image.Image, endpoint: str | None) -> dict[str, Any]:
    digits = _digest_numbers(data)
    width, height = image.size
    return {
        "_objects": [
            {
                "name": "Card",
                "id": 0,
                "bound_box": [0, 0, width, height],
                "prob": 0.9 + digits[3] % 10 / 100,
                "_identification": {
                    "best_match": {
                        "name": NAMES[digits[0] % len(NAMES)],
                        "set": SETS[digits[1] % len(SETS)],
                        "card_number": f"{digits[2] % 120 + 1}/120",
                        "year": 1999 + digits[4] % 20,
                    },
                    "distances": [round(0.05 + digits[6] % 20 / 100, 2)],
                },
            }
        ],
    }


def flows_result(data: bytes, image: Image.Image, endpoint: str | None) -> dict[str, Any]:
    digits = _digest_numbers(data)
    categories = ("Photo", "Illustration", "Product", "Document")
    return {
        "_tags": {
            "Category": [
                {"name": categories[digits[0] % len(categories)], "prob": round(0.6 + digits[1] % 40 / 100, 2)}
            ]
        },
        "_tags_simple": [categories[digits[0] % len(categories)]],
    }


def upscaler_result(image: Image.Image, endpoint: str | None, publish: PublishImage) -> dict[str, Any]:
    factor = UPSCALE_FACTORS.get(endpoint or "upscale_2x", 2)
    width, height = image.size
    new_size = (width * factor, height * factor)
    if new_size[0] * new_size[1] > MAX_UPSCALED_PIXELS:
        raise RecordFailure(400, f"Image is too large to upscale {factor}x")
    upscaled = image.convert("RGB").resize(new_size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    upscaled.save(buffer, format="JPEG", quality=90)
    url = publish(buffer.getvalue(), f"{uuid.uuid4()}.jpg")
    return {"_upscaled_width": new_size[0], "_upscaled_height": new_size[1], "_upscaled_image_url": url}


def process_record(
    record: dict[str, Any],
    request_type: str,
    endpoint: str | None,
    *,
    session: requests.Session,
    fetch_timeout: float,
    publish: PublishImage,
) -> dict[str, Any]:
    """The record as the service answers it: the input fields, `_width`/`_height`, `_status`, results."""
    # Inline image data is not echoed back, as the service does not return it either.
    answer = {name: value for name, value in record.items() if name != "_base64"}
    request_id = str(uuid.uuid4())
    try:
        data = load_image_bytes(record, session, fetch_timeout)
        image = open_image(data)
        answer["_width"], answer["_height"] = image.size
        if request_type == "upscaler":
            answer.update(upscaler_result(image, endpoint, publish))
        elif request_type == "card-grader":
            answer.update(card_grader_result(data, image, endpoint))
        elif request_type == "collectibles-recognition":
            answer.update(collectibles_result(data, image, endpoint))
        else:
            answer.update(flows_result(data, image, endpoint))
    except RecordFailure as failure:
        answer["_status"] = {"code": failure.code, "text": failure.text, "request_id": request_id}
        return answer
    answer["_status"] = {"code": 200, "text": "OK", "request_id": request_id}
    return answer
