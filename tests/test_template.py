"""template.yaml against the code: lint-clean, handlers importable, settings covered, tables = models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from cfnlint.api import lint_all

from xasync.template import PROJECT_ROOT, TEMPLATE_PATH, Resolver, functions, resources_of_type
from ximilar_async.adapters.dynamodb.models import ImageItem, RequestItem, bind_tables
from ximilar_async.settings import (
    MAX_WEBHOOK_BODY_LIMIT,
    BackfillSettings,
    CommonSettings,
    ExportSettings,
    OutputsSettings,
    SettingsError,
    SubmitSettings,
    SweeperSettings,
    WebhookSettings,
)

SETTINGS_OF: dict[str, type[CommonSettings]] = {
    "SubmitFunction": SubmitSettings,
    "WebhookFunction": WebhookSettings,
    "SweeperFunction": SweeperSettings,
    "OutputsFunction": OutputsSettings,
    "ExportFunction": ExportSettings,  # only with ExportSchedule set (its condition)
    "BackfillFunction": BackfillSettings,
}
READ_BY_POWERTOOLS = {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"}


def test_cfn_lint_finds_nothing() -> None:
    # Errors and warnings, as the cfn-lint command reports by default (informational hints aside).
    problems = [problem for problem in lint_all(TEMPLATE_PATH.read_text()) if problem.rule.id[0] in "EW"]
    assert problems == [], "\n".join(str(problem) for problem in problems)


def test_the_template_declares_exactly_these_functions(template: dict[str, Any]) -> None:
    assert set(functions(template)) == set(SETTINGS_OF)


@pytest.mark.parametrize("logical_id", sorted(SETTINGS_OF))
def test_each_handler_imports_with_the_layer_and_the_templates_environment(
    template: dict[str, Any], logical_id: str
) -> None:
    spec = functions(template)[logical_id]
    # A fresh interpreter, as a cold start: only the function's folder and the layer on the path.
    code = (
        f"import importlib; module = importlib.import_module({spec.handler_module!r}); "
        f"handler = getattr(module, {spec.handler_name!r}); assert callable(handler); print('ok')"
    )
    environment = {
        "PATH": os.environ["PATH"],
        "AWS_REGION": "us-east-1",  # Lambda sets both region variables
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONPATH": os.pathsep.join([str(spec.code_uri), str(PROJECT_ROOT / "layers" / "shared")]),
        **spec.environment,
    }
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path[:0] = {environment['PYTHONPATH'].split(os.pathsep)!r}; {code}",
        ],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("logical_id", sorted(SETTINGS_OF))
def test_every_variable_a_function_reads_is_set_by_the_template_and_none_is_unused(
    template: dict[str, Any], logical_id: str
) -> None:
    environment = set(functions(template)[logical_id].environment)
    reads = SETTINGS_OF[logical_id].variable_names()
    assert reads - environment == set(), "read but not set"
    assert environment - reads - READ_BY_POWERTOOLS == set(), "set but never read"


def test_a_missing_variable_fails_the_cold_start_with_its_name(template: dict[str, Any]) -> None:
    spec = functions(template)["WebhookFunction"]
    environment = {**spec.environment}
    del environment["RESULTS_BUCKET"]
    with pytest.raises(SettingsError, match="RESULTS_BUCKET: missing"):
        WebhookSettings.from_env(environment)


@pytest.mark.parametrize(("logical_id", "model"), [("ImagesTable", ImageItem), ("RequestsTable", RequestItem)])
def test_tables_in_the_template_match_the_models(template: dict[str, Any], logical_id: str, model: Any) -> None:
    properties = template["Resources"][logical_id]["Properties"]
    bound = getattr(bind_tables("images", "requests"), "images" if model is ImageItem else "requests")
    schema = bound._get_schema()

    def key_schema(keys: list[dict[str, str]]) -> set[tuple[str, str]]:
        return {(key["AttributeName"], key["KeyType"]) for key in keys}

    assert key_schema(properties["KeySchema"]) == key_schema(schema["key_schema"])
    assert {(d["AttributeName"], d["AttributeType"]) for d in properties["AttributeDefinitions"]} == {
        (d["AttributeName"], d["AttributeType"]) for d in schema["attribute_definitions"]
    }
    declared = {index["IndexName"]: index for index in properties.get("GlobalSecondaryIndexes", [])}
    modelled = {index["index_name"]: index for index in schema["global_secondary_indexes"]}
    assert set(declared) == set(modelled)
    for name, index in declared.items():
        assert key_schema(index["KeySchema"]) == key_schema(modelled[name]["key_schema"])
        projection = modelled[name]["projection"]
        assert index["Projection"]["ProjectionType"] == projection["ProjectionType"]
        assert set(index["Projection"].get("NonKeyAttributes", [])) == set(projection.get("NonKeyAttributes", []))
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert properties["SSESpecification"]["SSEEnabled"] is True
    assert properties["TimeToLiveSpecification"]["AttributeName"] == "expires_at"


def test_the_submit_queue_outlives_six_function_timeouts_and_redrives(template: dict[str, Any]) -> None:
    resolver = Resolver(template)
    submit = functions(template, resolver)["SubmitFunction"]
    queue = template["Resources"]["SubmitQueue"]["Properties"]
    assert queue["VisibilityTimeout"] >= 6 * submit.timeout
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["SubmitDeadLetterQueue", "Arn"]}
    uploads = submit.events["Uploads"]["Properties"]
    assert uploads["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert int(uploads["ScalingConfig"]["MaximumConcurrency"]) >= 2
    assert int(uploads["BatchSize"]) >= 10  # fills 10-record requests under load


def test_the_input_bucket_is_private_encrypted_tls_only_and_notifies_the_queue(template: dict[str, Any]) -> None:
    resolver = Resolver(template)
    for logical_id in ("InputBucket", "ResultsBucket"):
        bucket = template["Resources"][logical_id]["Properties"]
        assert all(bucket["PublicAccessBlockConfiguration"].values())
        assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    policies = {
        resolver.resolve(policy["Properties"]["Bucket"]): policy["Properties"]["PolicyDocument"]["Statement"]
        for policy in resources_of_type(template, "AWS::S3::BucketPolicy").values()
    }
    for statements in policies.values():
        assert {"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}}.items() <= statements[
            0
        ].items()
    notification = template["Resources"]["InputBucket"]["Properties"]["NotificationConfiguration"][
        "QueueConfigurations"
    ][0]
    assert notification["Event"] == "s3:ObjectCreated:*"
    assert notification["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": {"Ref": "InputPrefix"}}]
    # Only that bucket may send: the queue policy names the bucket's computed name.
    queue_policy = template["Resources"]["SubmitQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    bucket_name = resolver.resolve(template["Resources"]["InputBucket"]["Properties"]["BucketName"])
    assert resolver.resolve(queue_policy["Condition"]["ArnEquals"]["aws:SourceArn"]) == f"arn:aws:s3:::{bucket_name}"


def test_no_policy_grants_every_action_on_every_resource(template: dict[str, Any]) -> None:
    # Every conditional statement taken (`!If` on WatchedBuckets: one entry), each resource as written.
    resolver = Resolver(template, parameters={"WatchedBuckets": "photos-archive:cards/"})
    for logical_id, spec in functions(template).items():
        for policy in template["Resources"][logical_id]["Properties"]["Policies"]:
            for statement in resolver.resolve(policy["Statement"]):
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                resources = (
                    statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                )
                assert not any(action.endswith("*") for action in actions), (spec.logical_id, statement)
                assert "*" not in resources, (spec.logical_id, statement)


def test_the_token_comes_from_ssm_and_is_never_in_the_template(template: dict[str, Any]) -> None:
    text = TEMPLATE_PATH.read_text()
    assert "XIMILAR_TOKEN_PARAMETER" in text and "XIMILAR_API_TOKEN" not in text
    key = template["Resources"]["WebhookSigningKey"]["Properties"]["GenerateSecretString"]
    assert key["PasswordLength"] >= 32


def test_the_layer_is_built_for_python_313_on_arm64(template: dict[str, Any]) -> None:
    layer = template["Resources"]["SharedLayer"]
    # Built by its Makefile (tests/test_packaging.py): aarch64 wheels, byte-compiled by python3.13.
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    assert template["Globals"]["Function"]["Runtime"] == "python3.13"
    assert template["Globals"]["Function"]["Architectures"] == ["arm64"]
    assert (PROJECT_ROOT / layer["Properties"]["ContentUri"] / "requirements.txt").is_file()


def test_every_common_setting_is_a_global_variable(template: dict[str, Any]) -> None:
    global_variables = set(template["Globals"]["Function"]["Environment"]["Variables"])
    assert CommonSettings.variable_names() <= global_variables
    assert json.dumps(sorted(global_variables - CommonSettings.variable_names())) == json.dumps(
        sorted(READ_BY_POWERTOOLS)
    )


def test_every_checkov_skip_says_why(template: dict[str, Any]) -> None:
    for logical_id, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert skip["id"].startswith("CKV_") and len(skip.get("comment", "")) > 20, (logical_id, skip)


def test_the_webhook_reserves_concurrency_unless_the_parameter_is_zero(template: dict[str, Any]) -> None:
    reserved = template["Resources"]["WebhookFunction"]["Properties"]["ReservedConcurrentExecutions"]
    assert reserved == {
        "Fn::If": ["WebhookConcurrencyReserved", {"Ref": "WebhookReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    assert Resolver(template).condition("WebhookConcurrencyReserved")
    assert not Resolver(template, parameters={"WebhookReservedConcurrency": "0"}).condition(
        "WebhookConcurrencyReserved"
    )


def test_the_http_api_logs_access_without_headers_to_a_log_group_with_retention(template: dict[str, Any]) -> None:
    settings = template["Resources"]["HttpApi"]["Properties"]["AccessLogSettings"]
    assert settings["DestinationArn"] == {"Fn::GetAtt": ["HttpApiAccessLogs", "Arn"]}
    fields = json.loads(settings["Format"])
    for variable in (
        "$context.identity.sourceIp",
        "$context.status",
        "$context.responseLatency",
        "$context.requestId",
        "$context.routeKey",
    ):
        assert variable in fields.values()
    assert "header" not in settings["Format"].lower()
    log_group = template["Resources"]["HttpApiAccessLogs"]["Properties"]
    assert log_group["RetentionInDays"] == {"Ref": "AccessLogRetentionDays"}


def test_the_webhook_body_limit_of_the_template_is_the_one_the_settings_enforce(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["MaxWebhookBodyBytes"]
    assert parameter["MaxValue"] == MAX_WEBHOOK_BODY_LIMIT
    assert parameter["MinValue"] <= parameter["Default"] <= parameter["MaxValue"]


# --- operations: alerts, alarms, dashboard ---------------------------------------------------------------
def alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"] for name, resource in resources_of_type(template, "AWS::CloudWatch::Alarm").items()
    }


def watched(properties: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(namespace, metric, dimensions) an alarm reads, plain or through metric math."""
    if "MetricName" in properties:
        dimensions = {d["Name"]: d["Value"] for d in properties.get("Dimensions", [])}
        return [(properties["Namespace"], properties["MetricName"], dimensions)]
    found = []
    for query in properties["Metrics"]:
        metric = query.get("MetricStat", {}).get("Metric")
        if metric:
            dimensions = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            found.append((metric["Namespace"], metric["MetricName"], dimensions))
    return found


def test_every_alarm_notifies_the_alerts_topic_encrypted_under_a_key_cloudwatch_may_use(
    template: dict[str, Any],
) -> None:
    for name, properties in alarms(template).items():
        assert properties["AlarmActions"] == [{"Ref": "AlertsTopic"}], name
        assert properties["OKActions"] == [{"Ref": "AlertsTopic"}], name
        assert properties["TreatMissingData"] == "notBreaching", name
    resources = template["Resources"]
    assert resources["AlertsTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "AlertsKey"}
    key = resources["AlertsKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    publishers = [
        s for s in key["KeyPolicy"]["Statement"] if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}
    ]
    assert publishers and set(publishers[0]["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    subscription = resources["AlertsEmailSubscription"]
    assert subscription["Condition"] == "HasAlertEmail"
    assert not Resolver(template).condition("HasAlertEmail")  # the default subscribes nobody
    assert Resolver(template, parameters={"AlertEmail": "ops@example.com"}).condition("HasAlertEmail")


def test_the_alarms_cover_the_queues_the_functions_the_webhook_and_the_pipelines_own_metrics(
    template: dict[str, Any],
) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    namespace, service = variables["POWERTOOLS_METRICS_NAMESPACE"], variables["POWERTOOLS_SERVICE_NAME"]
    seen = {
        (ns, metric, json.dumps(dims, sort_keys=True))
        for p in alarms(template).values()
        for ns, metric, dims in watched(p)
    }

    def watches(ns: str, metric: str, **dimensions: Any) -> bool:
        return (ns, metric, json.dumps(dimensions, sort_keys=True)) in seen

    for dead_letters in ("SubmitDeadLetterQueue", "OutputsDeadLetterQueue"):
        assert watches(
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            QueueName={"Fn::GetAtt": [dead_letters, "QueueName"]},
        ), dead_letters
    assert watches("AWS/SQS", "ApproximateAgeOfOldestMessage", QueueName={"Fn::GetAtt": ["SubmitQueue", "QueueName"]})
    for function in SETTINGS_OF:
        for metric in ("Errors", "Throttles"):
            assert watches("AWS/Lambda", metric, FunctionName={"Ref": function}), (function, metric)
    for metric in ("4xx", "5xx", "Count"):
        assert watches("AWS/ApiGateway", metric, ApiId={"Ref": "HttpApi"}), metric
    # The pipeline's own metrics, under the namespace and service dimension Powertools gives them.
    for metric in (
        "ImagesFailed",
        "XimilarThrottled",
        "SubmissionsPaused",
        "WebhooksRejected.bad-token",
        "SweepRequestsRecorded",
        "RequestsRecordedByWebhook",
        "SweepReadFailures",
    ):
        assert watches(namespace, metric, service=service), metric
    health = alarms(template)["WebhookHealthAlarm"]
    assert health["Threshold"] == {"Ref": "SweeperShareAlarmPercent"}
    assert "100 * FILL(swept, 0)" in health["Metrics"][0]["Expression"]


def test_the_dashboard_body_is_json_once_substituted(template: dict[str, Any]) -> None:
    resolver = Resolver(
        template, attributes={"SubmitQueue.QueueName": "submit-q", "SubmitDeadLetterQueue.QueueName": "dlq"}
    )
    body = json.loads(resolver.resolve(template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]))
    titles = [widget["properties"]["title"] for widget in body["widgets"]]
    assert any("webhook vs sweeper" in title for title in titles)
    assert any("Latency" in title for title in titles)
    queues = {row[3] for widget in body["widgets"] for row in widget["properties"]["metrics"] if row[0] == "AWS/SQS"}
    assert queues == {"submit-q", "dlq"}
