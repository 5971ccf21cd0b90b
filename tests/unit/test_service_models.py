"""The layer's AWS service models: what the pinned botocore gives, trimmed to the operations the functions call."""

from __future__ import annotations

import filecmp
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore import xform_name
from botocore.config import Config
from botocore.exceptions import UnknownServiceError

from xasync import service_models
from ximilar_async import coldstart


def files_under(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def test_the_layers_models_are_those_the_installed_botocore_gives(tmp_path: Path) -> None:
    service_models.write(tmp_path)
    committed = service_models.DESTINATION
    assert files_under(committed) == files_under(tmp_path), "run `make service-models` and commit the result"
    differing = [name for name in sorted(files_under(tmp_path)) if not filecmp.cmp(committed / name, tmp_path / name)]
    assert differing == [], "run `make service-models` and commit the result"


@pytest.fixture
def lambda_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.mark.usefixtures("lambda_region")
@pytest.mark.parametrize("service", sorted(service_models.OPERATIONS))
def test_a_client_of_the_functions_session_has_exactly_the_operations_they_call(service: str) -> None:
    client = coldstart.aws_client(service)
    names = {xform_name(operation) for operation in service_models.OPERATIONS[service]}
    assert {name for name in names if callable(getattr(client, name, None))} == names
    assert len(client.meta.service_model.operation_names) == len(names)


@pytest.mark.usefixtures("lambda_region")
def test_a_service_the_functions_do_not_call_has_no_model() -> None:
    with pytest.raises(UnknownServiceError):
        coldstart.aws_client("lambda")


def test_trimming_keeps_every_shape_an_operation_reaches_and_no_documentation() -> None:
    model = {
        "documentation": "<p>the service</p>",
        "metadata": {"serviceId": "Example"},
        "clientContextParams": {"Accelerate": {"type": "boolean", "documentation": "botocore requires it"}},
        "operations": {
            "Kept": {"input": {"shape": "In"}, "errors": [{"shape": "Oops"}], "documentation": "<p>kept</p>"},
            "Dropped": {"input": {"shape": "Unused"}},
        },
        "shapes": {
            "In": {"type": "structure", "members": {"Tags": {"shape": "TagMap", "documentation": "x"}}},
            "TagMap": {"type": "map", "key": {"shape": "Key"}, "value": {"shape": "Values"}},
            "Key": {"type": "string"},
            "Values": {"type": "list", "member": {"shape": "Key"}},
            "Oops": {"type": "structure", "members": {}, "exception": True},
            "Unused": {"type": "string"},
        },
    }
    trimmed = service_models.trimmed_service(model, frozenset({"Kept"}))
    assert set(trimmed["operations"]) == {"Kept"}
    assert set(trimmed["shapes"]) == {"In", "TagMap", "Key", "Values", "Oops"}
    assert "documentation" not in trimmed
    assert trimmed["clientContextParams"] == model["clientContextParams"]
    assert "documentation" not in trimmed["operations"]["Kept"]
    assert "documentation" not in trimmed["shapes"]["In"]["members"]["Tags"]
    with pytest.raises(ValueError, match="Missing"):
        service_models.trimmed_service(model, frozenset({"Missing"}))


class Sent(Exception):
    """Raised instead of sending: the request's URL is all a test wants."""


def url_of(client: Any, operation: str, params: dict[str, Any]) -> str:
    """Where the client sends the call (or why it cannot), without sending it."""

    def stop(request: Any, **_: Any) -> None:
        raise Sent(request.url)

    client.meta.events.register_first("before-send", stop)
    try:
        getattr(client, operation)(**params)
    except Sent as sent:
        return str(sent)
    except Exception as error:  # the refusal (an endpoint botocore cannot resolve) is what is compared
        return f"{type(error).__name__}: {error}"
    raise AssertionError("the call was not stopped before sending")


CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "dynamodb": ("get_item", {"TableName": "t", "Key": {"k": {"S": "v"}}}),
    "s3": ("get_object", {"Bucket": "my-bucket", "Key": "k.jpg"}),
    "sqs": ("send_message_batch", {"QueueUrl": "https://sqs.us-east-1.amazonaws.com/1/q", "Entries": []}),
    "ssm": ("get_parameter", {"Name": "p"}),
    "secretsmanager": ("get_secret_value", {"SecretId": "s"}),
    "events": ("put_events", {"Entries": [{"Source": "s", "DetailType": "d", "Detail": "{}"}]}),
    "sts": ("assume_role", {"RoleArn": "arn:aws:iam::1:role/r", "RoleSessionName": "n"}),
}


@pytest.mark.parametrize("service", sorted(CALLS))
def test_the_layers_models_send_each_call_where_botocores_own_do(service: str) -> None:
    """botocore resolves endpoints alike only if it takes the layer's models for its own data."""
    operation, params = CALLS[service]
    ours, botocores = coldstart.aws_sessions()[1], botocore.session.get_session()
    differences = []
    for region in ("us-east-1", "eu-central-1", "cn-north-1", "us-gov-west-1"):
        for options in ({}, {"use_fips_endpoint": True}, {"use_dualstack_endpoint": True}):
            config = Config(**options)  # type: ignore[arg-type]
            sent = [
                url_of(session.create_client(service, region_name=region, config=config), operation, params)
                for session in (ours, botocores)
            ]
            if sent[0] != sent[1]:
                differences.append((region, options, *sent))
    assert differences == []
