"""template.yaml as data: its resources, functions and parameters, with intrinsics resolved.

Tests and local tooling read the template instead of keeping a second list of resources, so the
two cannot drift. The resolver covers the intrinsics the template uses (Ref, Sub, GetAtt, If, Join,
Select, Split, Equals, Not, and AWS::NoValue); anything deployed-only (physical ids, ARNs) resolves to
a stable placeholder or to what the caller passes in `physical_ids`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnlint.decode import decode

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = PROJECT_ROOT / "template.yaml"


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    template, problems = decode(str(path))
    if problems or template is None:
        raise ValueError(f"cannot read {path}: {problems}")
    plain: dict[str, Any] = _plain(template)
    return plain


def _plain(value: Any) -> Any:
    """cfn-lint's node types as plain dicts, lists and strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


NO_VALUE: Any = type("NoValue", (), {"__repr__": lambda self: "AWS::NoValue"})()


@dataclass
class Resolver:
    """Resolves intrinsics against parameter values (defaults unless overridden) and physical ids."""

    template: dict[str, Any]
    parameters: dict[str, Any] = field(default_factory=dict)
    physical_ids: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)  # "Logical.Attr" -> value
    pseudo: dict[str, str] = field(
        default_factory=lambda: {
            "AWS::AccountId": "123456789012",
            "AWS::Region": "us-east-1",
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": "ximilar-async",
            "AWS::StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/ximilar-async/"
            "5a6b7c8d-1e2f-4a3b-9c4d-0e1f2a3b4c5d",
        }
    )

    def parameter(self, name: str) -> Any:
        if name in self.parameters:
            return self.parameters[name]
        declared = self.template.get("Parameters", {}).get(name)
        if declared is None:
            raise KeyError(f"no parameter {name}")
        if "Default" not in declared:
            raise KeyError(f"parameter {name} has no default and no value")
        return declared["Default"]

    def ref(self, name: str) -> str:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.template.get("Parameters", {}):
            return str(self.parameter(name))
        if name in self.template.get("Resources", {}):
            return self.physical_ids.get(name, name)
        raise KeyError(f"Ref to unknown {name}")

    def get_att(self, logical_id: str, attribute: str) -> str:
        key = f"{logical_id}.{attribute}"
        if key in self.attributes:
            return self.attributes[key]
        if attribute == "Arn":
            return f"arn:aws:placeholder:::{self.ref(logical_id)}"
        return f"{self.ref(logical_id)}.{attribute}"

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template["Conditions"][name]))

    def resolve(self, value: Any) -> Any:
        """The value with its intrinsics resolved; what resolves to `AWS::NoValue` is left out of its list or map."""
        if isinstance(value, list):
            return [item for item in (self.resolve(item) for item in value) if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            resolved = {key: self.resolve(item) for key, item in value.items()}
            return {key: item for key, item in resolved.items() if item is not NO_VALUE}
        ((name, argument),) = value.items()
        if name == "Ref" and argument == "AWS::NoValue":
            return NO_VALUE
        if name == "Ref":
            return self.ref(argument)
        if name == "Fn::GetAtt":
            logical_id, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
            return self.get_att(logical_id, attribute)
        if name == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            return self._sub(text, {k: self.resolve(v) for k, v in variables.items()})
        if name == "Fn::If":
            condition, when_true, when_false = argument
            return self.resolve(when_true if self.condition(condition) else when_false)
        if name == "Fn::Not":
            (inner,) = argument
            return not self.resolve(inner)
        if name == "Fn::Equals":
            left, right = (self.resolve(item) for item in argument)
            return str(left) == str(right)
        if name == "Fn::Join":
            separator, items = argument
            return str(separator).join(str(item) for item in self.resolve(items))
        if name == "Fn::Select":
            index, items = argument
            return self.resolve(items)[int(self.resolve(index))]
        if name == "Fn::Split":
            separator, text = argument
            return str(self.resolve(text)).split(separator)
        return {name: self.resolve(argument)}

    def _sub(self, text: str, variables: dict[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if "." in name:
                logical_id, attribute = name.split(".", 1)
                return self.get_att(logical_id, attribute)
            return self.ref(name)

        return re.sub(r"\$\{([^}!]+)\}", replace, text)


@dataclass(frozen=True)
class FunctionSpec:
    """What the template says about one function, resolved."""

    logical_id: str
    code_uri: Path
    handler_module: str
    handler_name: str
    timeout: int
    environment: dict[str, str]
    events: dict[str, Any]
    layers: list[Any]


def functions(template: dict[str, Any], resolver: Resolver | None = None) -> dict[str, FunctionSpec]:
    """Every AWS::Serverless::Function, with Globals merged in as SAM merges them."""
    resolver = resolver or Resolver(template)
    globals_ = template.get("Globals", {}).get("Function", {})
    found: dict[str, FunctionSpec] = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        properties = {**globals_, **resource["Properties"]}
        environment = {
            **globals_.get("Environment", {}).get("Variables", {}),
            **resource["Properties"].get("Environment", {}).get("Variables", {}),
        }
        module, _, name = properties["Handler"].rpartition(".")
        found[logical_id] = FunctionSpec(
            logical_id=logical_id,
            code_uri=PROJECT_ROOT / properties["CodeUri"],
            handler_module=module,
            handler_name=name,
            timeout=int(properties.get("Timeout", 3)),
            environment={key: str(resolver.resolve(value)) for key, value in environment.items()},
            events=resolver.resolve(properties.get("Events", {})),
            layers=properties.get("Layers", []),
        )
    return found


def resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == resource_type
    }


def created_functions(template: dict[str, Any], resolver: Resolver | None = None) -> dict[str, FunctionSpec]:
    """The functions the template creates with these parameters: not those under a false `Condition`
    (ExportFunction without ExportSchedule, BackfillFunction when switched off)."""
    resolver = resolver or Resolver(template)
    return {
        logical_id: spec
        for logical_id, spec in functions(template, resolver).items()
        if (condition := template["Resources"][logical_id].get("Condition")) is None or resolver.condition(condition)
    }
