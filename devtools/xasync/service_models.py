"""The AWS service models the functions load, written from the installed botocore: `make service-models`.

A botocore client parses its service's whole model as it is made, and the data loader lists botocore's
400-odd service folders to find it: a third of a handler's cold start, for the dozen operations the
functions call. So the layer carries its own data folder (`ximilar_async/service_models`, which
`coldstart.aws_sessions` loads from and nothing else):
- each service's `service-2` with only the operations below and the shapes they reach, without their
  documentation strings;
- `endpoints` with only these services in each partition;
- the endpoint rule sets, `partitions`, `_retry`, `sdk-default-configuration` and the sdk-extras as botocore
  ships them (byte copies).

No library trims botocore's models (the SDKs' own build tools are not published), hence this module.
The files are committed and `tests/unit/test_service_models.py` checks them against the pinned botocore,
so a botocore upgrade fails the tests until they are written again. An operation the functions start
calling is added to OPERATIONS (its IAM grant goes to template.yaml beside it): a client has no method
for an operation its model lacks (AttributeError; pynamodb raises OperationNotFoundError), in any test
that makes the call.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import botocore
from botocore.loaders import Loader

from xasync.template import PROJECT_ROOT

DESTINATION = PROJECT_ROOT / "layers" / "shared" / "ximilar_async" / "service_models"
BOTOCORE_DATA = Path(botocore.__file__).parent / "data"

# Every operation a client built by `ximilar_async.coldstart` calls: the functions' are the template's grants,
# as API operations.
OPERATIONS: Mapping[str, frozenset[str]] = {
    # The tables, through pynamodb (no transactions, no deletes: see docs/data-model.md).
    "dynamodb": frozenset({"BatchGetItem", "DeleteItem", "GetItem", "PutItem", "Query", "UpdateItem"}),
    "events": frozenset({"PutEvents"}),
    "s3": frozenset(
        {
            "GetObject",  # and its presigned URLs
            "PutObject",
            # upload_fileobj: the outputs function's streamed copies
            "CreateMultipartUpload",
            "UploadPart",
            "CompleteMultipartUpload",
            "AbortMultipartUpload",
            "HeadBucket",  # botocore's own, to find a bucket's region after a wrong-region answer
            "HeadObject",  # the export: the stored size of each copied output
            "DeleteObject",  # the export: a day's parts past its new count
        }
    ),
    "secretsmanager": frozenset({"GetSecretValue"}),
    "sqs": frozenset({"GetQueueAttributes", "SendMessageBatch"}),
    "ssm": frozenset({"GetParameter"}),
    # Not the functions' (Lambda gives them credentials): botocore's credential providers, for the `xasync`
    # commands that build the services with a user's profile (assumed roles, web identity, SSO, `aws login`).
    # A model is read when its client is first made, so a cold start does not pay for these.
    "sts": frozenset({"AssumeRole", "AssumeRoleWithWebIdentity"}),
    "sso": frozenset({"GetRoleCredentials"}),
    "sso-oidc": frozenset({"CreateToken"}),
    "signin": frozenset({"CreateOAuth2Token"}),
}
# Loaded whole by every session, whatever the service.
SHARED_FILES = ("_retry.json", "partitions.json", "sdk-default-configuration.json")


def shapes_reached(shapes: Mapping[str, Any], roots: Iterator[str]) -> set[str]:
    """The shapes the roots name, and every shape those name (members, list members, map keys and values)."""
    reached: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        reached.add(name)
        shape = shapes[name]
        references = [*shape.get("members", {}).values(), shape.get("member"), shape.get("key"), shape.get("value")]
        pending += [reference["shape"] for reference in references if reference]
    return reached


def without_documentation(value: Any) -> Any:
    """The model without its documentation strings, which only docstrings (help()) read."""
    if isinstance(value, dict):
        return {key: without_documentation(item) for key, item in value.items() if key != "documentation"}
    if isinstance(value, list):
        return [without_documentation(item) for item in value]
    return value


def trimmed_service(model: Mapping[str, Any], operations: frozenset[str]) -> dict[str, Any]:
    missing = operations - model["operations"].keys()
    if missing:
        raise ValueError(f"{model['metadata']['serviceId']} has no operation {sorted(missing)}")
    kept = {name: model["operations"][name] for name in sorted(operations)}

    def roots() -> Iterator[str]:
        for operation in kept.values():
            for part in ("input", "output"):
                if part in operation:
                    yield operation[part]["shape"]
            yield from (error["shape"] for error in operation.get("errors", []))

    shapes = model["shapes"]
    reached = shapes_reached(shapes, roots())
    # Documentation goes from the service, its operations and shapes (botocore reads it there with a
    # default); the rest (clientContextParams, whose documentation botocore requires) is kept as is.
    return {
        **{key: value for key, value in model.items() if key != "documentation"},
        "operations": without_documentation(kept),
        "shapes": without_documentation({name: shapes[name] for name in sorted(reached)}),
    }


def trimmed_endpoints(endpoints: Mapping[str, Any]) -> dict[str, Any]:
    def ours(services: Mapping[str, Any]) -> dict[str, Any]:
        return {name: services[name] for name in sorted(OPERATIONS) if name in services}

    partitions = [{**partition, "services": ours(partition["services"])} for partition in endpoints["partitions"]]
    return {**endpoints, "partitions": partitions}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def write(destination: Path = DESTINATION, source: Path = BOTOCORE_DATA) -> None:
    """Write the models afresh into `destination` (the models there before are removed)."""
    if destination.exists():
        if any(destination.iterdir()) and not (destination / "endpoints.json").exists():
            raise ValueError(f"{destination} holds something else than service models: not removed")
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for name in SHARED_FILES:
        shutil.copyfile(source / name, destination / name)
    loader = Loader(extra_search_paths=[str(source)], include_default_search_paths=False)
    write_json(destination / "endpoints.json", trimmed_endpoints(loader.load_data("endpoints")))
    for service, operations in sorted(OPERATIONS.items()):
        version = loader.determine_latest_version(service, "service-2")
        folder = destination / service / version
        folder.mkdir(parents=True)
        # The model as shipped, its sdk-extras not merged (they are copied below, and merged as it loads).
        model = loader.load_data(f"{service}/{version}/service-2")
        write_json(folder / "service-2.json", trimmed_service(model, operations))
        # The rule set (how a client finds its endpoint) and botocore's extras, as botocore ships them.
        for shipped in sorted((source / service / version).iterdir()):
            if shipped.name.startswith("endpoint-rule-set-1.") or shipped.name == "service-2.sdk-extras.json":
                shutil.copyfile(shipped, folder / shipped.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--destination", type=Path, default=DESTINATION)
    args = parser.parse_args()
    write(args.destination)
    print(f"service models of botocore {botocore.__version__} written to {args.destination}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
