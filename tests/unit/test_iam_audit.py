"""The IAM audit's own judgement: what it calls allowed, disallowed and unused (no servers, no handlers)."""

from __future__ import annotations

from typing import Any

from tests.support.iam_audit import Audit, Call


def audit_of(template: dict[str, Any]) -> Audit:
    audit = Audit(template)
    audit.learn_names("WebhookFunction", {"IMAGES_TABLE": "images-1", "REQUESTS_TABLE": "requests-1"})
    audit.learn_names("SubmitFunction", {"IMAGES_TABLE": "images-2", "REQUESTS_TABLE": "requests-2"})
    return audit


def test_a_call_the_functions_statements_allow_passes(template: dict[str, Any]) -> None:
    audit = audit_of(template)
    audit.record("WebhookFunction", "dynamodb", "UpdateItem", {"TableName": "images-1"})
    audit.record("SubmitFunction", "s3", "GetObject", {"Bucket": "xasync-in-123-abc", "Key": "incoming/a.png"})
    assert audit.disallowed() == []


def test_a_call_another_function_may_make_is_still_disallowed_for_this_one(template: dict[str, Any]) -> None:
    audit = audit_of(template)
    audit.record("WebhookFunction", "dynamodb", "DeleteItem", {"TableName": "requests-1"})  # submit's grant
    assert audit.disallowed() == [Call("WebhookFunction", "dynamodb:DeleteItem", "arn:@:RequestsTable")]


def test_an_unknown_table_an_index_and_a_version_are_told_apart(template: dict[str, Any]) -> None:
    audit = audit_of(template)
    audit.record("SubmitFunction", "dynamodb", "PutItem", {"TableName": "someone-elses"})
    audit.record("SubmitFunction", "dynamodb", "Query", {"TableName": "requests-2", "IndexName": "due"})
    audit.record(
        "SubmitFunction", "s3", "GetObject", {"Bucket": "xasync-in-1", "Key": "incoming/a.png", "VersionId": "v1"}
    )
    assert {call.resource for call in audit.disallowed()} == {
        "arn:@:RequestsTable/index/due",
        "arn:unknown:someone-elses",
    }


def test_grants_no_call_used_are_reported_unused(template: dict[str, Any]) -> None:
    audit = audit_of(template)
    audit.record("WebhookFunction", "dynamodb", "GetItem", {"TableName": "images-1"})
    unused = {(grant.function, grant.action, grant.resource) for grant in audit.unused()}
    assert ("WebhookFunction", "dynamodb:GetItem", "arn:@:ImagesTable") not in unused
    assert ("WebhookFunction", "dynamodb:GetItem", "arn:@:RequestsTable") in unused
