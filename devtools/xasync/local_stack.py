"""The embedded stack: template.yaml run on one machine, without Docker or an AWS account.

- moto in server mode serves S3, SQS, DynamoDB, SSM, Secrets Manager and CloudFormation; the
  template's plain resources are created by moto's CloudFormation from the template itself, and the
  stack completes what moto 5.2 skips (a bucket's NotificationConfiguration, bucket and queue policies,
  AWS::SecretsManager::Secret) from the same template's properties;
- the Ximilar emulator stands in for api.ximilar.com (or `ximilar_url` points at the real API);
- each AWS::Serverless::Function runs with the environment its Environment (and Globals) resolve to,
  in one of two runtimes: `in-process`, its Handler imported from its CodeUri into this process (quick
  to start, easy to debug, what the benchmarks instrument), or `lambda`, the `sam build` output under
  Lambda's runtime interface emulator and runtime client, a process per function (`xasync.lambda_rie`:
  what Lambda runs, as Lambda runs it). Its Events decide how it is invoked: SQS events are polled with
  the template's batch size, batching window and partial batch responses (redrive to the DLQ is
  SQS's own); HttpApi events are served on a local port as payload 2.0 events; Schedule events run on
  a timer (faster locally);
- the buckets of `WatchedBuckets`: moto's EventBridge rules of the template deliver S3's events to the
  submit queue through a relay that puts them in AWS's documented shape (`s3_eventbridge.py`);
- the completion events the functions put on the stack's bus (EventBusName) are delivered by moto's
  EventBridge, through a rule on `source` = the stack's name, to a local queue (`LocalEventsQueueUrl`
  in the outputs): what a user's rule to SQS would receive; `xasync events --follow` reads it;
- with `dynamodb_faults`, the functions' DynamoDB calls go through a proxy that fails as DynamoDB does
  (`dynamodb_faults.py`: throttling, writes applied then answered 500 or dropped, index and read lag);
  the stack's own calls (deploying, `LocalStack.client`, the CLI) stay on moto.

A change to the template changes the local run: there is no second list of resources here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from urllib.parse import urlsplit

import boto3

from xasync import lambda_rie
from xasync.dynamodb_faults import DynamoFaultProxy, DynamoFaults, dynamodb_fault_proxy
from xasync.http_api import LocalHttpApi, Route
from xasync.lambda_runtime import LocalLambdaContext, lambda_sqs_record, load_function
from xasync.s3_eventbridge import relay_s3_rules, s3_rules
from xasync.servers import Server, run_emulator, run_moto
from xasync.template import (
    PROJECT_ROOT,
    FunctionSpec,
    Resolver,
    created_functions,
    functions,
    load_template,
    resources_of_type,
)
from ximilar_async.services.webhook_auth import SUBMISSION_HEADER, TOKEN_HEADER, WebhookAuth, static_keys

logger = logging.getLogger("xasync.local")

STACK_NAME = "xasync-local"
# XASYNC_STATE_DIR lets a second stack (a test of `xasync up`) run without touching the user's state.
STATE_FILE = Path(os.environ.get("XASYNC_STATE_DIR") or PROJECT_ROOT / ".xasync") / "local.json"
LOCAL_TOKEN = "local-emulator-token"  # noqa: S105 - the emulator's token, local only
# The signing key of local stacks: events/webhook-done.json carries a token made with it.
LOCAL_SIGNING_KEY = "local-webhook-signing-key"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
# Parameters that make a local run quick; any of them can be overridden.
LOCAL_PARAMETERS = {
    "Routes": "incoming/=upscaler:upscale_2x;incoming/cards/=card-grader:grade;"
    "incoming/collectibles/=collectibles-recognition:tcg_id;incoming/flows/=flows:demo-flow",
    "FirstCheckDelaySeconds": "3",
    "SubmittingTimeoutSeconds": "30",
    "SubmitBatchingWindowSeconds": "1",
}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DYNAMODB_ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL_DYNAMODB"
# Resource types moto 5.2's CloudFormation skips that nothing local needs, and why.
NOT_NEEDED_LOCALLY = {
    "AWS::CloudWatch::Alarm": "nothing evaluates metrics locally: the functions print EMF to stdout (tests read it)",
    "AWS::SNS::Subscription": "no one to e-mail locally (and only with AlertEmail set)",
    # moto 5.2's CloudFormation has no Glue resources; DuckDB reads the export's files instead (docs/sql.md).
    "AWS::Glue::Database": "no Athena locally (and only with ExportGlueDatabaseName set)",
    "AWS::Glue::Table": "no Athena locally: DuckDB reads the exported files (docs/sql.md)",
    # moto 5.2's Step Functions grammar has no ItemBatcher or ProcessorConfig: no Distributed Map runs there.
    "AWS::Serverless::StateMachine": "moto 5.2 cannot run a Distributed Map: `xasync backfill` drives BackfillFunction "
    "with the Map's batches itself (docs/operations.md#backfill-in-aws)",
}

# Where the functions run: imported into this process, or built by `sam build` and run under Lambda's runtime
# interface emulator and client (xasync.lambda_rie).
Runtime = Literal["in-process", "lambda"]
RUNTIMES: tuple[Runtime, ...] = ("in-process", "lambda")

# Called with (function, event) in the invocation's own thread and context, just before the handler;
# returns what to call after it with (answer or None, error or None, handler seconds). The cost
# benchmark measures billed durations and log bytes with it.
InvocationObserver = Callable[[str, dict[str, Any]], Callable[[Any, BaseException | None, float], None]]


@dataclass
class Invocations:
    """What each function was asked and answered, for tests and the CLI's progress."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: dict[str, list[Any]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    observers: list[InvocationObserver] = field(default_factory=list)

    in_flight: int = 0

    def call(self, function: str, handler: Callable[..., Any], event: dict[str, Any], context: Any) -> Any:
        """Invoke `handler`, counting it in flight meanwhile and recording its answer or error."""
        with self.lock:
            self.in_flight += 1
        finishers = [observe(function, event) for observe in list(self.observers)]
        answer: Any = None
        failure: BaseException | None = None
        started = time.perf_counter()
        try:
            answer = handler(event, context)
        except Exception as error:
            failure = error
            self.record(function, error=error)
            raise
        else:
            self.record(function, answer)
            return answer
        finally:
            seconds = time.perf_counter() - started
            for finish in finishers:
                finish(answer, failure, seconds)
            with self.lock:
                self.in_flight -= 1

    def idle(self) -> bool:
        with self.lock:
            return self.in_flight == 0

    def record(self, function: str, answer: Any = None, error: BaseException | None = None) -> None:
        with self.lock:
            if error is None:
                self.answers.setdefault(function, []).append(answer)
            else:
                self.errors.setdefault(function, []).append(f"{type(error).__name__}: {error}")


@dataclass
class LocalStack:
    """A running embedded stack; `state()` is what the CLI's other commands read."""

    aws_endpoint: str
    ximilar_url: str
    api_url: str
    outputs: dict[str, str]
    physical_ids: dict[str, str]
    environments: dict[str, dict[str, str]]
    modules: dict[str, ModuleType]
    invocations: Invocations
    template: dict[str, Any]
    resources: dict[str, str]  # logical id -> what stands for it locally
    parameters: dict[str, str] = field(default_factory=dict)  # the template parameters in force
    servers: dict[str, Server] = field(default_factory=dict)  # the processes started, by name
    dynamodb_faults: DynamoFaultProxy | None = None  # the functions' DynamoDB endpoint, when faults are on
    runtime: Runtime = "in-process"
    lambda_functions: dict[str, lambda_rie.RieFunction] = field(default_factory=dict)  # runtime "lambda"

    def state(self) -> dict[str, Any]:
        return {
            "server_pids": {name: server.pid for name, server in self.servers.items()},
            "runtime": self.runtime,
            "aws_endpoint": self.aws_endpoint,
            "ximilar_url": self.ximilar_url,
            "api_url": self.api_url,
            "outputs": self.outputs,
            "physical_ids": self.physical_ids,
            "environments": self.environments,
        }

    def client(self, service: str) -> Any:
        factory: Any = boto3.client
        return factory(service, endpoint_url=self.aws_endpoint)


def freshly_signed(event: dict[str, Any], key: str = LOCAL_SIGNING_KEY) -> dict[str, Any]:
    """A webhook event (HTTP API 2.0) whose token, if `key` made it, is made again now.

    Tokens expire (MaxRequestAgeSeconds), so the signed examples in events/ are signed again when they
    are used: by `xasync invoke`, by `xasync up` for `sam local invoke` (.xasync/events/), by the tests.
    A token of another key, or no token of ours (the wrong-token example), is left as it is.
    """
    headers = {name.lower(): value for name, value in (event.get("headers") or {}).items()}
    token, submission_id = headers.get(TOKEN_HEADER.lower()), headers.get(SUBMISSION_HEADER.lower())
    auth = WebhookAuth(static_keys(key))
    if not token or not submission_id or not auth.signs(token):
        return event
    fresh = auth.headers(submission_id)[TOKEN_HEADER]
    return {**event, "headers": {**headers, TOKEN_HEADER.lower(): fresh}}


def fetches_local_urls(ximilar_url: str) -> bool:
    """Whether a Ximilar at this URL can download the presigned URLs of moto on this machine's loopback."""
    return urlsplit(ximilar_url).hostname in LOOPBACK_HOSTS


def stack_parameters(template: dict[str, Any], ximilar_url: str, overrides: dict[str, str]) -> dict[str, str]:
    """The template parameters of a local stack: quick local values, the Ximilar URL, the user's overrides.

    A Ximilar that is not on this machine (the real API) cannot fetch presigned URLs of the local moto
    server, so every image it may be sent (up to MaxImageBytes) goes inline as `_base64` instead.
    """
    values = {**LOCAL_PARAMETERS, "XimilarApiUrl": ximilar_url, **overrides}
    if not fetches_local_urls(ximilar_url):
        values["InlineBase64MaxBytes"] = str(
            values.get("MaxImageBytes", template["Parameters"]["MaxImageBytes"]["Default"])
        )
    return values


def _aws(endpoint: str, service: str) -> Any:
    factory: Any = boto3.client
    return factory(service, endpoint_url=endpoint)


def _notification_configuration(resolved: dict[str, Any]) -> dict[str, Any]:
    """A bucket's NotificationConfiguration from template (CloudFormation) shape to API shape."""
    queues = []
    for queue in resolved.get("QueueConfigurations", []):
        rules = queue.get("Filter", {}).get("S3Key", {}).get("Rules", [])
        entry: dict[str, Any] = {"QueueArn": queue["Queue"], "Events": [queue["Event"]]}
        if rules:
            entry["Filter"] = {"Key": {"FilterRules": [{"Name": r["Name"], "Value": r["Value"]} for r in rules]}}
        queues.append(entry)
    return {"QueueConfigurations": queues}


def _requires_tls(statement: dict[str, Any]) -> bool:
    return bool(
        statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}} and statement["Effect"] == "Deny"
    )


def deploy_resources(
    endpoint: str, template: dict[str, Any], parameters: dict[str, str], resources: dict[str, str]
) -> Resolver:
    """Create the template's plain resources in moto, complete what moto skips; returns the resolver.

    `resources` receives, for each logical id handled here, what stands for it locally.
    """
    cfn = _aws(endpoint, "cloudformation")
    cfn.create_stack(
        StackName=STACK_NAME,
        TemplateBody=(PROJECT_ROOT / "template.yaml").read_text(),
        Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    stack = cfn.describe_stacks(StackName=STACK_NAME)["Stacks"][0]
    if stack["StackStatus"] != "CREATE_COMPLETE":
        raise RuntimeError(f"moto could not create the stack: {stack.get('StackStatusReason')}")
    physical = {
        summary["LogicalResourceId"]: summary["PhysicalResourceId"]
        for summary in cfn.list_stack_resources(StackName=STACK_NAME)["StackResourceSummaries"]
        if summary["LogicalResourceId"]
    }
    sqs, s3 = _aws(endpoint, "sqs"), _aws(endpoint, "s3")
    resolver = Resolver(
        template, parameters=parameters, pseudo={**Resolver(template).pseudo, "AWS::StackName": STACK_NAME}
    )
    for logical_id in resources_of_type(template, "AWS::SQS::Queue"):
        url = physical[logical_id]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        resolver.attributes[f"{logical_id}.Arn"] = arn
        resolver.attributes[f"{logical_id}.QueueName"] = arn.rsplit(":", 1)[1]
    for logical_id in resources_of_type(template, "AWS::S3::Bucket"):
        resolver.attributes[f"{logical_id}.Arn"] = f"arn:aws:s3:::{physical[logical_id]}"
    for logical_id in resources_of_type(template, "AWS::DynamoDB::Table"):
        resolver.attributes[f"{logical_id}.Arn"] = (
            f"arn:aws:dynamodb:us-east-1:123456789012:table/{physical[logical_id]}"
        )
    for logical_id in resources_of_type(template, "AWS::Events::Rule"):
        if logical_id in physical:  # created: its condition held
            resolver.attributes[f"{logical_id}.Arn"] = (
                f"arn:aws:events:us-east-1:123456789012:rule/{physical[logical_id]}"
            )
    secrets = _aws(endpoint, "secretsmanager")
    for logical_id in resources_of_type(template, "AWS::SecretsManager::Secret"):
        # The local key is fixed, so the signed examples in events/ verify (signed again) against a local stack.
        physical[logical_id] = secrets.create_secret(Name=f"{STACK_NAME}-{logical_id}", SecretString=LOCAL_SIGNING_KEY)[
            "ARN"
        ]
    resolver.physical_ids.update(physical)
    for logical_id, physical_id in physical.items():
        resources[logical_id] = f"moto: {physical_id}"
    for resource_type, why in NOT_NEEDED_LOCALLY.items():
        for logical_id in resources_of_type(template, resource_type):
            resources.setdefault(logical_id, f"not created locally: {why}")
    for logical_id in resources_of_type(template, "AWS::Logs::LogGroup"):
        # Created, so the template's wiring is exercised; the local HTTP API writes no access log to it.
        resources[logical_id] = f"moto: {physical[logical_id]} (nothing writes to it locally)"

    for logical_id, resource in resources_of_type(template, "AWS::S3::Bucket").items():
        configuration = resource["Properties"].get("NotificationConfiguration")
        if configuration:
            s3.put_bucket_notification_configuration(
                Bucket=physical[logical_id],
                NotificationConfiguration=_notification_configuration(resolver.resolve(configuration)),
            )
    for logical_id, resource in resources_of_type(template, "AWS::S3::BucketPolicy").items():
        properties = resolver.resolve(resource["Properties"])
        document = dict(properties["PolicyDocument"])
        # moto enforces bucket policies, and locally every call is plain HTTP on loopback: the
        # TLS-only statements are the one part of the template that cannot apply here.
        document["Statement"] = [s for s in document["Statement"] if not _requires_tls(s)]
        if document["Statement"]:
            s3.put_bucket_policy(Bucket=properties["Bucket"], Policy=json.dumps(document))
        skipped = len(properties["PolicyDocument"]["Statement"]) - len(document["Statement"])
        resources[logical_id] = (
            f"moto: policy of {properties['Bucket']} ({skipped} TLS-only statement(s) not applicable over local HTTP)"
        )
    for logical_id, resource in resources_of_type(template, "AWS::SQS::QueuePolicy").items():
        properties = resolver.resolve(resource["Properties"])
        for queue_url in properties["Queues"]:
            sqs.set_queue_attributes(
                QueueUrl=queue_url, Attributes={"Policy": json.dumps(properties["PolicyDocument"])}
            )
        resources[logical_id] = f"moto: policy of {', '.join(properties['Queues'])}"
    return resolver


LOCAL_EVENTS_QUEUE = f"{STACK_NAME}-events"


def deliver_events_locally(endpoint: str, resolver: Resolver) -> str:
    """A rule on the stack's bus sending its completion events to a local queue; returns the queue's URL.

    Not in the template: which consumers a deployed stack has is the user's choice (README has rules to
    SQS and Step Functions); locally the queue stands for them.
    """
    sqs, events = _aws(endpoint, "sqs"), _aws(endpoint, "events")
    queue_url = str(sqs.create_queue(QueueName=LOCAL_EVENTS_QUEUE)["QueueUrl"])
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bus = str(resolver.parameter("EventBusName"))
    if bus != "default":
        with contextlib.suppress(events.exceptions.ResourceAlreadyExistsException):
            events.create_event_bus(Name=bus)
    events.put_rule(
        Name=f"{STACK_NAME}-completion-events",
        EventBusName=bus,
        EventPattern=json.dumps({"source": [STACK_NAME]}),
        State="ENABLED",
    )
    events.put_targets(
        Rule=f"{STACK_NAME}-completion-events", EventBusName=bus, Targets=[{"Id": "local-queue", "Arn": queue_arn}]
    )
    return queue_url


def function_environment(
    spec: FunctionSpec,
    resolver: Resolver,
    endpoint: str,
    webhook_urls: dict[str, str],
    dynamodb_endpoint: str | None = None,
) -> dict[str, str]:
    """The function's environment as the template resolves it, pointed at the local stack.

    `dynamodb_endpoint` sends its DynamoDB calls elsewhere (the fault proxy): botocore takes a service's
    own AWS_ENDPOINT_URL_<SERVICE> over AWS_ENDPOINT_URL, for boto3's and pynamodb's clients alike.
    """
    deployed = resolver.resolve(spec.environment)  # already resolved strings, kept for clarity
    environment = {name: webhook_urls.get(value, value) for name, value in deployed.items()}
    dynamodb = {DYNAMODB_ENDPOINT_VARIABLE: dynamodb_endpoint} if dynamodb_endpoint else {}
    return {
        **environment,
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        **dynamodb,
        "POWERTOOLS_METRICS_DISABLED": "true",
    }


class SqsEventSource:
    """Lambda's SQS event source mapping, as a thread: batch size, batching window, partial failures."""

    def __init__(
        self,
        name: str,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        handler: Callable[..., Any],
        properties: dict[str, Any],
        invocations: Invocations,
        retry_delay: int,
        timeout: int,
    ) -> None:
        self.name, self.sqs, self.queue_url, self.queue_arn = name, sqs, queue_url, queue_arn
        self.handler, self.invocations, self.retry_delay, self.timeout = handler, invocations, retry_delay, timeout
        self.batch_size = int(properties.get("BatchSize", 10))
        self.window = float(properties.get("MaximumBatchingWindowInSeconds", 0))
        self.partial = "ReportBatchItemFailures" in properties.get("FunctionResponseTypes", [])
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"sqs-{name}", daemon=True)

    def _receive_batch(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.window
        while len(messages) < self.batch_size and not self.stopping.is_set():
            answer = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, self.batch_size - len(messages)),
                WaitTimeSeconds=1,
                AttributeNames=["All"],
            )
            messages.extend(answer.get("Messages", []))
            if time.monotonic() >= deadline and messages:
                break
            if not answer.get("Messages") and messages:
                break
        return messages

    def _run(self) -> None:
        while not self.stopping.is_set():
            messages = self._receive_batch()
            if not messages:
                continue
            failed: set[str] = set()
            try:
                answer = self.invocations.call(
                    self.name,
                    self.handler,
                    {"Records": [lambda_sqs_record(m, self.queue_arn) for m in messages]},
                    LocalLambdaContext(function_name=self.name, timeout_seconds=self.timeout),
                )
                if self.partial and isinstance(answer, dict):
                    failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
            except Exception:  # a failed invocation fails the whole batch, as on Lambda (recorded by `call`)
                failed = {m["MessageId"] for m in messages}
            done = [m for m in messages if m["MessageId"] not in failed]
            for start in range(0, len(done), 10):
                self.sqs.delete_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(done[start : start + 10])
                    ],
                )
            for message in messages:
                if message["MessageId"] in failed:
                    # Locally a failed message comes back after `retry_delay`, not the queue's 6 minutes.
                    self.sqs.change_message_visibility(
                        QueueUrl=self.queue_url,
                        ReceiptHandle=message["ReceiptHandle"],
                        VisibilityTimeout=self.retry_delay,
                    )


class Timer:
    """A Schedule event: the handler every `seconds`, with a scheduled-event payload."""

    def __init__(
        self, name: str, handler: Callable[..., Any], seconds: float, invocations: Invocations, timeout: int
    ) -> None:
        self.name, self.handler, self.seconds, self.invocations, self.timeout = (
            name,
            handler,
            seconds,
            invocations,
            timeout,
        )
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"schedule-{name}", daemon=True)

    def _run(self) -> None:
        while not self.stopping.wait(self.seconds):
            event = {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "account": "123456789012",
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "region": "us-east-1",
                "resources": [],
                "detail": {},
            }
            context = LocalLambdaContext(function_name=self.name, timeout_seconds=self.timeout)
            with contextlib.suppress(Exception):  # recorded by `call`; the next tick runs again
                self.invocations.call(self.name, self.handler, event, context)


@contextmanager
def running(
    *,
    ximilar_url: str | None = None,
    ximilar_token: str | None = None,
    parameters: dict[str, str] | None = None,
    sweep_every: float = 2.0,
    retry_delay: int = 2,
    emulator_flags: tuple[str, ...] = ("--created-delay-seconds", "0.2", "--processing-delay-seconds", "0.3"),
    dynamodb_faults: DynamoFaults | None = None,
    runtime: Runtime = "in-process",
    build_dir: Path | None = None,
    log_dir: Path | None = None,
) -> Iterator[LocalStack]:
    """Start everything, yield the running stack, stop everything (servers by their own process ids).

    With `dynamodb_faults`, the functions reach DynamoDB through a proxy injecting them (`LocalStack.dynamodb_faults`).
    With `runtime="lambda"`, each function runs from `build_dir` (default .aws-sam/build) under aws-lambda-rie,
    its own server (`servers[logical_id]`, `lambda_functions`), RIE's log lines in `log_dir/<logical id>.log`.
    """
    template = load_template()
    built = lambda_built(template, build_dir) if runtime == "lambda" else None
    saved_environment = dict(os.environ)  # functions' cold starts set variables: put them back after
    use_local_credentials()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with ExitStack() as stack:
        stack.callback(restore_environment, saved_environment)
        for name in [name for name in os.environ if name.startswith("AWS_ENDPOINT_URL_")]:
            # The functions run in this process, its variables under theirs: a service's own endpoint left
            # in the user's shell would take that service's calls from the local stack (see function_environment).
            del os.environ[name]
        servers = {"moto": stack.enter_context(run_moto())}
        endpoint = servers["moto"].url
        proxy = stack.enter_context(dynamodb_fault_proxy(endpoint, dynamodb_faults)) if dynamodb_faults else None
        token = ximilar_token or LOCAL_TOKEN
        if not ximilar_url:
            servers["emulator"] = stack.enter_context(run_emulator(token, *emulator_flags))
        api_url = ximilar_url or servers["emulator"].url
        values = stack_parameters(template, api_url, parameters or {})
        resources: dict[str, str] = {}
        resolver = deploy_resources(endpoint, template, values, resources)
        events_queue_url = deliver_events_locally(endpoint, resolver)
        relays = relay_s3_rules(
            _aws(endpoint, "sqs"), _aws(endpoint, "events"), template, resolver.physical_ids, STACK_NAME
        )
        for logical_id, relay in relays.items():
            resources[logical_id] += " (S3's events relayed to its target in AWS's documented shape: moto 5.2's differ)"
            relay.thread.start()
            stack.callback(relay.thread.join, 10)
            stack.callback(relay.stopping.set)
        for logical_id in [name for name in s3_rules(template) if name not in relays]:
            resources[logical_id] = "not created: its condition is false (WatchedBuckets has no entry for its slot)"
        _aws(endpoint, "ssm").put_parameter(
            Name=resolver.parameter("XimilarTokenParameterName"), Value=token, Type="SecureString", Overwrite=True
        )
        invocations = Invocations()
        specs = created_functions(template, resolver)
        for logical_id in set(functions(template, resolver)) - set(specs):
            resources[logical_id] = "not created: its condition is false"
        http_routes: list[tuple[str, str, str]] = []
        for logical_id, spec in specs.items():
            for event in spec.events.values():
                if event["Type"] == "HttpApi":
                    http_routes.append((logical_id, event["Properties"]["Method"], event["Properties"]["Path"]))
        modules: dict[str, ModuleType] = {}
        lambda_functions: dict[str, lambda_rie.RieFunction] = {}
        handlers: dict[str, Callable[..., Any]] = {}

        def call(logical_id: str) -> Callable[..., Any]:
            def invoke(event: dict[str, Any], context: Any) -> Any:
                return invocations.call(logical_id, handlers[logical_id], event, context)

            return invoke

        api = LocalHttpApi(
            [
                Route(
                    method,
                    path,
                    call(logical_id),
                    functools.partial(
                        LocalLambdaContext, function_name=logical_id, timeout_seconds=specs[logical_id].timeout
                    ),
                )
                for logical_id, method, path in http_routes
            ]
        )
        stack.callback(api.stop)
        api.start()
        deployed_webhook = str(resolver.resolve(template["Outputs"]["WebhookUrl"]["Value"]))
        webhook_urls = {deployed_webhook: f"{api.url}/webhook"}
        environments: dict[str, dict[str, str]] = {}
        for logical_id, spec in specs.items():
            environment = function_environment(spec, resolver, endpoint, webhook_urls, proxy.url if proxy else None)
            environments[logical_id] = environment
            if built is None:
                modules[logical_id] = load_function(template, logical_id, environment)
                handlers[logical_id] = getattr(modules[logical_id], spec.handler_name)
                continue
            lambda_runtime, built_functions = built
            function = stack.enter_context(
                lambda_rie.running_function(
                    built_functions[logical_id],
                    environment,
                    lambda_runtime,
                    log_path=log_dir / f"{logical_id}.log" if log_dir else None,
                )
            )
            lambda_functions[logical_id] = function
            servers[logical_id] = Server(function.url, function.pid)
            handlers[logical_id] = function.invoke
        sources: list[SqsEventSource | Timer] = []
        sqs = _aws(endpoint, "sqs")
        for logical_id, spec in specs.items():
            for event in spec.events.values():
                properties = event["Properties"]
                if event["Type"] == "SQS":
                    queue_arn = str(properties["Queue"])
                    queue_url = sqs.get_queue_url(QueueName=queue_arn.rsplit(":", 1)[1])["QueueUrl"]
                    sources.append(
                        SqsEventSource(
                            logical_id,
                            sqs,
                            queue_url,
                            queue_arn,
                            handlers[logical_id],
                            properties,
                            invocations,
                            retry_delay,
                            spec.timeout,
                        )
                    )
                elif event["Type"] == "Schedule":
                    sources.append(Timer(logical_id, handlers[logical_id], sweep_every, invocations, spec.timeout))
        for source in sources:
            source.thread.start()
        for logical_id, spec in specs.items():
            kinds = ", ".join(sorted({event["Type"] for event in spec.events.values()}))
            handler = f"{spec.handler_module}.{spec.handler_name}"
            resources[logical_id] = (
                f"in-process: {handler} on {kinds}"
                if built is None
                else f"aws-lambda-rie (pid {lambda_functions[logical_id].pid}): {handler} from "
                f"{lambda_functions[logical_id].function.task_root} on {kinds}"
            )
        for logical_id in resources_of_type(template, "AWS::Serverless::HttpApi"):
            resources[logical_id] = f"local HTTP API (payload 2.0): {api.url}"
        for logical_id in resources_of_type(template, "AWS::Serverless::LayerVersion"):
            resources[logical_id] = (
                "the venv's editable install of layers/shared"
                if built is None
                else layer_description(built[0].build_dir / logical_id / "python")
            )

        def stop_sources() -> None:
            for source in sources:
                source.stopping.set()
            for source in sources:
                source.thread.join(timeout=10)

        stack.callback(stop_sources)
        outputs = {key: str(resolver.resolve(output["Value"])) for key, output in template["Outputs"].items()}
        outputs["WebhookUrl"] = f"{api.url}/webhook"
        outputs["LocalEventsQueueUrl"] = events_queue_url
        yield LocalStack(
            endpoint,
            api_url,
            api.url,
            outputs,
            dict(resolver.physical_ids),
            environments,
            modules,
            invocations,
            template,
            resources,
            values,
            servers,
            proxy,
            runtime,
            lambda_functions,
        )


def lambda_built(
    template: dict[str, Any], build_dir: Path | None
) -> tuple[lambda_rie.LambdaRuntime, dict[str, lambda_rie.BuiltFunction]]:
    """The runtime mode's parts, checked before anything starts: a missing part, a build for another
    runtime, or an extension module this machine can neither load nor replace stops it with what to do."""
    lambda_runtime = lambda_rie.LambdaRuntime.locate(build_dir)
    built = lambda_rie.built_functions(template, lambda_runtime.build_dir)
    python = lambda_runtime.python_version()
    for function in built.values():
        if function.runtime != python:
            raise lambda_rie.RuntimeUnavailable(
                f"{function.logical_id} runs on {function.runtime}, {lambda_rie.LAMBDA_VENV} is {python}"
            )
        for folder in (function.task_root, *function.layers):
            for extension in lambda_rie.foreign_extensions(folder):
                if extension.fallback is None:
                    raise lambda_rie.RuntimeUnavailable(
                        f"{extension.path} is built for another machine, and its package has no pure-Python "
                        f"{extension.module} to import in its place here"
                    )
    stale = lambda_rie.stale_sources(template, lambda_runtime.build_dir)
    if stale:
        logger.warning(
            "the build in %s differs from the sources in %d file(s), e.g. %s: it runs what it was built from "
            "(make build)",
            lambda_runtime.build_dir,
            len(stale),
            stale[0],
        )
    return lambda_runtime, built


def layer_description(layer: Path) -> str:
    """What stands for a layer in the runtime mode, and which of its extension modules run as Python here."""
    replaced = lambda_rie.foreign_extensions(layer)
    if not replaced:
        return f"sam build output: {layer}"
    names = ", ".join(
        str(e.fallback.relative_to(layer).with_suffix("")).replace("/", ".") for e in replaced if e.fallback
    )
    return f"sam build output: {layer} ({names}: built for Lambda's machine, their pure-Python modules here)"


def restore_environment(saved: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(saved)


def use_local_credentials() -> None:
    """The fake credentials moto takes (never real ones: nothing here may reach AWS)."""
    os.environ.update(FAKE_CREDENTIALS)


def write_state(local: LocalStack, path: Path | None = None) -> None:
    path = path or STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(local.state(), indent=2))


def write_sam_env_vars(local: LocalStack, path: Path | None = None) -> Path:
    """A `sam local invoke --env-vars` file for this stack, as seen from inside Docker."""
    path = path or STATE_FILE.parent / "env.sam.json"
    docker_view = {
        logical_id: {name: value.replace("127.0.0.1", "host.docker.internal") for name, value in environment.items()}
        for logical_id, environment in local.environments.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(docker_view, indent=2))
    return path


def write_signed_events(directory: Path | None = None) -> Path:
    """events/webhook-*.json with tokens made now, for `sam local invoke` (the committed ones expire)."""
    directory = directory or STATE_FILE.parent / "events"
    directory.mkdir(parents=True, exist_ok=True)
    for source in sorted((PROJECT_ROOT / "events").glob("webhook-*.json")):
        event = freshly_signed(json.loads(source.read_text()))
        (directory / source.name).write_text(json.dumps(event, indent=2) + "\n")
    return directory


def read_state(path: Path | None = None) -> dict[str, Any]:
    path = path or STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no local stack is running (start one with `xasync up`; {path} is missing)")
    state: dict[str, Any] = json.loads(path.read_text())
    return state


__all__ = ["LocalStack", "read_state", "running", "write_state"]
