"""`xasync ui` in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) looks at
the page of a running local stack after the demo's samples went through it, as a person would."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from xasync import cli, local_stack, ui
from xasync.local_stack import LocalStack
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from xasync.target import Target
from xasync.template import PROJECT_ROOT
from ximilar_async.adapters.dynamodb.models import bind_tables
from ximilar_async.values import identity
from ximilar_async.values.entities import OutputState
from ximilar_async.values.statuses import TERMINAL_STATUSES
from ximilar_emulator import EmulatorControl

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SAMPLES = PROJECT_ROOT / "samples"
SAMPLE_KEYS = sorted(suffix for _, suffix in cli.files_under([SAMPLES]))
SCRIPT_KEY = "incoming/x<script>window.pwned=1</script>.png"  # a key is user data: shown, never run
ALL_KEYS = [*SAMPLE_KEYS, SCRIPT_KEY]
NOT_IMAGES = {"incoming/notes.txt": "not an image extension: .txt", "incoming/photos/empty.png": "the object is empty"}
UNFINISHED_JS = "['SUBMITTING', 'CREATED', 'PROCESSING'].includes(card.dataset.status)"
SCREENSHOT = PROJECT_ROOT / "build" / "ui.png"  # the test's artifact; docs/ui.png is a copy of it


@pytest.fixture(scope="module")
def local() -> Iterator[LocalStack]:
    with local_stack.running(parameters={"LogLevel": "WARNING"}, sweep_every=1.0, retry_delay=1) as running:
        yield running


@pytest.fixture(scope="module")
def target(local: LocalStack) -> Target:
    return Target(local.outputs, int(local.environments["SweeperFunction"]["INDEX_SHARDS"]), local.aws_endpoint)


@pytest.fixture(scope="module")
def page_url(target: Target) -> Iterator[str]:
    with ui.serving(ui.create_app(target.page_source())) as url:
        yield url


@pytest.fixture(scope="module")
def uploaded(local: LocalStack, target: Target) -> list[str]:
    """The demo's samples and a key holding a script, uploaded slowly enough to be seen in flight."""
    control = EmulatorControl(local.ximilar_url)
    control.set_knobs(processing_delay_seconds=4.0)
    cli.upload_files(target, [SAMPLES], "")
    local.client("s3").put_object(Bucket=local.outputs["InputBucketName"], Key=SCRIPT_KEY, Body=png_bytes(20, 14))
    storage = target.storage()
    uris = [identity.image_uri(local.outputs["InputBucketName"], key) for key in ALL_KEYS]
    wait_for(
        lambda: len(storage.images.images_by_uri(uris)) == len(uris),
        timeout=60,
        interval=0.2,
        what="an item per upload",
    )
    return uris


@pytest.fixture(scope="module")
def finished(local: LocalStack, target: Target, uploaded: list[str]) -> list[str]:
    storage = target.storage()

    def all_finished() -> bool:
        return all(image.status in TERMINAL_STATUSES for image in storage.images.images_by_uri(uploaded).values())

    wait_for(all_finished, timeout=120, interval=0.25, what="every upload to finish")
    EmulatorControl(local.ximilar_url).set_knobs(processing_delay_seconds=0.3)
    return uploaded


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH: `apt-get install -y chromium` (.ci/run installs it)")
    with playwright_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # Tall enough that every card is in view, so lazily loaded thumbnails load.
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    opened = context.new_page()
    yield opened
    context.close()


def card(page: Any, key: str) -> Any:
    return page.locator("article.card").filter(has=page.locator("a.key", has_text=re.compile(f"^{re.escape(key)}$")))


def cards_state(page: Any) -> list[tuple[str, bool]] | None:
    """(key, unfinished) per card, or None while the page is reloading itself."""
    try:
        return [
            (str(key), bool(unfinished))
            for key, unfinished in page.evaluate(
                f"() => Array.from(document.querySelectorAll('article.card'), card => "
                f"[card.querySelector('a.key').textContent, {UNFINISHED_JS}])"
            )
        ]
    except playwright_api.Error:  # the execution context went away with a reload
        return None


def loaded_images(page: Any, selector: str) -> list[tuple[str, int]]:
    """(alt, naturalWidth) of every image matching `selector` that finished loading."""
    found = page.evaluate(
        "selector => Array.from(document.querySelectorAll(selector))"
        ".filter(img => img.complete).map(img => [img.alt, img.naturalWidth])",
        selector,
    )
    return [(str(alt), int(width)) for alt, width in found]


def seed_outputs(local: LocalStack, target: Target) -> None:
    """Once the output copier has stored the upscaled copies, turn two of them into the other states a
    person must see: one PENDING, one FAILED with a reason holding markup. City at night keeps its copy."""
    tables = bind_tables(local.outputs["ImagesTableName"], local.outputs["RequestsTableName"], host=local.aws_endpoint)
    bucket = local.outputs["InputBucketName"]
    storage = target.storage()
    upscaled = ["incoming/photos/city at night.png", "incoming/photos/sunset.png", "incoming/photos/forest.jpg"]

    def copied() -> bool:
        images = [storage.images.image(identity.image_uri(bucket, key)) for key in upscaled]
        return all(
            image is not None and image.outputs and {o.state for o in image.outputs.values()} == {OutputState.STORED}
            for image in images
        )

    wait_for(copied, timeout=60, what="the output copier to store every upscaled image")
    wait_for(local.invocations.idle, timeout=30, what="the functions to settle")
    results = local.outputs["ResultsBucketName"]
    outputs = {
        "incoming/photos/sunset.png": {"uri": f"s3://{results}/outputs/photos/sunset.upscaled.png", "state": "PENDING"},
        "incoming/photos/forest.jpg": {
            "uri": f"s3://{results}/outputs/photos/forest.upscaled.jpg",
            "state": "FAILED",
            "reason": "<b>expired</b> at Ximilar before the copy",
        },
    }
    for key, output in outputs.items():
        tables.images(identity.image_uri(bucket, key)).update(actions=[tables.images.outputs.set({"upscaled": output})])


def test_the_page_refreshes_itself_while_images_are_in_flight(page: Any, page_url: str, uploaded: list[str]) -> None:
    page.goto(page_url)
    at_load = cards_state(page)
    assert at_load is not None
    assert any(unfinished for _, unfinished in at_load), "expected images in flight when the page loaded"
    assert page.locator("#refreshing").is_visible()

    def all_shown_and_finished() -> bool:
        state = cards_state(page)
        return state is not None and len(state) == len(ALL_KEYS) and not any(unfinished for _, unfinished in state)

    # No reload from here: the page's own polling must bring every result in.
    wait_for(all_shown_and_finished, timeout=120, interval=0.5, what="the page to show every image finished")
    assert page.locator("#refreshing").is_hidden()


def test_every_image_has_its_thumbnail_and_failures_show_their_reason(
    page: Any, page_url: str, finished: list[str]
) -> None:
    page.goto(page_url)
    images = [key for key in ALL_KEYS if key not in NOT_IMAGES]
    wait_for(lambda: len(loaded_images(page, "img.input")) == len(images), timeout=30, what="every thumbnail to load")
    thumbnails = dict(loaded_images(page, "img.input"))
    assert set(thumbnails) == {f"input {key}" for key in images}  # spaces, `+`, ü and a script in the keys
    assert all(width > 0 for width in thumbnails.values())
    for key, reason in NOT_IMAGES.items():
        shown = card(page, key)
        assert shown.locator(".badge").inner_text() == "FAILED"
        assert shown.locator(".summary").inner_text() == reason
        assert shown.locator(".placeholder").inner_text() == "no preview"
    assert card(page, "incoming/cards/charizard-front.png").locator(".summary").inner_text().startswith("grade ")
    assert card(page, "incoming/photos/sunset.png").locator(".type").inner_text() == "upscaler"


def test_the_upscaled_output_is_shown_beside_its_input(
    page: Any, page_url: str, local: LocalStack, target: Target, finished: list[str]
) -> None:
    seed_outputs(local, target)
    page.goto(page_url)
    city = card(page, "incoming/photos/city at night.png")
    width = "img => img.complete ? img.naturalWidth : 0"
    wait_for(
        lambda: (
            city.locator("img.output").count() == 1
            and city.locator("img.input").evaluate(width) > 0
            and city.locator("img.output").evaluate(width) > 0
        ),
        timeout=30,
        what="city at night's input and its stored copy to load",
    )
    input_width = city.locator("img.input").evaluate(width)
    output_width = city.locator("img.output").evaluate(width)
    assert output_width == 2 * input_width  # the upscaler doubled it: the "after" beside the "before"
    assert card(page, "incoming/photos/sunset.png").locator(".output-PENDING .placeholder").inner_text() == "pending"
    failed = card(page, "incoming/photos/forest.jpg").locator(".output-FAILED .placeholder")
    assert failed.inner_text() == "<b>expired</b> at Ximilar before the copy"  # shown as text, not markup
    assert card(page, "incoming/cards/mewtwo-back.png").locator("figure").count() == 1  # no outputs: input only
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 720})  # every image has loaded: the page fits its content
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 0


def test_the_status_filter_narrows_the_grid_and_the_counts_agree(page: Any, page_url: str, finished: list[str]) -> None:
    page.goto(page_url)
    failed_count = page.locator(".count[data-status=FAILED] .number")
    wait_for(lambda: failed_count.inner_text() != "…", timeout=30, what="the counts to come in")
    assert failed_count.inner_text() == "2"
    assert page.locator(".count[data-status=DONE] .number").inner_text() == str(len(ALL_KEYS) - 2)

    page.select_option("select[name=status]", "FAILED")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"status=FAILED"))

    shown = page.locator("article.card a.key").all_inner_texts()
    assert sorted(shown) == sorted(NOT_IMAGES)
    page.select_option("select[name=type]", "flows")
    page.select_option("select[name=status]", "DONE")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"type=flows"))
    assert sorted(page.locator("article.card a.key").all_inner_texts()) == [
        key for key in SAMPLE_KEYS if key.startswith("incoming/flows/")
    ]


def test_the_detail_view_shows_the_item_and_working_links(page: Any, page_url: str, finished: list[str]) -> None:
    key = "incoming/flows/ünïcode+name.png"
    page.goto(page_url)
    card(page, key).locator("a.key").click()
    page.wait_for_url(re.compile(r"/image\?uri="))
    assert page.locator("h1.key").inner_text() == key
    assert f'"key": "{key}"' in page.locator("#document").inner_text()
    wait_for(lambda: loaded_images(page, "img.input"), timeout=30, what="the input image")
    href = page.get_by_role("link", name="input object").get_attribute("href")
    downloaded = page.request.get(href)
    assert downloaded.ok
    assert downloaded.body() == (SAMPLES / key).read_bytes()

    page.get_by_role("link", name=re.compile("every image of request")).click()
    assert sorted(page.locator("article.card a.key").all_inner_texts()) == [
        k for k in SAMPLE_KEYS if k.startswith("incoming/flows/")
    ]


def test_a_key_holding_a_script_is_shown_as_text_and_never_runs(page: Any, page_url: str, finished: list[str]) -> None:
    page.goto(page_url)
    assert card(page, SCRIPT_KEY).count() == 1
    assert page.evaluate("() => window.pwned") is None
    card(page, SCRIPT_KEY).locator("a.key").click()
    assert page.locator("h1.key").inner_text() == SCRIPT_KEY
    assert page.evaluate("() => window.pwned") is None


def test_the_page_is_read_only_and_answers_only_to_loopback_names(page_url: str, finished: list[str]) -> None:
    assert requests.get(page_url, timeout=10).status_code == 200
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert requests.request(method, page_url, timeout=10).status_code == 405
    assert requests.get(page_url, headers={"Host": "attacker.example"}, timeout=10).status_code == 400
    assert requests.get(f"{page_url}?cursor=not-a-cursor", timeout=10).status_code == 400
    assert requests.get(f"{page_url}?status=NOPE", timeout=10).status_code == 400
    assert "script-src 'self'" in requests.get(page_url, timeout=10).headers["Content-Security-Policy"]
