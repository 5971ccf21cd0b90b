"""The local stack with `--runtime lambda`: each function from the `sam build` output, under aws-lambda-rie and
awslambdaric on python3.13, a process each, invoked over the emulator's invoke API.

They need the build (`make build`; XASYNC_BUILD_DIR names another), .venv-lambda (`make lambda-venv`) and
aws-lambda-rie (`make sam-venv`). Without them they skip, saying which is missing; under CI (CI set) they fail.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from tests.e2e.test_xasync_up import READY, Lines, alive
from tests.support.events import EVENTS, load_event
from tests.support.lambda_runtime import BUILD_DIR, require_lambda_runtime
from tests.support.stack_items import image
from xasync import cli, lambda_rie, local_stack
from xasync.lambda_rie import BuiltFunction, FunctionError, LambdaRuntime
from xasync.local_stack import LocalStack
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from xasync.template import created_functions, load_template
from ximilar_emulator import EmulatorControl

PIDS = re.compile(r"^\s*Server pids\s+(.+)$")


@pytest.fixture(scope="module")
def local() -> Iterator[LocalStack]:
    require_lambda_runtime()
    with local_stack.running(
        parameters={"LogLevel": "WARNING"}, sweep_every=1.0, retry_delay=1, runtime="lambda", build_dir=BUILD_DIR
    ) as running:
        yield running


@pytest.fixture
def control(local: LocalStack) -> Iterator[EmulatorControl]:
    emulator = EmulatorControl(local.ximilar_url)
    emulator.set_knobs(webhook_drop_rate=0.0, webhook_duplicate_rate=0.0, final_state="DONE", artifact_ttl_seconds=0.0)
    yield emulator
    emulator.set_knobs(webhook_drop_rate=0.0)


def put(local: LocalStack, keys_: list[str]) -> None:
    s3 = local.client("s3")
    for key in keys_:
        s3.put_object(Bucket=local.outputs["InputBucketName"], Key=key, Body=png_bytes(16, 12))


def finished(local: LocalStack, key: str) -> bool:
    """DONE, and no output still being copied."""
    item = image(local, key)
    outputs = item.get("outputs", {}).get("M", {})
    return (
        bool(item)
        and item["status"]["S"] == "DONE"
        and all(o["M"]["state"]["S"] != "PENDING" for o in outputs.values())
    )


def answers_of(local: LocalStack, function: str) -> list[Any]:
    with local.invocations.lock:
        return list(local.invocations.answers.get(function, []))


def test_each_function_runs_from_the_build_in_a_runtime_process_of_its_own(local: LocalStack) -> None:
    # Given the stack up with --runtime lambda
    created = created_functions(local.template)
    # Then nothing was imported here: each function is an emulator of its own, serving its built folder
    assert not local.modules
    assert set(local.lambda_functions) == set(created)
    for logical_id, function in local.lambda_functions.items():
        assert function.function.task_root == BUILD_DIR.resolve() / logical_id
        assert local.servers[logical_id].pid == function.pid
        assert "aws-lambda-rie" in local.resources[logical_id]
        # with the environment the in-process mode gives it, and Lambda's own beside it
        assert local.environments[logical_id].items() <= function.environment.items()
        assert function.environment["LAMBDA_TASK_ROOT"] == str(function.function.task_root)
        assert function.environment["PYTHONPATH"].split(os.pathsep)[0] == str(function.function.task_root)
    assert "sam build output" in local.resources["SharedLayer"]


def test_an_upload_ends_done_with_its_copy_stored_through_all_four_functions(
    local: LocalStack, control: EmulatorControl
) -> None:
    # Given an upscaler image and two of a flow, put as `aws s3 cp` would
    keys_ = ["incoming/rie/photo.png", "incoming/flows/rie-0.png", "incoming/flows/rie-1.png"]
    put(local, keys_)
    # When the pipeline has run them
    wait_for(lambda: all(finished(local, key) for key in keys_), timeout=60, interval=0.25, what="the images DONE")
    # Then the results are there, the upscaled copy stored by the outputs function
    assert image(local, "incoming/rie/photo.png")["result"]["M"]["_upscaled_width"]["N"] == "32"
    outputs = image(local, "incoming/rie/photo.png")["outputs"]["M"]
    assert {o["M"]["state"]["S"] for o in outputs.values()} == {"STORED"}
    assert image(local, "incoming/flows/rie-0.png")["result"]["M"]["_tags"]
    # and every function was cold-started by its runtime, once (RIE reported its init)
    for logical_id in ("SubmitFunction", "WebhookFunction", "OutputsFunction", "SweeperFunction"):
        assert answers_of(local, logical_id), logical_id
        assert len(local.lambda_functions[logical_id].init_durations_ms) == 1, logical_id
    assert not local.invocations.errors


def test_a_webhook_with_a_bad_token_is_answered_401_by_the_function(local: LocalStack) -> None:
    # Given a webhook whose token no key of the stack signed
    event = load_event("webhook-wrong-token.json")
    headers = {name: value for name, value in event["headers"].items() if name.startswith("x-xasync-")}
    # When Ximilar (here: the test) posts it to the HTTP API
    answer = requests.post(
        local.outputs["WebhookUrl"],
        data=event["body"],
        headers={**headers, "Content-Type": "application/json"},
        timeout=30,
    )
    # Then the function, under the runtime, refuses it
    assert answer.status_code == 401, answer.text


def test_the_sweeper_records_a_request_whose_webhook_was_lost(local: LocalStack, control: EmulatorControl) -> None:
    # Given Ximilar's webhooks lost
    control.set_knobs(webhook_drop_rate=1.0)
    before = sum(answer.get("recorded", 0) for answer in answers_of(local, "SweeperFunction"))
    # When an image is uploaded
    put(local, ["incoming/rie/lost-webhook.png"])
    # Then a sweep run by the runtime finds Ximilar's result and records it
    wait_for(lambda: finished(local, "incoming/rie/lost-webhook.png"), timeout=60, interval=0.25, what="DONE")
    wait_for(local.invocations.idle, timeout=30, what="the sweep to answer")
    after = sum(answer.get("recorded", 0) for answer in answers_of(local, "SweeperFunction"))
    assert after - before >= 1
    assert any(webhook["outcome"] == "dropped" for webhook in control.webhooks())


@pytest.mark.parametrize(
    ("function", "name", "expect"),
    [
        ("WebhookFunction", "webhook-wrong-token.json", '"statusCode": 401'),
        ("SweeperFunction", "schedule.json", '"taken"'),
    ],
)
def test_xasync_invoke_cold_starts_a_runtime_of_its_own(
    local: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, function: str, name: str, expect: str
) -> None:
    # Given the state `xasync up` writes, so the CLI finds this stack
    monkeypatch.setattr(local_stack, "STATE_FILE", tmp_path / "local.json")
    local_stack.write_state(local, tmp_path / "local.json")
    running = local.lambda_functions[function].pid
    # When an event is invoked as `sam local invoke` would
    result = CliRunner().invoke(
        cli.main,
        ["invoke", function, "--event", str(EVENTS / name), "--runtime", "lambda", "--build-dir", str(BUILD_DIR)],
    )
    # Then it answers from a runtime of its own, the stack's left to its own events
    assert result.exit_code == 0, result.output
    assert expect in result.stdout
    assert local.lambda_functions[function].pid == running


# --- one function under the emulator, as Lambda treats a failure ---------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[lambda_rie.RieFunction]:
    """A handler that echoes, raises or sleeps, with a 1 s timeout, under aws-lambda-rie."""
    require_lambda_runtime(BUILD_DIR)
    (tmp_path / "tiny.py").write_text(
        "import time\n\n\ndef handler(event, context):\n"
        "    if event.get('raise'):\n        raise ValueError(event['raise'])\n"
        "    time.sleep(event.get('sleep', 0))\n"
        "    return {'echo': event, 'remaining_ms': context.get_remaining_time_in_millis()}\n"
    )
    function = BuiltFunction("Tiny", tmp_path, (), "tiny.handler", "python3.13", timeout=1, memory_size=128)
    with lambda_rie.running_function(function, {}, LambdaRuntime.locate(BUILD_DIR), echo=None) as running:
        yield running


def test_an_answer_error_and_timeout_come_back_as_lambda_gives_them(tiny: lambda_rie.RieFunction) -> None:
    # An answer, with the runtime's own deadline (the function's 1 s)
    answer = tiny.invoke({"n": 1})
    assert answer["echo"] == {"n": 1}
    assert 0 < answer["remaining_ms"] <= 1000
    # The handler's exception, as the runtime reports it
    with pytest.raises(FunctionError) as raised:
        tiny.invoke({"raise": "nope"})
    assert (raised.value.error_type, raised.value.message) == ("ValueError", "nope")
    # A timeout: the runtime is stopped, and the next event gets a new one (a second cold start)
    with pytest.raises(FunctionError) as timed_out:
        tiny.invoke({"sleep": 5})
    assert timed_out.value.error_type == "Sandbox.Timedout"
    assert tiny.invoke({"n": 2})["echo"] == {"n": 2}
    assert len(tiny.init_durations_ms) == 2


# --- `xasync up --runtime lambda`, stopped by a signal -------------------------------------------------------


@pytest.mark.slow
def test_sigterm_stops_up_with_every_emulator_and_runtime_it_started(tmp_path: Path) -> None:
    require_lambda_runtime()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xasync.cli",
            "up",
            "--runtime",
            "lambda",
            "--build-dir",
            str(BUILD_DIR),
            "--sweep-every",
            "0.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "XASYNC_STATE_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"},
    )
    output = Lines(process)
    pids: dict[str, int] = {}
    runtimes: list[int] = []
    try:

        def started() -> dict[str, int] | None:
            if process.poll() is not None:
                raise AssertionError(f"xasync up exited with {process.returncode}:\n{output.text()}")
            if READY not in output.text():
                return None
            found = (PIDS.match(line) for line in list(output.lines))
            line = next((m.group(1) for m in found if m), None)
            return dict((name, int(pid)) for name, pid in re.findall(r"(\w+) (\d+)", line)) if line else None

        pids = wait_for(started, timeout=90, interval=0.2, what="xasync up to be ready")
        assert set(pids) == {"moto", "emulator", *created_functions(load_template())}
        # The sweeper's runtime, started by its emulator on the first scheduled event
        runtimes = wait_for(lambda: lambda_rie.children_of(pids["SweeperFunction"]), timeout=30, what="a runtime")
        assert (tmp_path / "logs" / "SweeperFunction.log").exists()

        process.send_signal(signal.SIGTERM)

        wait_for(lambda: process.poll() is not None, timeout=30, interval=0.1, what="xasync up to exit")
        assert process.returncode == 0, output.text()
        everything = [*pids.values(), *runtimes]
        wait_for(lambda: not any(alive(pid) for pid in everything), timeout=10, interval=0.1, what="all to stop")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pid in [*pids.values(), *runtimes]:  # a failed run must not leave them behind: stopped by their ids
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
