"""The template parameters `xasync up` runs the local stack with, decided before anything starts."""

from __future__ import annotations

from typing import Any

import pytest

from xasync.local_stack import stack_parameters
from xasync.template import Resolver, functions, load_template


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def submit_environment(template: dict[str, Any], parameters: dict[str, str]) -> dict[str, str]:
    return functions(template, Resolver(template, parameters=parameters))["SubmitFunction"].environment


def test_against_the_real_ximilar_every_image_goes_inline(template: dict[str, Any]) -> None:
    # Ximilar cannot download presigned URLs of moto on 127.0.0.1: the bytes have to travel in the request.
    parameters = stack_parameters(template, "https://api.ximilar.com", {})
    max_image_bytes = str(template["Parameters"]["MaxImageBytes"]["Default"])
    assert parameters["InlineBase64MaxBytes"] == max_image_bytes
    environment = submit_environment(template, parameters)
    assert environment["INLINE_BASE64_MAX_BYTES"] == environment["MAX_IMAGE_BYTES"] == max_image_bytes


def test_inline_follows_a_max_image_bytes_override(template: dict[str, Any]) -> None:
    parameters = stack_parameters(template, "https://api.ximilar.com", {"MaxImageBytes": "5000000"})
    assert parameters["InlineBase64MaxBytes"] == "5000000"
    assert submit_environment(template, parameters)["INLINE_BASE64_MAX_BYTES"] == "5000000"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8900", "http://localhost:8900/"])
def test_an_emulator_on_this_machine_fetches_presigned_urls(template: dict[str, Any], url: str) -> None:
    parameters = stack_parameters(template, url, {"Routes": "incoming/=flows:x"})
    assert "InlineBase64MaxBytes" not in parameters  # the template's default: presigned URLs
    assert (parameters["XimilarApiUrl"], parameters["Routes"]) == (url, "incoming/=flows:x")
