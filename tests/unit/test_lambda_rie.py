"""The runtime mode's reading of a build, without running it: layout, environment, foreign extension modules."""

from __future__ import annotations

import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from xasync import lambda_rie
from xasync.lambda_rie import BuiltFunction, LambdaRuntime
from xasync.template import PROJECT_ROOT, functions, load_template

AARCH64, X86_64 = 183, 62


def elf(path: Path, machine: int) -> Path:
    """A file with the ELF header of a 64-bit little-endian shared object for `machine`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + (3).to_bytes(2, "little") + machine.to_bytes(2, "little")
    path.write_bytes(header + bytes(44))
    return path


def fake_build(root: Path, template: dict[str, Any]) -> Path:
    """The folders `sam build` makes for the template: one per function, the layer's python/."""
    (root / "template.yaml").write_text("{}")
    for logical_id in functions(template):
        (root / logical_id).mkdir(parents=True)
    (root / "SharedLayer" / "python").mkdir(parents=True)
    return root


def test_an_extension_for_another_machine_is_replaced_by_its_pure_python_module(tmp_path: Path) -> None:
    # Given charset_normalizer as the arm64 layer carries it: a compiled md and cd beside md.py and cd.py
    package = tmp_path / "charset_normalizer"
    elf(package / "md.cpython-313-aarch64-linux-gnu.so", AARCH64)
    (package / "md.py").write_text("")
    elf(package / "cd.cpython-313-aarch64-linux-gnu.so", AARCH64)
    # When an x86_64 machine reads the build
    found = {e.module: e.fallback for e in lambda_rie.foreign_extensions(tmp_path, machine="x86_64")}
    # Then md runs as md.py here; cd has nothing to run as
    assert found == {"md": package / "md.py", "cd": None}
    # and on Lambda's own machine nothing is foreign
    assert lambda_rie.foreign_extensions(tmp_path, machine="aarch64") == []


def test_an_extension_any_python_would_try_to_load_has_no_fallback(tmp_path: Path) -> None:
    # A stable-ABI module is tried on every machine, and fails to load on the wrong one: md.py never runs
    elf(tmp_path / "pkg" / "speedups.abi3.so", AARCH64)
    (tmp_path / "pkg" / "speedups.py").write_text("")
    elf(tmp_path / "pkg" / "native.cpython-313-x86_64-linux-gnu.so", X86_64)
    assert [(e.module, e.fallback) for e in lambda_rie.foreign_extensions(tmp_path, machine="x86_64")] == [
        ("speedups", None)
    ]


def test_the_build_is_read_as_sam_lays_it_out(tmp_path: Path) -> None:
    template = load_template()
    built = lambda_rie.built_functions(template, fake_build(tmp_path, template))
    assert set(built) == set(functions(template))
    submit = built["SubmitFunction"]
    assert submit.task_root == tmp_path / "SubmitFunction"
    assert submit.layers == (tmp_path / "SharedLayer" / "python",)
    assert (submit.handler, submit.runtime, submit.timeout) == ("handle_submit.lambda_handler", "python3.13", 60)
    assert submit.memory_size == template["Globals"]["Function"]["MemorySize"]


def test_a_build_without_a_function_folder_says_to_build(tmp_path: Path) -> None:
    template = load_template()
    fake_build(tmp_path, template)
    (tmp_path / "SweeperFunction").rmdir()
    with pytest.raises(lambda_rie.RuntimeUnavailable, match="make build"):
        lambda_rie.built_functions(template, tmp_path)


def test_a_build_that_differs_from_the_sources_is_named_by_the_file_that_differs(tmp_path: Path) -> None:
    # Given a build made from the sources as they are: the handlers, the layer's package, its pinned wheels
    template = load_template()
    for logical_id, spec in functions(template).items():
        (tmp_path / logical_id).mkdir()
        for module in spec.code_uri.glob("*.py"):
            shutil.copy(module, tmp_path / logical_id)
    layer = tmp_path / "SharedLayer" / "python"
    shutil.copytree(PROJECT_ROOT / "layers/shared/ximilar_async", layer / "ximilar_async")
    requirements = (PROJECT_ROOT / "layers/shared/requirements.txt").read_text()
    for name, version in re.findall(r"^([\w.-]+)==(\S+)", requirements, re.MULTILINE):
        (layer / f"{name.replace('-', '_')}-{version}.dist-info").mkdir()
    assert lambda_rie.stale_sources(template, tmp_path) == []
    # When a handler and a pin change after it was built
    (tmp_path / "SweeperFunction" / "handle_sweep.py").write_text("# an older handler\n")
    boto3 = re.search(r"^boto3==(\S+)", requirements, re.MULTILINE)
    assert boto3 is not None
    shutil.rmtree(layer / f"boto3-{boto3[1]}.dist-info")
    # Then each is named
    stale = lambda_rie.stale_sources(template, tmp_path)
    assert stale[0] == "functions/sweeper/handle_sweep.py"
    assert stale[1].startswith("layers/shared/requirements.txt: boto3==")


def test_missing_parts_name_what_makes_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XASYNC_RIE", str(tmp_path / "no-rie"))
    missing = " ".join(lambda_rie.missing_parts(tmp_path / "no-build", tmp_path / "no-venv"))
    assert "make build" in missing
    assert "make lambda-venv" in missing
    assert "make sam-venv" in missing


def test_the_runtime_sees_the_function_first_then_its_layer_and_nothing_of_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a shell variable that must not reach a function
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://elsewhere")
    venv = tmp_path / "venv"
    (venv / "lib" / "python3.13" / "site-packages").mkdir(parents=True)
    runtime = LambdaRuntime(tmp_path / "build", tmp_path / "rie", venv / "bin" / "python")
    function = BuiltFunction(
        "SubmitFunction",
        tmp_path / "build" / "SubmitFunction",
        (tmp_path / "build" / "SharedLayer" / "python",),
        "handle_submit.lambda_handler",
        "python3.13",
        timeout=60,
        memory_size=512,
    )
    # When the runtime's environment is made from the function's own
    environment = lambda_rie.runtime_environment(function, {"IMAGES_TABLE": "images"}, runtime)
    # Then /var/task comes first, then the layer as /opt/python is searched
    layer = tmp_path / "build" / "SharedLayer" / "python"
    assert environment["PYTHONPATH"].split(os.pathsep) == [
        str(function.task_root),
        str(layer / "lib" / "python3.13" / "site-packages"),
        str(layer),
    ]
    assert environment["LAMBDA_TASK_ROOT"] == str(function.task_root)
    assert environment["LAMBDA_RUNTIME_DIR"] == str(venv / "lib" / "python3.13" / "site-packages")
    assert environment["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.13"
    assert environment["AWS_LAMBDA_FUNCTION_TIMEOUT"] == "60"
    assert environment["PYTHONDONTWRITEBYTECODE"] == "1"  # read-only code: no .pyc written into the build
    assert environment["IMAGES_TABLE"] == "images"
    assert "AWS_ENDPOINT_URL_S3" not in environment
    assert "HOME" not in environment


def test_the_emulator_is_the_one_for_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XASYNC_RIE", raising=False)
    rapid = tmp_path / "lib" / "python3.11" / "site-packages" / "samcli" / "local" / "rapid"
    rapid.mkdir(parents=True)
    for architecture in ("x86_64", "arm64"):
        (rapid / f"aws-lambda-rie-{architecture}").write_text("")
    found = lambda_rie.rie_binary(tmp_path)
    assert found is not None
    assert found.name == f"aws-lambda-rie-{lambda_rie.RIE_ARCHITECTURES[platform.machine().lower()]}"
