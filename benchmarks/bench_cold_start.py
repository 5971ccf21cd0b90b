"""Cold-start benchmark: each handler's cold start, beside `import boto3` in the same run.

A Lambda cold start imports the handler module once; what it costs is paid on every new instance. Two
measurements, each labelled so in its output:

`--runtime in-venv` (the default): each handler's import in a fresh interpreter of a venv, from the
repository's sources. Each figure is the median of N fresh interpreters (`python -I`, only the function's
folder and the layer on the path, the environment the template gives the function), so the ratio to
`import boto3` is comparable across machines; the runs of each handler alternate with runs of
`import boto3`, so that the ratio holds when the load of a shared machine drifts. A handler turns garbage
collection off on its first line (`coldstart.cold_start`), so its import of boto3 runs without collection
too: a second ratio is to `import boto3` run so, like for like.

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

`--runtime lambda`: each function's init where it happens, in Lambda's runtime: the `sam build` output
(`--build-dir`, default .aws-sam/build: bytecode and all, as deployed) under aws-lambda-rie and
awslambdaric on python3.13 (`xasync.lambda_rie`, as `xasync up --runtime lambda` runs it), one fresh
emulator and runtime process per run. The figure is the emulator's own: its INIT REPORT, from the runtime
process's start to its first request for an event (Lambda's Init Duration), so it includes the
interpreter's start and the runtime client's import. Beside it, in the same run and the same way: a tiny
handler that imports boto3 from the same layer (byte-compiled as the functions are), whose runs alternate
with each function's, and a handler that imports nothing (the runtime's own start). The ratio is to the
boto3 handler; the second ratio is of what each adds above the runtime's own start. It needs
`make build lambda-venv sam-venv`:

    .venv/bin/python -m benchmarks.bench_cold_start --runtime lambda --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from xasync import lambda_rie
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


# The handlers of the runtime mode's references: `import boto3` from the layer, and nothing at all.
TINY_HANDLERS = {
    "bench_import_boto3": "import boto3  # noqa: F401\n\n\ndef handler(event, context):\n    return None\n",
    "bench_import_nothing": "def handler(event, context):\n    return None\n",
}


def tiny_function(
    root: Path, module: str, runtime: lambda_rie.LambdaRuntime, like: lambda_rie.BuiltFunction
) -> lambda_rie.BuiltFunction:
    """A function of one tiny handler module, with the layers and settings of `like`, its bytecode compiled
    as the functions' Makefile compiles theirs (python3.13, unchecked-hash, named as in /var/task)."""
    task_root = root / module
    task_root.mkdir(parents=True)
    (task_root / f"{module}.py").write_text(TINY_HANDLERS[module])
    subprocess.run(  # noqa: S603 - the runtime's python, fixed flags
        [
            str(runtime.python),
            "-m",
            "compileall",
            "-q",
            "-f",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(task_root),
            "-p",
            "/var/task",
            str(task_root),
        ],
        check=True,
    )
    return lambda_rie.BuiltFunction(
        logical_id=module,
        task_root=task_root,
        layers=like.layers,
        handler=f"{module}.handler",
        runtime=like.runtime,
        timeout=like.timeout,
        memory_size=like.memory_size,
    )


def in_lambda_runtime(template: dict[str, Any], base: dict[str, str], runs: int, build_dir: Path) -> dict[str, Any]:
    """Each function's init in Lambda's runtime (RIE's own figure), beside a tiny `import boto3` handler."""
    runtime = lambda_rie.LambdaRuntime.locate(build_dir)
    built = lambda_rie.built_functions(template, runtime.build_dir)
    specs = functions(template, Resolver(template))
    print(
        f"in Lambda's runtime: init (aws-lambda-rie's INIT REPORT) of the sam build output in {runtime.build_dir},"
        f" under awslambdaric on {runtime.python_version()}; median of {runs} fresh runtime processes each"
    )
    print("(interpreter start + runtime client + handler import); each function's runs alternate with runs of")
    print("a handler that imports boto3 from the same layer, and its ratio is to those")
    layers = {layer for function in built.values() for layer in function.layers}
    for extension in (e for layer in sorted(layers) for e in lambda_rie.foreign_extensions(layer)):
        print(
            f"  ({extension.path.name} is built for Lambda's machine: {platform.machine()} imports"
            f" {extension.fallback.name if extension.fallback else 'nothing'} in its place)"
        )

    def init_ms(function: lambda_rie.BuiltFunction, environment: dict[str, str]) -> float:
        return lambda_rie.init_duration_ms(function, environment, runtime)

    first = next(iter(built.values()))
    with tempfile.TemporaryDirectory(prefix="bench-cold-start-") as folder:
        boto3_handler = tiny_function(Path(folder), "bench_import_boto3", runtime, first)
        nothing = tiny_function(Path(folder), "bench_import_nothing", runtime, first)
        floor = statistics.median(init_ms(nothing, base) for _ in range(runs))
        boto3_all: list[float] = []
        rows: list[tuple[str, str, float, float]] = []
        for logical_id, function in built.items():
            environment = {**base, **{name: str(value) for name, value in specs[logical_id].environment.items()}}
            function_runs, boto3_runs = [], []
            for _ in range(runs):
                boto3_runs.append(init_ms(boto3_handler, base))
                function_runs.append(init_ms(function, environment))
            boto3_all += boto3_runs
            rows.append((logical_id, function.handler, statistics.median(function_runs), statistics.median(boto3_runs)))
    boto3_ms = statistics.median(boto3_all)
    print(f"  {'runtime alone (imports nothing)':<34} {floor:7.0f} ms")
    print(f"  {'import boto3 (median of all runs)':<34} {boto3_ms:7.0f} ms   1.00x")
    results: dict[str, Any] = {"runtime": "lambda", "floor_ms": round(floor), "boto3_ms": round(boto3_ms)}
    for logical_id, handler, milliseconds, beside in rows:
        ratio, above = milliseconds / beside, (milliseconds - floor) / (beside - floor)
        results[logical_id] = {
            "ms": round(milliseconds),
            "ratio": round(ratio, 2),
            "ratio_above_floor": round(above, 2),
        }
        print(
            f"  {handler:<34} {milliseconds:7.0f} ms   {ratio:.2f}x   (boto3 beside it: {beside:.0f} ms;"
            f" {above:.2f}x above the runtime's own start)"
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--runtime",
        choices=["in-venv", "lambda"],
        default="in-venv",
        help="in-venv: the handler's import in a venv's fresh interpreter, from the sources; lambda: the init of"
        " the sam build output in Lambda's runtime (aws-lambda-rie, awslambdaric on python3.13)",
    )
    parser.add_argument(
        "--build-dir",
        type=Path,
        default=lambda_rie.DEFAULT_BUILD_DIR,
        help="the sam build output (--runtime lambda)",
    )
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
    if args.runtime == "lambda" and (args.top or args.first_event or args.python != sys.executable):
        parser.error("--top, --first-event and --python measure the in-venv import only")
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
    if args.runtime == "lambda":
        try:
            print(in_lambda_runtime(template, base, args.runs, args.build_dir))
        except lambda_rie.RuntimeUnavailable as error:
            parser.error(str(error))
        return 0
    layer = str(PROJECT_ROOT / "layers" / "shared")
    version = subprocess.run(  # noqa: S603 - the interpreter asked for
        [args.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"in-venv: cold import of the repository's sources (not the build), median of {args.runs} fresh")
    print(f"interpreters (python {version}, {args.python}); each handler's runs")
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
    results: dict[str, Any] = {"runtime": "in-venv", "boto3_ms": round(boto3_seconds * 1000)}
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
