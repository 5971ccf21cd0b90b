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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from xasync import local_stack, views
from xasync.lambda_runtime import LocalLambdaContext, load_function
from xasync.servers import wait_for
from xasync.template import PROJECT_ROOT, load_template
from ximilar_async import keys
from ximilar_async.dal.models import bind_tables
from ximilar_async.dal.repository import Repository
from ximilar_async.entities import OutputState
from ximilar_async.outputs import split_s3_uri
from ximilar_async.statuses import TERMINAL_STATUSES, Status

# Wide enough for the results table when the output is a log rather than a terminal.
console = Console(width=None if sys.stdout.isatty() else 150)
SAMPLES = PROJECT_ROOT / "samples"


@dataclass
class Target:
    """Where the commands act: the local stack (its endpoint) or a deployed one (real AWS)."""

    outputs: dict[str, str]
    index_shards: int
    endpoint: str | None = None
    environments: dict[str, dict[str, str]] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        factory: Any = boto3.client
        return factory(service, endpoint_url=self.endpoint) if self.endpoint else factory(service)

    def repository(self) -> Repository:
        tables = bind_tables(self.outputs["ImagesTableName"], self.outputs["RequestsTableName"], host=self.endpoint)
        # Retention only matters to writes; the CLI reads.
        return Repository(tables, self.index_shards, request_retention=timedelta(days=1))


def target_for(stack_name: str | None) -> Target:
    if stack_name:
        stack = boto3.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"][0]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack.get("Parameters", [])}
        return Target(outputs, int(parameters.get("IndexShards", 8)))
    state = local_stack.read_state()
    local_stack.use_local_credentials()
    shards = int(state["environments"]["SweeperFunction"]["INDEX_SHARDS"])
    return Target(state["outputs"], shards, state["aws_endpoint"], state["environments"])


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


@click.group()
def main() -> None:
    """ximilar-async: S3 uploads in, Ximilar results in DynamoDB."""
    logging.basicConfig(level=logging.WARNING)


@main.command()
@click.option("--ximilar-url", help="a real Ximilar API (default: the project's emulator)")
@click.option("--token", envvar="XIMILAR_TOKEN", help="the Ximilar API token (with --ximilar-url)")
@click.option("--sweep-every", default=2.0, show_default=True, help="seconds between sweeper runs")
@click.option("--parameter", "-p", multiple=True, help="a template parameter, Name=value (repeatable)")
def up(ximilar_url: str | None, token: str | None, sweep_every: float, parameter: tuple[str, ...]) -> None:
    """Run the embedded stack in the foreground until Ctrl-C (or SIGTERM)."""
    if ximilar_url and not token:
        raise click.UsageError("--ximilar-url needs --token (or XIMILAR_TOKEN)")
    overrides = dict(item.split("=", 1) for item in parameter)
    with (
        sigterm_as_interrupt(),
        local_stack.running(
            ximilar_url=ximilar_url, ximilar_token=token, parameters=overrides, sweep_every=sweep_every
        ) as local,
    ):
        local_stack.write_state(local)
        sam_env = local_stack.write_sam_env_vars(local)
        console.print("[bold green]ximilar-async local stack is up[/]")
        for name in ("InputBucketName", "ImagesTableName", "WebhookUrl", "SubmitQueueUrl", "OutputLocation"):
            console.print(f"  {name:<18} {local.outputs[name]}")
        console.print(f"  {'Ximilar API':<18} {local.ximilar_url}")
        pids = ", ".join(f"{name} {server.pid}" for name, server in local.servers.items())
        console.print(f"  {'Server pids':<18} {pids}")
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
        console.print("\nCtrl-C (or SIGTERM) stops everything.")
        try:
            while True:
                time.sleep(3600)  # the stack's threads do the work; this one waits for Ctrl-C
        except KeyboardInterrupt:
            console.print("stopping")
        finally:
            local_stack.STATE_FILE.unlink(missing_ok=True)


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
    repository = target.repository()
    if key:
        uris = [keys.image_uri(target.outputs["InputBucketName"], key)]
    elif request_id:
        uris = repository.image_uris_of_request(request_id)
    else:
        statuses = [Status(status)] if status else list(Status)
        uris = repository.image_uris_by_status(statuses, since or datetime.now(UTC) - timedelta(days=1))
    found = repository.images_by_uri(uris, consistent=False).values()
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


def parse_since(text: str | None) -> datetime | None:
    if not text:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[-1] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    return datetime.fromisoformat(text).astimezone(UTC)


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
    print_items(find_items(target_for(stack_name), key, request_id, status, parse_since(since)), output)


@main.command()
@click.option("--key", required=True, help="the image, by its key in the input bucket")
@click.option("--to", "destination", default=".", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@stack_option
def fetch(key: str, destination: Path, stack_name: str | None) -> None:
    """Download the stored outputs of one image (its upscaled copy, ...) from the output location."""
    target = target_for(stack_name)
    image = target.repository().image(keys.image_uri(target.outputs["InputBucketName"], key))
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
def invoke(function: str, event_file: Path, env_vars: Path | None) -> None:
    """Invoke FUNCTION (a logical id of template.yaml) with an event, as `sam local invoke` does."""
    click.echo(json.dumps(invoke_function(function, json.loads(event_file.read_text()), env_vars), default=str))


def invoke_function(function: str, event: dict[str, Any], env_vars: Path | None = None) -> Any:
    target = target_for(None)
    environment = {**target.environments[function], **sam_env_vars(env_vars, function)}
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


@main.command()
@click.option("--timeout", default=120.0, show_default=True, help="seconds to wait for every image")
@click.option("--samples", default=SAMPLES, type=click.Path(exists=True, path_type=Path), show_default=True)
def demo(timeout: float, samples: Path) -> None:
    """Start the embedded stack, upload the sample images, wait for every result, print them, stop."""
    started = time.monotonic()
    with sigterm_as_interrupt(), local_stack.running(parameters={"LogLevel": "WARNING"}) as local:
        target = Target(local.outputs, int(local.environments["SweeperFunction"]["INDEX_SHARDS"]), local.aws_endpoint)
        console.print(f"local stack up in {time.monotonic() - started:.1f} s (moto, emulator, four functions)")
        uploaded = upload_files(target, [samples], "")
        repository = target.repository()
        bucket = local.outputs["InputBucketName"]
        terminal = set(TERMINAL_STATUSES)

        def statuses() -> dict[str, Status]:
            found = repository.images_by_uri([keys.image_uri(bucket, key) for key in uploaded], consistent=False)
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
            sys.exit(1)


if __name__ == "__main__":
    main()
