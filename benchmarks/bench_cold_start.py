"""Cold-start benchmark: each handler's import in a fresh interpreter, beside `import boto3` in the same run.

A Lambda cold start imports the handler module once; what it costs is paid on every new instance.
Each figure is the median of N fresh interpreters (`python -I`, only the function's folder and the layer
on the path, the environment the template gives the function), so the ratio to `import boto3` is
comparable across machines; the runs of each handler alternate with runs of `import boto3`, so that
the ratio holds when the load of a shared machine drifts. A handler turns garbage collection off on its
first line (`runtime.cold_start`), so its import of boto3 runs without collection too: a second ratio
is to `import boto3` run so, like for like.

`--first-event` also times the import followed by a first event, in a fresh interpreter each run,
against an embedded stack (moto in server mode and the Ximilar emulator, the template's resources
created in moto as `xasync up` does): work moved out of the import into the first event shows there,
so a cheaper import is only a gain when "import + first event" is cheaper too. The events are the
ones in events/ (a new object per run for the submit function; an output job of an unknown image
for the outputs function).

`--top N` names where each handler's import goes, from `-X importtime`: the N packages with the
largest self time summed over their modules (ours and Powertools' by sub-package), and the handler's
own module code (settings, the factories building the clients).

`--python` runs the fresh interpreters with another Python: the functions run on python3.13 (the
template's runtime), the project's venv may be older. It needs the layer's requirements:

    .venv/bin/python -m benchmarks.bench_cold_start --runs 9 --top 8 --first-event
    python3.13 -m venv .venv-313 && .venv-313/bin/pip install -r layers/shared/requirements.txt
    .venv/bin/python -m benchmarks.bench_cold_start --runs 9 --python .venv-313/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from xasync.template import PROJECT_ROOT, FunctionSpec, Resolver, functions, load_template

TIMED = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
# The first event, after the import, in the same interpreter. Nothing is imported before the clock
# starts that the import-only figure would not import either; the context is Lambda's, made here.
FIRST_EVENT = """
import sys, time
sys.path[:0] = {path!r}
started = time.perf_counter()
import {module} as handler_module
imported = time.perf_counter()
import json

class Context:
    function_name = {function!r}
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    aws_request_id = "bench-cold-start"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:" + function_name
    deadline = time.monotonic() + {timeout}
    def get_remaining_time_in_millis(self):
        return max(0, int((self.deadline - time.monotonic()) * 1000))

answer = handler_module.{handler}(json.loads(sys.stdin.read()), Context())
done = time.perf_counter()
print("BENCH", imported - started, done - started, json.dumps(answer, default=str)[:300], file=sys.stderr)
"""


def fresh_import(
    python: str,
    module: str,
    path: list[str],
    environment: dict[str, str],
    *,
    importtime: bool = False,
    collection: bool = True,
) -> str:
    """Run the import in a fresh, isolated interpreter; returns its stdout (or stderr with -X importtime).
    `collection=False` imports with garbage collection off, as the handlers import what they import."""
    code = f"import sys; sys.path[:0] = {path!r}; " + ("" if collection else "import gc; gc.disable(); ")
    code += TIMED.format(module=module)
    flags = ["-X", "importtime"] if importtime else []
    result = subprocess.run(  # noqa: S603 - this interpreter, fixed code
        [python, "-I", *flags, "-c", code],
        env={"PATH": os.environ["PATH"], **environment},
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    return result.stderr if importtime else result.stdout


def package_of(module: str) -> str:
    """The group a module's self time counts for: its top-level package, ours and Powertools' one level down."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] in {"ximilar_async", "aws_lambda_powertools"} else parts[0]


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def heaviest(python: str, module: str, path: list[str], environment: dict[str, str], top: int) -> list[tuple[int, str]]:
    """Where the handler's import goes (microseconds): its own module code, then the N packages whose
    modules took the most self time below it (the interpreter's own start-up is left out)."""
    selves: dict[str, int] = {}
    handler_self = 0
    for line in fresh_import(python, module, path, environment, importtime=True).splitlines():
        match = IMPORT_LINE.match(line)
        if not match:
            continue
        name, self_us = match.group(4), int(match.group(1))
        if name == module:
            handler_self = self_us
        elif match.group(3).startswith("   "):  # nested: imported (at some depth) by the handler
            selves[package_of(name)] = selves.get(package_of(name), 0) + self_us
    ranked = sorted(((us, name) for name, us in selves.items()), reverse=True)[:top]
    return [(handler_self, f"{module} (module code)"), *ranked]


@contextmanager
def embedded_stack(template: dict[str, Any]) -> Iterator[tuple[dict[str, dict[str, str]], dict[str, Any]]]:
    """moto and the emulator with the template's resources, no function loaded; yields each function's
    environment and what the events need."""
    from xasync import local_stack
    from xasync.servers import run_emulator, run_moto

    saved = dict(os.environ)
    local_stack.use_local_credentials()
    with ExitStack() as stack:
        stack.callback(local_stack.restore_environment, saved)
        endpoint = stack.enter_context(run_moto()).url
        emulator = stack.enter_context(
            run_emulator(local_stack.LOCAL_TOKEN, "--created-delay-seconds", "0", "--processing-delay-seconds", "0")
        ).url
        values = local_stack.stack_parameters(template, emulator, {})
        resolver = local_stack.deploy_resources(endpoint, template, values, {})
        local_stack._aws(endpoint, "ssm").put_parameter(
            Name=resolver.parameter("XimilarTokenParameterName"),
            Value=local_stack.LOCAL_TOKEN,
            Type="SecureString",
            Overwrite=True,
        )
        deployed_webhook = str(resolver.resolve(template["Outputs"]["WebhookUrl"]["Value"]))
        webhook_urls = {deployed_webhook: "http://127.0.0.1:9/webhook"}  # nothing listens: the emulator's post fails
        environments = {
            logical_id: local_stack.function_environment(spec, resolver, endpoint, webhook_urls)
            for logical_id, spec in functions(template, resolver).items()
        }
        yield (
            environments,
            {
                "s3": local_stack._aws(endpoint, "s3"),
                "input_bucket": resolver.physical_ids["InputBucket"],
                "emulator": emulator,
            },
        )


def first_event(logical_id: str, spec: FunctionSpec, stack: dict[str, Any]) -> dict[str, Any]:
    """The event of one run: the example in events/, made to fit the embedded stack."""
    from xasync.local_stack import freshly_signed

    events = PROJECT_ROOT / "events"
    if logical_id == "SubmitFunction":
        key = f"incoming/bench-{uuid.uuid4().hex}.jpg"
        body = (PROJECT_ROOT / "samples" / "incoming" / "flows" / "product-bag.jpg").read_bytes()
        stored = stack["s3"].put_object(Bucket=stack["input_bucket"], Key=key, Body=body)
        event: dict[str, Any] = json.loads((events / "s3-put.json").read_text())
        record = event["Records"][0]["s3"]
        record["bucket"] = {"name": stack["input_bucket"], "arn": f"arn:aws:s3:::{stack['input_bucket']}"}
        record["object"] = {
            "key": key,
            "size": len(body),
            "eTag": stored["ETag"].strip('"'),
            "sequencer": uuid.uuid4().hex[:18].upper(),
        }
        return event
    if logical_id == "WebhookFunction":
        return freshly_signed(json.loads((events / "webhook-done.json").read_text()))
    if logical_id == "SweeperFunction":
        return dict(json.loads((events / "schedule.json").read_text()))
    if logical_id == "OutputsFunction":
        job = {
            "image_uri": f"s3://{stack['input_bucket']}/incoming/not-uploaded.jpg",
            "record_id": str(uuid.uuid4()),
            "request_id": str(uuid.uuid4()),
            "artifacts": {"upscaled": f"{stack['emulator']}/nothing-here.jpg"},
        }
        message_id = str(uuid.uuid4())
        return {
            "Records": [
                {
                    "messageId": message_id,
                    "receiptHandle": message_id,
                    "body": json.dumps(job),
                    "attributes": {"ApproximateReceiveCount": "1"},
                    "messageAttributes": {},
                    "md5OfBody": "",
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:outputs",
                    "awsRegion": "us-east-1",
                }
            ]
        }
    raise ValueError(f"no first event for {logical_id}")


def import_and_first_event(
    python: str,
    logical_id: str,
    spec: FunctionSpec,
    path: list[str],
    environment: dict[str, str],
    stack: dict[str, Any],
) -> tuple[float, float, str]:
    """One fresh interpreter: (import seconds, import + first event seconds, the answer's start)."""
    code = FIRST_EVENT.format(
        path=path,
        module=spec.handler_module,
        handler=spec.handler_name,
        function=logical_id,
        timeout=spec.timeout,
    )
    result = subprocess.run(  # noqa: S603 - this interpreter, fixed code
        [python, "-I", "-c", code],
        env={"PATH": os.environ["PATH"], **environment},
        input=json.dumps(first_event(logical_id, spec, stack)),
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        timeout=120,
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("BENCH ")]
    if result.returncode or not lines:
        raise RuntimeError(f"{logical_id}'s first event failed:\n{result.stderr[-3000:]}")
    _, imported, done, answer = lines[-1].split(" ", 3)
    return float(imported), float(done), answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--top", type=int, default=0, help="also list where each handler's import goes (N packages)")
    parser.add_argument(
        "--first-event", action="store_true", help="also time import + a first event against an embedded stack"
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter of the fresh runs (default: this one); it needs the layer's requirements",
    )
    args = parser.parse_args()
    template = load_template()
    # What Lambda puts in every function's environment: its region, and its role's credentials. Without
    # these, each client's creation would walk botocore's credential chain to the instance metadata
    # service, which no Lambda does (and which would flatter a client not built at import).
    base = {
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "ASIABENCHCOLDSTART00",
        "AWS_SECRET_ACCESS_KEY": "bench-cold-start-secret-access-key-0000000",
        "AWS_SESSION_TOKEN": "bench-cold-start-session-token",
    }
    layer = str(PROJECT_ROOT / "layers" / "shared")
    version = subprocess.run(  # noqa: S603 - the interpreter asked for
        [args.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"cold import, median of {args.runs} fresh interpreters (python {version}); each handler's runs")
    print("alternate with runs of `import boto3`, and its ratio is to those (a shared machine's load drifts);")
    print("the handlers import with collection off (their first line): the second ratio is to `import boto3` so")
    boto3_all: list[float] = []
    rows: list[tuple[str, str, float, float, float]] = []
    specs = functions(template, Resolver(template))
    for logical_id, spec in specs.items():
        path = [str(spec.code_uri), layer]
        environment = {**base, **{name: str(value) for name, value in spec.environment.items()}}
        handler_runs, boto3_runs, boto3_off_runs = [], [], []
        for _ in range(args.runs):
            boto3_runs.append(float(fresh_import(args.python, "boto3", [layer], base)))
            boto3_off_runs.append(float(fresh_import(args.python, "boto3", [layer], base, collection=False)))
            handler_runs.append(float(fresh_import(args.python, spec.handler_module, path, environment)))
        boto3_all += boto3_runs
        handler, boto3, boto3_off = (statistics.median(runs) for runs in (handler_runs, boto3_runs, boto3_off_runs))
        rows.append((logical_id, spec.handler_module, handler, boto3, boto3_off))
    boto3_seconds = statistics.median(boto3_all)
    print(f"  {'import boto3':<28} {boto3_seconds * 1000:7.0f} ms   1.00x")
    results: dict[str, Any] = {"boto3_ms": round(boto3_seconds * 1000)}
    for logical_id, module, seconds, beside, beside_off in rows:
        spec = specs[logical_id]
        path = [str(spec.code_uri), layer]
        environment = {**base, **{name: str(value) for name, value in spec.environment.items()}}
        ratio, ratio_off = seconds / beside, seconds / beside_off
        results[logical_id] = {
            "ms": round(seconds * 1000),
            "ratio": round(ratio, 2),
            "ratio_gc_off": round(ratio_off, 2),
        }
        print(
            f"  {module:<28} {seconds * 1000:7.0f} ms   {ratio:.2f}x   (boto3 beside it: {beside * 1000:.0f} ms;"
            f" {ratio_off:.2f}x to its {beside_off * 1000:.0f} ms with collection off)"
        )
        if args.top:
            for micros, name in heaviest(args.python, spec.handler_module, path, environment, args.top):
                print(f"      {name:<40} {micros / 1000:6.0f} ms self")
    if args.first_event:
        print(f"import + first event against an embedded stack, median of {args.runs} fresh interpreters")
        with embedded_stack(template) as (environments, stack):
            for logical_id, spec in specs.items():
                path = [str(spec.code_uri), layer]
                timings = [
                    import_and_first_event(args.python, logical_id, spec, path, environments[logical_id], stack)
                    for _ in range(args.runs)
                ]
                imported = statistics.median(timing[0] for timing in timings)
                total = statistics.median(timing[1] for timing in timings)
                results[logical_id].update(
                    first_event_ms=round(total * 1000), first_event_import_ms=round(imported * 1000)
                )
                print(
                    f"  {spec.handler_module:<28} import {imported * 1000:5.0f} ms, + first event"
                    f" {total * 1000:5.0f} ms   ({timings[-1][2][:70]})"
                )
    print(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
