"""`xasync`: run the pipeline locally, upload images, read results, invoke functions, sweep.

Works on the embedded local stack (`xasync up`, in another terminal) or, with `--stack-name`, on a
deployed stack whose outputs name the bucket and tables.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress import Progress
from rich.table import Table

from xasync import lambda_rie, local_stack, ops, ui, views
from xasync.dynamodb_faults import DynamoFaults
from xasync.lambda_runtime import LocalLambdaContext, load_function
from xasync.local_stack import RUNTIMES, Runtime, freshly_signed
from xasync.servers import wait_for
from xasync.target import Target, target_for
from xasync.template import PROJECT_ROOT, load_template
from ximilar_async.adapters.ximilar import XimilarClient
from ximilar_async.values import identity
from ximilar_async.values.backfill import BackfillRun, BatchOutcome, ExistingObject
from ximilar_async.values.entities import OutputState
from ximilar_async.values.outputs import split_s3_uri
from ximilar_async.values.statuses import TERMINAL_STATUSES, Status
from ximilar_async.values.watched import parse_watched_buckets

# Wide enough for the results table when the output is a log rather than a terminal.
console = Console(width=None if sys.stdout.isatty() else 150)
SAMPLES = PROJECT_ROOT / "samples"


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a command as Ctrl-C does, so the servers it started are stopped, not orphaned.

    The default SIGTERM ends the process at once, skipping the context managers that stop moto and the
    emulator by their process ids. The first SIGTERM raises KeyboardInterrupt; later ones are ignored
    so that they cannot cut that cleanup short (SIGKILL remains for the impatient).
    """

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


stack_option = click.option("--stack-name", help="a deployed stack (default: the local stack of `xasync up`)")
runtime_option = click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="in-process",
    show_default=True,
    envvar="XASYNC_RUNTIME",
    help="where the functions run: imported into this process, or `lambda`: the sam build output under "
    "Lambda's runtime interface emulator and runtime client, a process each (needs make build lambda-venv)",
)
build_dir_option = click.option(
    "--build-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda_rie.DEFAULT_BUILD_DIR,
    envvar="XASYNC_BUILD_DIR",
    show_default=True,
    help="the sam build output the functions run from (--runtime lambda)",
)


@contextlib.contextmanager
def runtime_errors() -> Iterator[None]:
    """A runtime mode that lacks a part says what to run, as a usage error rather than a traceback."""
    try:
        yield
    except lambda_rie.RuntimeUnavailable as error:
        raise click.ClickException(str(error)) from None


@click.group()
def main() -> None:
    """ximilar-async: S3 uploads in, Ximilar results in DynamoDB."""
    logging.basicConfig(level=logging.WARNING)


def dynamodb_faults_option(context: click.Context, parameter: click.Parameter, spec: str | None) -> DynamoFaults | None:
    """--dynamodb-faults read as `DynamoFaults.parse` reads it, its error the option's."""
    if spec is None:
        return None
    try:
        return DynamoFaults.parse(spec)
    except ValueError as error:
        raise click.BadParameter(str(error), context, parameter) from None


@main.command()
@click.option("--ximilar-url", help="a real Ximilar API (default: the project's emulator)")
@click.option("--token", envvar="XIMILAR_TOKEN", help="the Ximilar API token (with --ximilar-url)")
@click.option("--sweep-every", default=2.0, show_default=True, help="seconds between sweeper runs")
@click.option("--parameter", "-p", multiple=True, help="a template parameter, Name=value (repeatable)")
@click.option(
    "--dynamodb-faults",
    "dynamodb_faults",
    metavar="SPEC",
    callback=dynamodb_faults_option,
    help="the functions' DynamoDB fails as the real one does, e.g. "
    "throttle=0.1,applied-500=0.05,dropped=0.02,index-lag=30,index-lag-rate=1,consistency-lag=2,seed=3",
)
@runtime_option
@build_dir_option
def up(
    ximilar_url: str | None,
    token: str | None,
    sweep_every: float,
    parameter: tuple[str, ...],
    dynamodb_faults: DynamoFaults | None,
    runtime: Runtime,
    build_dir: Path,
) -> None:
    """Run the embedded stack in the foreground until Ctrl-C (or SIGTERM)."""
    if ximilar_url and not token:
        raise click.UsageError("--ximilar-url needs --token (or XIMILAR_TOKEN)")
    overrides = dict(item.split("=", 1) for item in parameter)
    log_dir = local_stack.STATE_FILE.parent / "logs"
    with (
        sigterm_as_interrupt(),
        runtime_errors(),
        local_stack.running(
            ximilar_url=ximilar_url,
            ximilar_token=token,
            parameters=overrides,
            sweep_every=sweep_every,
            dynamodb_faults=dynamodb_faults,
            runtime=runtime,
            build_dir=build_dir,
            log_dir=log_dir,
        ) as local,
    ):
        try:  # from here on, a signal is a stop, however early it comes (not click's "Aborted!")
            local_stack.write_state(local)
            sam_env = local_stack.write_sam_env_vars(local)
            events = local_stack.write_signed_events()
            print_ready(local, log_dir, sam_env, events)
            while True:
                time.sleep(3600)  # the stack's threads do the work; this one waits for Ctrl-C
        except KeyboardInterrupt:
            console.print("stopping")
            if local.dynamodb_faults is not None:
                injected = ", ".join(f"{kind} {n}" for kind, n in sorted(local.dynamodb_faults.counts.items()))
                console.print(f"DynamoDB faults injected: {injected or 'none'}")
        finally:
            local_stack.STATE_FILE.unlink(missing_ok=True)


def print_ready(local: local_stack.LocalStack, log_dir: Path, sam_env: Path, events: Path) -> None:
    """What is up, where, and how to use it (the pid line is one line: scripts and tests read it)."""
    console.print("[bold green]ximilar-async local stack is up[/]")
    for name in ("InputBucketName", "ImagesTableName", "WebhookUrl", "SubmitQueueUrl", "OutputLocation"):
        console.print(f"  {name:<18} {local.outputs[name]}")
    console.print(f"  {'Ximilar API':<18} {local.ximilar_url}")
    pids = ", ".join(f"{name} {server.pid}" for name, server in local.servers.items())
    console.print(f"  {'Server pids':<18} {pids}", soft_wrap=True)  # one line, for scripts that read it
    console.print(f"  {'Functions':<18} {runtime_line(local)}")
    if local.lambda_functions:
        console.print(f"  {'Runtime logs':<18} {log_dir}/<function>.log (START, END, REPORT, init reports)")
    if local.dynamodb_faults is not None:
        proxy = local.dynamodb_faults
        console.print(f"  {'DynamoDB faults':<18} {proxy.faults.spec() or 'none'} (the functions' via {proxy.url})")
    if not local_stack.fetches_local_urls(local.ximilar_url):
        console.print(
            f"  Images go inline as _base64 (InlineBase64MaxBytes={local.parameters['InlineBase64MaxBytes']}): "
            f"{local.ximilar_url} cannot fetch presigned URLs of the local moto server."
        )
    console.print("\nPoint the AWS CLI at it:")
    console.print(
        f"  export AWS_ENDPOINT_URL={local.aws_endpoint} AWS_ACCESS_KEY_ID=local "
        "AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1"
    )
    console.print(f"  aws s3 cp photo.jpg s3://{local.outputs['InputBucketName']}/incoming/")
    console.print(f"\nWith Docker: sam local invoke SubmitFunction -e events/sqs-s3-put.json --env-vars {sam_env}")
    console.print(f"  (webhook events with fresh tokens: {events}/webhook-done.json)")
    console.print("\nCtrl-C (or SIGTERM) stops everything.")


def runtime_line(local: local_stack.LocalStack) -> str:
    """Where the functions run, in a line."""
    if not local.lambda_functions:
        return "in this process (--runtime in-process), from the repository's sources"
    build = next(iter(local.lambda_functions.values())).runtime.build_dir
    return f"under aws-lambda-rie and awslambdaric (--runtime lambda), from {build}"


def files_under(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """(file, key suffix) for every file named or under a named folder."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            found += [(file, file.relative_to(path).as_posix()) for file in sorted(path.rglob("*")) if file.is_file()]
        else:
            found.append((path, path.name))
    return found


def upload_files(target: Target, paths: Iterable[Path], prefix: str) -> list[str]:
    s3 = target.client("s3")
    bucket = target.outputs["InputBucketName"]
    files = files_under(paths)
    uploaded = []
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("uploading", total=len(files))
        for file, suffix in files:
            key = f"{prefix}{suffix}"
            s3.upload_file(str(file), bucket, key)
            uploaded.append(key)
            progress.advance(task)
    return uploaded


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--prefix", default="incoming/", show_default=True)
@stack_option
def upload(paths: tuple[Path, ...], prefix: str, stack_name: str | None) -> None:
    """Upload files (or folders) to the input bucket, as `aws s3 cp` would."""
    keys_ = upload_files(target_for(stack_name), paths, prefix)
    console.print(f"uploaded {len(keys_)} objects under {prefix}")


def find_items(
    target: Target, key: str | None, request_id: str | None, status: str | None, since: datetime | None
) -> list[dict[str, Any]]:
    storage = target.storage()
    if key:
        uris = [identity.image_uri(target.outputs["InputBucketName"], key)]
    elif request_id:
        uris = storage.queries.image_uris_of_request(request_id)
    else:
        statuses = [Status(status)] if status else list(Status)
        uris = storage.queries.image_uris_by_status(statuses, since or datetime.now(UTC) - timedelta(days=1))
    found = storage.queries.images_as_known(uris).values()
    return sorted((views.as_item(image) for image in found), key=lambda item: str(item["key"]))


def print_items(items: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        click.echo(json.dumps(items, default=str, indent=2))
    elif output == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=views.COLUMNS)
        writer.writeheader()
        writer.writerows(views.row(item) for item in items)
    else:
        table = Table(*views.COLUMNS, title=f"{len(items)} images")
        for item in items:
            table.add_row(*views.row(item).values())
        console.print(table)


@main.command()
@click.option("--key", help="one image, by its key in the input bucket")
@click.option("--request-id", help="every image of one Ximilar request")
@click.option("--status", type=click.Choice([s.value for s in Status]), help="images in this status")
@click.option("--since", help="updated since: an ISO time or 30m, 2h, 1d (default: 1d)")
@click.option("--format", "output", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@stack_option
def results(
    key: str | None, request_id: str | None, status: str | None, since: str | None, output: str, stack_name: str | None
) -> None:
    """Results by key, by Ximilar request, or by status and time."""
    print_items(find_items(target_for(stack_name), key, request_id, status, views.parse_since(since)), output)


@main.command()
@click.option("--key", required=True, help="the image, by its key in the input bucket")
@click.option("--to", "destination", default=".", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@stack_option
def fetch(key: str, destination: Path, stack_name: str | None) -> None:
    """Download the stored outputs of one image (its upscaled copy, ...) from the output location."""
    target = target_for(stack_name)
    image = target.storage().queries.image(identity.image_uri(target.outputs["InputBucketName"], key))
    if image is None:
        raise click.ClickException(f"no image item for {key}")
    stored = {name: output for name, output in image.outputs.items() if output.state is OutputState.STORED}
    if not stored:
        states = ", ".join(f"{name} {output.state.value}" for name, output in image.outputs.items()) or "no outputs"
        raise click.ClickException(f"nothing stored for {key} ({image.status.value}; {states})")
    destination.mkdir(parents=True, exist_ok=True)
    s3 = target.client("s3")
    for name, output in sorted(stored.items()):
        bucket, object_key = split_s3_uri(output.uri)
        path = destination / object_key.rsplit("/", 1)[-1]
        s3.download_file(bucket, object_key, str(path))
        console.print(f"{name}: {output.uri} -> {path}")


def read_events(target: Target, *, wait_seconds: int) -> list[dict[str, Any]]:
    """Completion events from the local stack's events queue (each read once: they are deleted)."""
    sqs = target.client("sqs")
    queue_url = target.outputs["LocalEventsQueueUrl"]
    answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds)
    messages = answer.get("Messages", [])
    if messages:
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)],
        )
    return [json.loads(message["Body"]) for message in messages]


@main.command()
@click.option("--follow", is_flag=True, help="keep printing events as they come, until Ctrl-C")
@click.option("--format", "output", type=click.Choice(["line", "json"]), default="line", show_default=True)
def events(follow: bool, output: str) -> None:
    """Completion events (Image Finished, Image Outputs Stored) of the local stack, as a rule to SQS gets them.

    A deployed stack puts them on its EventBusName: add a rule (README) to send them where you read them.
    """
    target = target_for(None)
    with sigterm_as_interrupt(), contextlib.suppress(KeyboardInterrupt):
        while True:
            found = read_events(target, wait_seconds=1 if follow else 0)
            for event in found:
                if output == "json":
                    click.echo(json.dumps(event))
                    continue
                detail = event.get("detail", {})
                outputs = ", ".join(f"{n}={o['uri']}" for n, o in detail.get("outputs", {}).items())
                line = f"{event.get('detail-type')}: {detail.get('input', {}).get('key')} {detail.get('status')}"
                click.echo(" ".join(part for part in (line, detail.get("summary") or "", outputs) if part))
            if not follow and not found:
                return


def sam_env_vars(path: Path | None, function: str) -> dict[str, str]:
    """`sam local invoke --env-vars` file: `Parameters` for every function, then the function's own."""
    if path is None:
        return {}
    document = json.loads(path.read_text())
    return {**document.get("Parameters", {}), **document.get(function, {})}


@main.command()
@click.argument("function")
@click.option("--event", "event_file", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--env-vars", type=click.Path(exists=True, path_type=Path), help="a SAM env.json")
@runtime_option
@build_dir_option
def invoke(function: str, event_file: Path, env_vars: Path | None, runtime: Runtime, build_dir: Path) -> None:
    """Invoke FUNCTION (a logical id of template.yaml) with an event, as `sam local invoke` does.

    With --runtime lambda, in a runtime of its own (a cold start, as `sam local invoke` makes one), never
    the one `xasync up` runs the function in: that takes its own events, one at a time."""
    with runtime_errors():
        answer = invoke_function(function, json.loads(event_file.read_text()), env_vars, runtime, build_dir)
    click.echo(json.dumps(answer, default=str))


def _write_to_stderr(line: str) -> None:
    click.echo(line, nl=False, err=True)


def invoke_function(
    function: str,
    event: dict[str, Any],
    env_vars: Path | None = None,
    runtime: Runtime = "in-process",
    build_dir: Path | None = None,
) -> Any:
    target = target_for(None)
    environment = {**target.environments[function], **sam_env_vars(env_vars, function)}
    # The signed webhook examples carry tokens that expire: sign them again, as `xasync up` does.
    event = freshly_signed(event)
    if runtime == "lambda":
        template = load_template()
        lambda_runtime = lambda_rie.LambdaRuntime.locate(build_dir)
        built = lambda_rie.built_functions(template, lambda_runtime.build_dir)[function]
        # What the function prints goes to stderr: stdout is its answer.
        with lambda_rie.running_function(built, environment, lambda_runtime, echo=_write_to_stderr) as running:
            try:
                return running.invoke(event)
            except lambda_rie.FunctionError as error:
                raise click.ClickException(str(error)) from None
    module = load_function(load_template(), function, environment)
    return module.lambda_handler(event, LocalLambdaContext(function_name=function))


@main.command()
@stack_option
def sweep(stack_name: str | None) -> None:
    """Run the sweeper once."""
    if stack_name:
        resource = boto3.client("cloudformation").describe_stack_resource(
            StackName=stack_name, LogicalResourceId="SweeperFunction"
        )["StackResourceDetail"]
        answer = boto3.client("lambda").invoke(FunctionName=resource["PhysicalResourceId"])
        click.echo(answer["Payload"].read().decode())
        return
    event = json.loads((PROJECT_ROOT / "events" / "schedule.json").read_text())
    click.echo(json.dumps(invoke_function("SweeperFunction", event)))


def serve_page(target: Target, port: int) -> None:
    """Serve the results page until Ctrl-C (or SIGTERM, under `sigterm_as_interrupt`)."""
    with ui.serving(ui.create_app(target.page_source()), port) as url:
        console.print(f"[bold green]results page:[/] {url}  (127.0.0.1 only, read-only; Ctrl-C stops it)")
        try:
            while True:
                time.sleep(3600)  # the server's threads answer; this one waits for Ctrl-C
        except KeyboardInterrupt:
            console.print("stopping the page")


port_option = click.option("--port", default=8765, show_default=True, help="port on 127.0.0.1 (0: any free port)")


@main.command("ui")
@port_option
@stack_option
def ui_command(port: int, stack_name: str | None) -> None:
    """Serve a local, read-only page of the results (inputs beside outputs) until Ctrl-C."""
    with sigterm_as_interrupt():
        serve_page(target_for(stack_name), port)


def status_tables(report: dict[str, Any]) -> Group:
    """`xasync status` for people: one small table per question."""
    overview = Table("status", "images", title=f"Images updated since {report['since'][:19]}")
    for status, count in report["images_by_status"].items():
        overview.add_row(status, str(count))
    requests_ = Table("request status", "requests", title="Requests not finished (in flight at Ximilar, or waiting)")
    for status, count in report["requests_unfinished"].items():
        requests_.add_row(status, str(count))
    queues = Table("queue", "visible", "in flight", "delayed", title="Queues")
    for name, depth in report["queues"].items():
        queues.add_row(name, str(depth["visible"]), str(depth["in_flight"]), str(depth["delayed"]))
    facts = Table("what", "value", title="Health")
    oldest = report["oldest_unfinished"]
    facts.add_row(
        "oldest unfinished upload",
        "none"
        if oldest is None
        else f"{oldest['key']} ({oldest['status']}, {oldest['age_seconds']} s): {oldest['reason'] or 'no reason yet'}",
    )
    sweep = report["last_sweep"]
    facts.add_row(
        "last sweep",
        "never"
        if sweep is None
        else f"{sweep['age_seconds']} s ago: taken {sweep.get('taken', 0)}, recorded {sweep.get('recorded', 0)}, "
        f"resubmitted {sweep.get('resubmitted_images', 0)}, paused {sweep.get('paused', 0)}, "
        f"stopped {sweep.get('stopped') or 'no'}",
    )
    guard = report["spend_guard"]
    facts.add_row(
        "spend guard",
        f"{'PAUSED: ' + str(guard['reason']) if guard['paused'] else 'submitting'}; "
        f"{guard['submitted_today']} submitted on {guard['day']} (limit {guard['daily_limit'] or 'none'}"
        f"{', lifted by resume' if guard['resumed_today'] else ''})",
    )
    failures = Table("images", "top failure reasons", title="FAILED and ERROR")
    for reason, count in report["top_failure_reasons"]:
        failures.add_row(str(count), reason)
    backfills = Table(
        "run",
        "source",
        "total",
        "enqueued",
        "already known",
        "failed",
        "updated",
        "engine run id",
        title="Backfills (latest first)",
    )
    for run in report.get("backfills", []):
        backfills.add_row(
            run["name"],
            run["source"],
            str(run["total"]),
            str(run["enqueued"]),
            str(run["already_known"] + run["already_queued"]),
            str(run["failed"]) + (f" ({run['last_failure']})" if run["failed"] and run["last_failure"] else ""),
            str(run["updated_at"])[:19],
            run["engine_id"],
        )
    return Group(overview, requests_, queues, facts, failures, backfills)


def build_status(target: Target, since: datetime) -> dict[str, Any]:
    queues = {"submit": target.outputs["SubmitQueueUrl"], "dead-letter": target.outputs["SubmitDeadLetterQueueUrl"]}
    limit = int(target.environment("SubmitFunction").get("DAILY_SUBMIT_LIMIT") or 0)
    return ops.status_report(target.storage(), target.client("sqs"), queues, since, limit)


@main.command()
@click.option("--since", default="1d", show_default=True, help="the time window of the counts: ISO time or 30m, 2h, 1d")
@click.option("--watch", type=float, help="refresh every this many seconds until Ctrl-C")
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@stack_option
def status(since: str, watch: float | None, output: str, stack_name: str | None) -> None:
    """Counts by status, requests in flight, the oldest unfinished upload, queues, the last sweep, failures."""
    target = target_for(stack_name)

    def report() -> dict[str, Any]:
        return build_status(target, views.parse_since(since) or datetime.now(UTC) - timedelta(days=1))

    if output == "json":
        click.echo(json.dumps(report(), default=str, indent=2))
        return
    if not watch:
        console.print(status_tables(report()))
        return
    with (
        sigterm_as_interrupt(),
        Live(status_tables(report()), console=console, refresh_per_second=1) as live,
        contextlib.suppress(KeyboardInterrupt),
    ):
        while True:
            time.sleep(watch)
            live.update(status_tables(report()))


def new_run_name() -> str:
    """A run's name: the execution's in AWS (at most 80 characters), the key of its progress item."""
    return f"backfill-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def start_backfill_in_aws(
    target: Target, bucket: str, prefix: str, inventory: str | None, concurrency: int
) -> tuple[str, str]:
    """StartExecution of the stack's backfill state machine; (run name, execution ARN)."""
    name = new_run_name()
    execution_input: dict[str, Any] = {"prefix": prefix, "max_concurrency": concurrency}
    if inventory is not None:
        parts = urlsplit(inventory)
        if parts.scheme != "s3" or not parts.path.strip("/"):
            raise click.UsageError("with --stack-name, --inventory is the s3:// URI of the inventory's manifest.json")
        execution_input |= {
            "source": "inventory",
            "manifest_bucket": parts.netloc,
            "manifest_key": parts.path.lstrip("/"),
            "source_uri": inventory,
        }
    else:
        execution_input |= {"source": "listing", "bucket": bucket, "source_uri": f"s3://{bucket}/{prefix}"}
    answer = target.client("stepfunctions").start_execution(
        stateMachineArn=target.outputs["BackfillStateMachineArn"], name=name, input=json.dumps(execution_input)
    )
    return name, str(answer["executionArn"])


def objects_to_backfill(
    s3: Any, bucket: str, prefix: str, inventory: Path | None
) -> tuple[Iterable[list[ExistingObject]], str]:
    """The objects under `prefix`, page by page, from an inventory's manifest file or a listing of `bucket`;
    and where they come from, for the run's progress."""
    if inventory is not None:
        return ops.inventory_objects(s3, json.loads(inventory.read_text()), prefix), str(inventory)
    return ops.listed_objects(s3, bucket, prefix), f"s3://{bucket}/{prefix}"


def backfill_locally(
    target: Target,
    bucket: str,
    prefix: str,
    inventory: Path | None,
    *,
    retry: ops.HeldRetry | None = None,
    stop_after: int | None = None,
    progress: Callable[[dict[str, Any]], None] = lambda _: None,
) -> tuple[BackfillRun, BatchOutcome]:
    """The local stack's backfill: the Distributed Map's batches, made here from the same listing (or inventory),
    handed to BackfillFunction's own handler (a cold start of it, as `xasync invoke` does)."""
    pages, source_uri = objects_to_backfill(target.client("s3"), bucket, prefix, inventory)
    name = new_run_name()
    run = BackfillRun(name, f"local:{name}", source_uri)
    source, listed_bucket = ("inventory", None) if inventory is not None else ("listing", bucket)
    batches = ops.engine_batches(pages, run, source, listed_bucket, prefix)
    module = load_function(load_template(), "BackfillFunction", target.environments["BackfillFunction"])

    def handler(event: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = module.lambda_handler(event, LocalLambdaContext(function_name="BackfillFunction"))
        return answer

    outcome = ops.drive_backfill(
        handler,
        batches,
        retry or ops.HeldRetry.from_definition(),
        is_held=lambda error: type(error).__name__ == "BackfillHeld",
        progress=progress,
        stop_after=stop_after,
    )
    return run, outcome


def backfill_summary(outcome: BatchOutcome) -> str:
    known = outcome.already_known + outcome.already_queued
    failed = f", {outcome.failed} failed ({'; '.join(outcome.reasons[:2])})" if outcome.failed else ""
    return f"listed {outcome.total}, sent {outcome.enqueued} to the submit queue, skipped {known} already known{failed}"


@main.command()
@click.option("--prefix", default="", help="objects under this key prefix (with --inventory: only those)")
@click.option(
    "--inventory",
    help="an S3 Inventory manifest.json (CSV) instead of listing: its s3:// URI with --stack-name, a file locally",
)
@click.option("--bucket", help="a bucket named in WatchedBuckets (default: the stack's input bucket)")
@click.option("--concurrency", default=2, show_default=True, help="batches of 100 at once in AWS (MaxConcurrency)")
@click.option("--laptop", is_flag=True, help="list and send from this machine, without the function (small prefixes)")
@stack_option
def backfill(
    prefix: str, inventory: str | None, bucket: str | None, concurrency: int, laptop: bool, stack_name: str | None
) -> None:
    """Objects already in a bucket enter the pipeline as uploads do (each version once, skipping those it knows).

    With --stack-name, starts the stack's backfill state machine (a Distributed Map) and returns its run id;
    locally, drives BackfillFunction with the same batches here. --laptop sends from here instead."""
    if not prefix and inventory is None:
        raise click.UsageError("name the objects: --prefix, or --inventory")
    target = target_for(stack_name)
    bucket = bucket or target.outputs["InputBucketName"]
    if stack_name and not laptop:
        name, arn = start_backfill_in_aws(target, bucket, prefix, inventory, concurrency)
        console.print(
            f"started backfill run {name}\nexecution: {arn}\nprogress: xasync status --stack-name {stack_name}"
        )
        return
    manifest = None if inventory is None else Path(inventory)
    if manifest is not None and not manifest.is_file():
        raise click.UsageError(f"{inventory}: no such manifest file")
    with Progress(console=console) as progress, runtime_errors():
        task = progress.add_task(f"backfilling {prefix or bucket}", total=None)
        if laptop:
            s3 = target.client("s3")
            pages, source_uri = objects_to_backfill(s3, bucket, prefix, manifest)
            name = new_run_name()
            backfiller = ops.laptop_backfiller(
                target.storage(),
                target.client("sqs"),
                target.outputs["SubmitQueueUrl"],
                s3.meta.region_name or "us-east-1",
                target.outputs["InputBucketName"],
                parse_watched_buckets(target.environment("SubmitFunction").get("WATCHED_BUCKETS", "")),
            )
            run = BackfillRun(name, f"laptop:{name}", source_uri)
            outcome = ops.backfill(backfiller, run, pages, lambda done: progress.advance(task, done))
        else:
            run, outcome = backfill_locally(
                target, bucket, prefix, manifest, progress=lambda answer: progress.advance(task, answer.get("total", 0))
            )
        progress.update(task, total=outcome.total, completed=outcome.total)
    console.print(f"run {run.name}: {backfill_summary(outcome)}")


@main.command()
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in TERMINAL_STATUSES]))
@click.option("--since", help="updated since: an ISO time or 30m, 2h, 1d (default: 1d)")
@click.option("--prefix", help="images whose key starts with this")
@click.option("--request-id", help="every image of one Ximilar request")
@click.option("--dry-run", is_flag=True, help="print what would be submitted, submit nothing")
@stack_option
def reprocess(
    statuses: tuple[str, ...],
    since: str | None,
    prefix: str | None,
    request_id: str | None,
    dry_run: bool,
    stack_name: str | None,
) -> None:
    """Submit finished images again, each as a new attempt (the sweeper's resubmission path)."""
    if not (statuses or prefix or request_id):
        raise click.UsageError("select images with --status, --prefix or --request-id")
    target = target_for(stack_name)
    storage = target.storage()
    wanted = [Status(s) for s in statuses] or sorted(TERMINAL_STATUSES)
    uris = None
    if prefix and not request_id:
        bucket = target.outputs["InputBucketName"]
        uris = [
            identity.image_uri(bucket, found.key)
            for page in ops.listed_objects(target.client("s3"), bucket, prefix)
            for found in page
        ]
    window = views.parse_since(since) or (datetime.min.replace(tzinfo=UTC) if (prefix or request_id) else None)
    images = ops.select_images(
        storage,
        statuses=wanted,
        since=window or datetime.now(UTC) - timedelta(days=1),
        request_id=request_id,
        uris_under_prefix=uris,
        prefix=prefix,
    )
    with target.services() as sweeper:
        planned = ops.plan_reprocess(images, sweeper.submitter)
        table = Table("key", "status", "attempts", "reason", "would go to" if dry_run else "goes to")
        for plan in planned:
            destination = ":".join(plan.route) if plan.route else f"skipped: {plan.skip}"
            table.add_row(
                plan.image.key,
                plan.image.status.value,
                str(plan.image.attempts),
                plan.image.status_reason or "",
                destination,
            )
        console.print(table)
        chosen = sum(1 for plan in planned if plan.route)
        if dry_run:
            console.print(f"dry run: {chosen} of {len(planned)} images would be submitted again")
            return
        outcome = ops.reprocess(planned, sweeper.submitter)
    console.print(
        f"submitted {outcome.images_submitted} of {chosen} images again in {outcome.requests_submitted} requests; "
        f"{outcome.handed_on} handed to the sweeper (paused or throttled), {outcome.duplicates} changed meanwhile"
    )


@main.command()
@click.option("--max", "limit", type=int, help="move at most this many messages")
@stack_option
def redrive(limit: int | None, stack_name: str | None) -> None:
    """Move dead-letter messages back to the submit queue."""
    target = target_for(stack_name)
    moved = ops.redrive(
        target.client("sqs"), target.outputs["SubmitDeadLetterQueueUrl"], target.outputs["SubmitQueueUrl"], limit
    )
    console.print(f"moved {moved} messages from the dead-letter queue to the submit queue")


@main.command()
@click.option("--status", help="only Ximilar requests in this state (DONE, CREATED, ...)")
@click.option("--type", "request_type", help="only Ximilar requests of this type")
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@stack_option
def reconcile(status: str | None, request_type: str | None, output: str, stack_name: str | None) -> None:
    """Ximilar's requests against ours: report what we do not know, record DONE results we missed."""
    target = target_for(stack_name)
    with target.services() as sweeper:
        client = sweeper.ximilar
        if not isinstance(client, XimilarClient):
            raise click.ClickException("reconcile needs the HTTP Ximilar client")
        findings = ops.reconcile(target.storage(), client, sweeper.recorder, status=status, type=request_type)
    if output == "json":
        click.echo(json.dumps([asdict(finding) for finding in findings], indent=2))
        return
    table = Table(title="Ximilar's requests against ours (records of unknown ones: --output json)")
    for column in ("request_id", "ximilar", "type", "created", "finding", "our images", "recorded", "records"):
        table.add_column(column, no_wrap=column in ("request_id", "created"))
    for finding in findings:
        table.add_row(
            finding.request_id,
            finding.ximilar_status,
            finding.type,
            finding.created[:19],
            finding.finding,
            str(finding.images),
            str(finding.recorded),
            str(len(finding.records)) if finding.finding == "unknown" else "",
        )
    console.print(table)
    summary = Counter(finding.finding for finding in findings)
    console.print(
        ", ".join(f"{count} {name}" for name, count in sorted(summary.items())) or "Ximilar lists no requests"
    )


@main.command()
@click.option("--reason", default="paused with xasync pause", show_default=True)
@stack_option
def pause(reason: str, stack_name: str | None) -> None:
    """Pause submission: uploads are still owned and wait with the reason until `xasync resume`."""
    paused = target_for(stack_name).storage().control.pause(reason, datetime.now(UTC))
    console.print("submission paused" if paused else "submission was already paused")


@main.command()
@stack_option
def resume(stack_name: str | None) -> None:
    """End a pause, and lift today's daily limit and credits floor; the sweeper submits what waits."""
    target_for(stack_name).storage().control.resume(datetime.now(UTC).date(), datetime.now(UTC))
    console.print("submission resumed (today's limit lifted); the sweeper submits what waited")


@main.command()
@click.option("--timeout", default=120.0, show_default=True, help="seconds to wait for every image")
@click.option("--samples", default=SAMPLES, type=click.Path(exists=True, path_type=Path), show_default=True)
@click.option("--ui", "with_page", is_flag=True, help="then keep the stack up and serve the results page until Ctrl-C")
@port_option
@runtime_option
@build_dir_option
def demo(timeout: float, samples: Path, with_page: bool, port: int, runtime: Runtime, build_dir: Path) -> None:
    """Start the embedded stack, upload the sample images, wait for every result, print them, stop."""
    started = time.monotonic()
    with (
        sigterm_as_interrupt(),
        runtime_errors(),
        local_stack.running(parameters={"LogLevel": "WARNING"}, runtime=runtime, build_dir=build_dir) as local,
    ):
        target = Target(local.outputs, int(local.environments["SweeperFunction"]["INDEX_SHARDS"]), local.aws_endpoint)
        console.print(f"local stack up in {time.monotonic() - started:.1f} s (moto, emulator, four functions)")
        console.print(f"functions {runtime_line(local)}")
        uploaded = upload_files(target, [samples], "")
        storage = target.storage()
        bucket = local.outputs["InputBucketName"]
        terminal = set(TERMINAL_STATUSES)

        def statuses() -> dict[str, Status]:
            found = storage.queries.images_by_uri(
                [identity.image_uri(bucket, key) for key in uploaded], consistent=False
            )
            # An image whose outputs are still being copied is not finished for the demo.
            return {
                image.key: Status.PROCESSING
                if any(output.state is OutputState.PENDING for output in image.outputs.values())
                else image.status
                for image in found.values()
            }

        with Progress(console=console) as progress:
            task = progress.add_task("waiting for results", total=len(uploaded))

            def finished() -> bool:
                done = sum(1 for status in statuses().values() if status in terminal)
                progress.update(task, completed=done)
                return done == len(uploaded)

            with contextlib.suppress(TimeoutError):  # what is left unfinished is reported below
                wait_for(finished, timeout=timeout, interval=0.5, what="every image to finish")
        items = find_items(target, None, None, None, None)
        print_items(items, "table")
        pending = [key for key in uploaded if statuses().get(key) not in terminal]
        console.print(
            f"{len(uploaded) - len(pending)} of {len(uploaded)} images finished in {time.monotonic() - started:.1f} s"
        )
        stored = [item for item in items if "STORED" in views.outputs_line(item)]
        console.print(f"{len(stored)} upscaled copies stored under {local.outputs['OutputLocation']}")
        if pending:
            console.print(f"[red]not finished: {', '.join(pending)}[/]")
        if with_page:
            serve_page(target, port)
        else:
            # The stack stops with this command, so the page is offered as a run that keeps it up.
            console.print("See them in a browser, inputs beside outputs: .venv/bin/xasync demo --ui")
        if pending:
            sys.exit(1)


from xasync.export_cmd import export_command  # noqa: E402 - its own module (results out for SQL)

main.add_command(export_command)

from xasync.buckets import connect_bucket_command  # noqa: E402 - its own module (buckets the stack did not create)

main.add_command(connect_bucket_command)


if __name__ == "__main__":
    main()
