"""IAM proven, not read: every AWS call a function makes during the tests, against the template's grants.

Attribution: `botocore_calls.py` (shared with the cost model) names the function behind each call;
calls with no function (the tests' own set-up and checks) are not the functions' and are not recorded.

Comparison, per function: the IAM action (S3 reads with a VersionId need GetObjectVersion) and the
resource by logical id. The template's statements are resolved with each resource standing for
`@<LogicalId>` (ARNs `arn:@:<LogicalId>`); the names a call uses are mapped back to logical ids
through the function's environment (the template sets those variables with !Ref) and, for the input
bucket, which no variable names, through the prefix of the name the template computes for it.

Grants are resolved for the default configuration of what is a key prefix or an optional name: a
`*Prefix` parameter stands for its default and an empty default stays empty (so `!If` on an empty
`OutputBucketName` takes the results bucket's branch, the one the tests run); every other parameter
stands for `@<Name>`. SQS calls are named by their queue URL, EventBridge calls by their bus; a
multipart upload (`upload_fileobj`) is s3:PutObject, as IAM counts it.

`WatchedBuckets` (buckets the stack did not create) stands for one entry, WATCHED_STAND_IN, so that its
statements (an `!If` on it) are read: a call on a bucket the function's WATCHED_BUCKETS names is
compared as a call on that stand-in, its key below the entry's prefix put below the stand-in's prefix
(a key outside the prefix stays outside it, and no grant allows it).

A presigned URL makes no call but is only good if the signer may s3:GetObject (GetObjectVersion with
a VersionId): `generate_presigned_url` is recorded as that action.
"""

from __future__ import annotations

import fnmatch
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support import botocore_calls
from tests.support.botocore_calls import ACTING, BotocoreCall, acting_as
from xasync.template import Resolver, functions
from ximilar_async.values.watched import WatchedPrefix, parse_watched_buckets

# What `WatchedBuckets` stands for in the grants: one `bucket:prefix` entry.
WATCHED_STAND_IN = WatchedPrefix("@WatchedBucket", "@watched/")

# Actions a function's role may hold that no botocore call in this process can show. None of them is
# in the template's statements today; they are here so that granting one is a decision, not a failure.
NOT_OBSERVABLE: dict[str, str] = {
    # SSM decrypts a SecureString server side for ssm:GetParameter(WithDecryption); a parameter under a
    # customer managed key needs kms:Decrypt on the role, which the function never calls itself.
    "kms:Decrypt": "used by SSM on the function's behalf (SecureString under a customer managed key)",
    # Written by the Lambda runtime and the X-Ray daemon, not by the function's code (SAM grants them
    # with AWSLambdaBasicExecutionRole and, for Tracing: Active, AWSXrayWriteOnlyAccess).
    "logs:CreateLogGroup": "the Lambda runtime",
    "logs:CreateLogStream": "the Lambda runtime",
    "logs:PutLogEvents": "the Lambda runtime",
    "xray:PutTraceSegments": "the X-Ray daemon",
    "xray:PutTelemetryRecords": "the X-Ray daemon",
    # The SQS event source mapping polls with the function's role (SAM: AWSLambdaSQSQueueExecutionRole);
    # locally the local stack's poller does it, outside any function.
    "sqs:ReceiveMessage": "the Lambda service's SQS poller",
    "sqs:DeleteMessage": "the Lambda service's SQS poller",
    "sqs:GetQueueAttributes": "the Lambda service's SQS poller",
    "sqs:ChangeMessageVisibility": "the Lambda service's SQS poller",
}

# Grants whose code path exists but no test reaches yet, each with the code that needs it. A grant
# listed here and used by a test is fine; remove the entry when a test covers it.
NEEDED_BUT_UNTESTED: dict[tuple[str, str], str] = {
    # ResultRecorder stores records over the item limit; tests send large results only by webhook.
    ("SweeperFunction", "s3:PutObject"): "a large result recorded by the sweeper instead of the webhook",
    # Resubmitting an image of a versioned bucket presigns its version (submit's test proves the action).
    ("SweeperFunction", "s3:GetObjectVersion"): "resubmitting an image of a versioned input bucket",
    # S3's multipart cleanup after a copy failed half way (upload_fileobj calls it; no test breaks S3 mid-copy).
    ("OutputsFunction", "s3:AbortMultipartUpload"): "a multipart copy that failed half way",
    ("OutputsFunction", "s3:GetObjectVersion"): "regenerating an image of a versioned input bucket",
    # SpendGuard.reserve -> ControlStore.reserve_submissions (the day's counter in the requests table), when a
    # regeneration is submitted under a DailySubmitLimit (the spend-guard tests drive submit, not the copier).
    ("OutputsFunction", "dynamodb:UpdateItem"): "a regeneration counted against the daily submit limit",
    # Exporting.py deletes the parts of a day past its new count: a day that shrank by 20,000 rows or more.
    ("ExportFunction", "s3:DeleteObject"): "a day exported again with fewer parts than before",
    # ControlStore.unmark_queued: SQS refused some messages of a batch, whose markers are taken back so that a
    # later run sends them (moto's SendMessageBatch never refuses an entry).
    ("BackfillFunction", "dynamodb:DeleteItem"): "a backfill batch some of whose messages SQS refused",
    # No call: S3 answers 404 instead of 403 for a missing object (the first run's state) to a caller that may list.
    ("ExportFunction", "s3:ListBucket"): "S3's 404 for a missing object (moto never answers 403 for one)",
}

# The same, for one statement's action where the function's other statements with that action are tested:
# (function, Sid, action) -> the code that needs it.
NEEDED_BUT_UNTESTED_STATEMENTS: dict[tuple[str, str, str], str] = {
    # tests/e2e/test_watched_bucket.py watches a versioned bucket: submit presigns with a VersionId there.
    ("SubmitFunction", "ReadWatchedUploads", "s3:GetObject"): "an upload of an unversioned watched bucket",
    ("SweeperFunction", "ReadWatchedUploads", "s3:GetObject"): "resubmitting an image of a watched bucket",
    ("SweeperFunction", "ReadWatchedUploads", "s3:GetObjectVersion"): "resubmitting an image of a watched bucket",
    ("OutputsFunction", "ReadWatchedUploads", "s3:GetObject"): "regenerating an image of a watched bucket",
    ("OutputsFunction", "ReadWatchedUploads", "s3:GetObjectVersion"): "regenerating an image of a watched bucket",
}

# IAM names of S3 operations that are not actions of their own.
_S3_ACTIONS = {
    "HeadObject": "GetObject",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
}
_SQS_ACTIONS = {"SendMessageBatch": "SendMessage", "DeleteMessageBatch": "DeleteMessage"}

_TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}


@dataclass(frozen=True, order=True)
class Call:
    function: str
    action: str
    resource: str


@dataclass(frozen=True, order=True)
class Grant:
    function: str
    sid: str
    action: str
    resource: str

    def allows(self, call: Call) -> bool:
        return (
            call.function == self.function
            and fnmatch.fnmatchcase(call.action.lower(), self.action.lower())
            and fnmatch.fnmatchcase(call.resource, self.resource)
        )


def grants_of(template: dict[str, Any]) -> tuple[list[Grant], list[str]]:
    """Every (action, resource) an Allow statement gives a function, resolved to logical ids; and
    the policies this audit cannot read (managed policies, SAM policy templates)."""
    resources = template["Resources"]

    def stand_in(name: str, declared: dict[str, Any]) -> str:
        if name == "WatchedBuckets":
            return f"{WATCHED_STAND_IN.bucket}:{WATCHED_STAND_IN.prefix}"
        default = declared.get("Default")
        if name.endswith("Prefix") or default == "":
            return str(default)
        return f"@{name}"

    resolver = Resolver(
        template,
        parameters={name: stand_in(name, declared) for name, declared in template.get("Parameters", {}).items()},
        physical_ids={logical_id: f"@{logical_id}" for logical_id in resources},
        attributes={f"{logical_id}.Arn": f"arn:@:{logical_id}" for logical_id in resources},
    )
    grants: list[Grant] = []
    unreadable: list[str] = []
    for logical_id in functions(template):
        for policy in resources[logical_id]["Properties"].get("Policies", []):
            if not (isinstance(policy, dict) and set(policy) == {"Statement"}):
                unreadable.append(f"{logical_id}: {policy}")
                continue
            for number, statement in enumerate(resolver.resolve(policy["Statement"])):  # an `!If` is one
                if statement.get("Effect") != "Allow":
                    continue
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                targets = resolver.resolve(statement["Resource"])
                for action in actions:
                    for target in targets if isinstance(targets, list) else [targets]:
                        grants.append(Grant(logical_id, statement.get("Sid", f"#{number}"), action, str(target)))
    return grants, unreadable


def bucket_name_prefixes(template: dict[str, Any]) -> dict[str, str]:
    """Name prefix -> logical id of buckets whose name the template computes as `Join` of a literal and more."""
    prefixes: dict[str, str] = {}
    for logical_id, resource in template["Resources"].items():
        name = resource.get("Properties", {}).get("BucketName") if resource["Type"] == "AWS::S3::Bucket" else None
        if isinstance(name, dict) and "Fn::Join" in name:
            separator, parts = name["Fn::Join"]
            if parts and isinstance(parts[0], str):
                prefixes[parts[0] + separator] = logical_id
    return prefixes


def names_in_environment(template: dict[str, Any], logical_id: str, environment: dict[str, str]) -> dict[str, str]:
    """Physical name -> logical id (resource or parameter), read from the variables the template sets by !Ref."""
    raw = {
        **template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}),
        **template["Resources"][logical_id]["Properties"].get("Environment", {}).get("Variables", {}),
    }
    names: dict[str, str] = {}
    for variable, value in raw.items():
        if isinstance(value, dict) and set(value) == {"Ref"} and variable in environment:
            names[environment[variable]] = value["Ref"]
    return names


@dataclass
class Audit:
    template: dict[str, Any]
    calls: Counter[Call] = field(default_factory=Counter)
    names: dict[str, dict[str, str]] = field(default_factory=dict)  # function -> physical name -> logical id
    watched: dict[str, tuple[WatchedPrefix, ...]] = field(default_factory=dict)  # function -> WATCHED_BUCKETS
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.grants, self.unreadable = grants_of(self.template)
        self.prefixes = bucket_name_prefixes(self.template)
        self.pseudo = Resolver(self.template).pseudo

    # --- recording ---------------------------------------------------------------------------
    def learn_names(self, function: str, environment: dict[str, str]) -> None:
        with self.lock:
            self.names.setdefault(function, {}).update(names_in_environment(self.template, function, environment))
            self.watched[function] = parse_watched_buckets(environment.get("WATCHED_BUCKETS", ""))

    def logical(self, function: str, name: str) -> str | None:
        known = self.names.get(function, {}).get(name)
        if known:
            return known
        return next((logical_id for prefix, logical_id in self.prefixes.items() if name.startswith(prefix)), None)

    def record(self, function: str, service: str, operation: str, params: dict[str, Any]) -> None:
        found = [
            Call(function, action, resource) for action, resource in self.actions(function, service, operation, params)
        ]
        with self.lock:
            self.calls.update(found)

    def actions(self, function: str, service: str, operation: str, params: dict[str, Any]) -> list[tuple[str, str]]:
        """The IAM (action, resource) pairs one API call needs, with resources as the grants spell them."""

        def arn(name: str) -> str:
            logical_id = self.logical(function, name)
            return f"arn:@:{logical_id}" if logical_id else f"arn:unknown:{name}"

        if service == "dynamodb":
            if operation in ("BatchGetItem", "BatchWriteItem"):
                return [(f"dynamodb:{operation}", arn(table)) for table in params["RequestItems"]]
            if operation in ("TransactWriteItems", "TransactGetItems"):
                pairs = []
                for item in params["TransactItems"]:
                    ((kind, body),) = item.items()
                    pairs.append((f"dynamodb:{_TRANSACT_ACTIONS[kind]}", arn(body["TableName"])))
                return pairs
            index = f"/index/{params['IndexName']}" if "IndexName" in params else ""
            return [(f"dynamodb:{operation}", arn(params["TableName"]) + index)]
        if service == "s3":
            if "Key" not in params:
                action = "ListBucket" if operation.startswith("ListObjects") else operation
                return [(f"s3:{action}", arn(params["Bucket"]))]
            action = _S3_ACTIONS.get(operation, operation)
            if action == "GetObject" and params.get("VersionId"):
                action = "GetObjectVersion"
            watched = self._watched_object(function, params["Bucket"], params["Key"])
            return [(f"s3:{action}", watched or f"{arn(params['Bucket'])}/{params['Key']}")]
        if service == "ssm":
            names = params["Names"] if operation == "GetParameters" else [params["Name"]]
            region, account = self.pseudo["AWS::Region"], self.pseudo["AWS::AccountId"]
            return [
                (f"ssm:{operation}", f"arn:aws:ssm:{region}:{account}:parameter{self._ref(function, name)}")
                for name in names
            ]
        if service == "secretsmanager":
            return [(f"secretsmanager:{operation}", self._ref(function, params["SecretId"]))]
        if service == "sqs" and "QueueUrl" in params:
            return [(f"sqs:{_SQS_ACTIONS.get(operation, operation)}", arn(params["QueueUrl"]))]
        if service == "events" and operation == "PutEvents":
            region, account = self.pseudo["AWS::Region"], self.pseudo["AWS::AccountId"]
            buses = {entry.get("EventBusName", "default") for entry in params["Entries"]}
            return [
                (f"events:{operation}", f"arn:aws:events:{region}:{account}:event-bus/{self._ref(function, bus)}")
                for bus in sorted(buses)
            ]
        return [(f"{service}:{operation}", "*")]

    def _watched_object(self, function: str, bucket: str, key: str) -> str | None:
        """The object of a watched bucket as the grants name it (see WATCHED_STAND_IN), or None."""
        entries = [each for each in self.watched.get(function, ()) if each.bucket == bucket]
        if not entries:
            return None
        covering = next((each for each in entries if each.covers(bucket, key)), None)
        relative = WATCHED_STAND_IN.prefix + key.removeprefix(covering.prefix) if covering else key
        return f"arn:aws:s3:::{WATCHED_STAND_IN.bucket}/{relative}"

    def _ref(self, function: str, name: str) -> str:
        logical_id = self.logical(function, name)
        return f"@{logical_id}" if logical_id else name

    # --- verdicts ----------------------------------------------------------------------------
    def disallowed(self) -> list[Call]:
        return sorted(call for call in self.calls if not any(grant.allows(call) for grant in self.grants))

    def unused(self) -> list[Grant]:
        return sorted(
            grant
            for grant in self.grants
            if grant.action not in NOT_OBSERVABLE
            and (grant.function, grant.action) not in NEEDED_BUT_UNTESTED
            and (grant.function, grant.sid, grant.action) not in NEEDED_BUT_UNTESTED_STATEMENTS
            and not any(grant.allows(call) for call in self.calls)
        )

    def report(self) -> list[str]:
        """Calls per function, action and resource; S3 objects counted per bucket, not listed by key."""
        grouped: Counter[tuple[str, str, str]] = Counter()
        for call, count in self.calls.items():
            resource = call.resource
            if call.action.startswith("s3:") and resource.startswith("arn:@:") and "/" in resource:
                resource = resource.split("/", 1)[0] + "/<key>"
            grouped[(call.function, call.action, resource)] += count
        lines = ["calls made by each function (count):"]
        for (function, action, resource), count in sorted(grouped.items()):
            lines.append(f"  {function:16} {action:32} {resource}  x{count}")
        return lines


# --- hooks -----------------------------------------------------------------------------------
_AUDIT: Audit | None = None


def current() -> Audit | None:
    return _AUDIT


def install(template: dict[str, Any]) -> Audit:
    """Start recording the functions' calls (and presigned URLs) through the shared botocore hooks."""
    global _AUDIT
    if _AUDIT is not None:
        return _AUDIT
    audit = _AUDIT = Audit(template)

    def record(call: BotocoreCall, proceed: Callable[[], Any]) -> Any:
        # Recorded before the call: a refused call (a failed condition) still needed the action.
        if call.function is not None:
            audit.record(call.function, call.service, call.operation, call.params)
        return proceed()

    botocore_calls.add_middleware(record)
    return audit


def wrap_load_function(audit: Audit) -> None:
    """Make every `load_function` already imported an attributed one that teaches the audit its names."""
    botocore_calls.wrap_load_function(audit.learn_names)


__all__ = ["ACTING", "Audit", "Call", "Grant", "acting_as", "current", "install", "wrap_load_function"]
