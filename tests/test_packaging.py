"""What `sam build` makes: the layer and the functions, with their bytecode, and nothing they do not use.

The checker (`xasync.packaging`) is proved able to fail on tiny fake builds: each problem names its file (and
line). Then the real artifacts, built by the same Makefile targets `sam build` runs (template.yaml's
`BuildMethod: makefile`), pass it, and each handler cold-starts from them alone, compiling nothing.

The real artifacts are built here, in a temporary folder, rather than read from .aws-sam/build: CI runs the
tests in a fresh clone that has none (its `check` of `sam build`'s own output runs in .ci/run, in the
checkout it built), and a build left from an earlier change would pass or fail for the wrong code.
XASYNC_BUILD_DIR names a build to check instead (e.g. .aws-sam/build, right after `make build`).
"""

from __future__ import annotations

import compileall
import json
import os
import py_compile
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from xasync import packaging
from xasync.packaging import Artifacts, Problem, Target
from xasync.template import PROJECT_ROOT, Resolver, functions

RUNNING = Target.running()


def fake_build(root: Path, files: dict[str, str], *, compiled: bool = True) -> Artifacts:
    """A build folder of the given files (paths below it), compiled as the Makefiles compile them."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    if compiled:
        compileall.compile_dir(root, quiet=1, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    return Artifacts.at(root)


def dist_info(name: str, version: str, *requires: str, top_level: str = "") -> dict[str, str]:
    """The dist-info files of an installed distribution."""
    folder = f"SharedLayer/python/{name}-{version}.dist-info"
    metadata = "\n".join([f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)])
    record = f"{top_level}/__init__.py,,\n" if top_level else ""
    return {f"{folder}/METADATA": metadata + "\n", f"{folder}/RECORD": record}


def messages(problems: list[Problem], root: Path) -> set[tuple[str, int | None, str]]:
    return {(str(problem.path.relative_to(root)), problem.line, problem.message) for problem in problems}


# --- the checker can fail, and says where ----------------------------------------------------------------------


def test_a_layer_module_that_imports_a_dev_only_package_fails_with_its_file_and_line(tmp_path: Path) -> None:
    # Given a handler whose layer module imports rich (requirements-dev.txt only) in a function
    artifacts = fake_build(
        tmp_path,
        {
            "SubmitFunction/handle_submit.py": "from ximilar_async import report\n",
            "SharedLayer/python/ximilar_async/__init__.py": "",
            "SharedLayer/python/ximilar_async/report.py": """\
                import json


                def show(table: object) -> None:
                    from rich.console import Console
                    Console().print(table)
                """,
        },
    )

    # When the artifacts are checked
    problems = packaging.problems(artifacts, RUNNING, {"rich": "rich"}, runtime_requirements=())

    # Then the report names that file and line
    assert [(problem.path, problem.line) for problem in problems] == [
        (tmp_path / "SharedLayer/python/ximilar_async/report.py", 5)
    ]
    assert "rich.console: a dev-only package (rich" in problems[0].message
    assert str(problems[0]).startswith(f"{tmp_path}/SharedLayer/python/ximilar_async/report.py:5: imports rich")


def test_an_import_the_artifacts_cannot_resolve_fails_but_optional_and_type_only_imports_do_not(
    tmp_path: Path,
) -> None:
    # Given handler code importing a package the layer lacks, beside imports that never need it
    artifacts = fake_build(
        tmp_path,
        {
            "WebhookFunction/handle_webhook.py": "import ximilar_async.client\nimport library\n",
            "SharedLayer/python/ximilar_async/__init__.py": "",
            "SharedLayer/python/ximilar_async/client.py": """\
                from __future__ import annotations

                from typing import TYPE_CHECKING

                import requests
                from .missing_sibling import thing

                if TYPE_CHECKING:
                    from mypy_boto3_s3 import S3Client
                try:
                    import simplejson as json
                except ImportError:
                    import json
                """,
            # A library imports its optional features' packages inside its functions, or guarded.
            "SharedLayer/python/library/__init__.py": """\
                try:
                    from library import speedups
                except ImportError:
                    speedups = None


                def socks():
                    import socks
                """,
            "SharedLayer/python/library/speedups.py": "import _speedups_extension\n",
            **dist_info("library", "1.0", top_level="library"),
        },
    )

    problems = packaging.import_problems(artifacts, RUNNING, dev_only={})

    assert messages(problems, tmp_path) == {
        (
            "SharedLayer/python/ximilar_async/client.py",
            5,
            "imports requests, which the artifacts do not hold (nor the standard library)",
        ),
        (
            "SharedLayer/python/ximilar_async/client.py",
            6,
            "imports ximilar_async.missing_sibling, which the artifacts do not hold (nor the standard library)",
        ),
    }


def test_a_module_without_unchecked_hash_bytecode_of_the_target_python_fails(tmp_path: Path) -> None:
    artifacts = fake_build(
        tmp_path,
        {
            "OutputsFunction/handle_outputs.py": "import fine, stamped, checked, bare\n",
            "SharedLayer/python/fine.py": "",
            "SharedLayer/python/stamped.py": "",
            "SharedLayer/python/checked.py": "",
            "SharedLayer/python/bare.py": "",
        },
    )
    layer = tmp_path / "SharedLayer/python"
    cache = f"__pycache__/{{}}.{RUNNING.cache_tag}.pyc"
    for name, mode in (
        ("stamped", py_compile.PycInvalidationMode.TIMESTAMP),
        ("checked", py_compile.PycInvalidationMode.CHECKED_HASH),
    ):
        py_compile.compile(str(layer / f"{name}.py"), str(layer / cache.format(name)), invalidation_mode=mode)
    (layer / cache.format("bare")).unlink()
    (layer / "__pycache__/gone.cpython-311.pyc").write_bytes(b"")

    problems = [problem for folder in artifacts.folders for problem in packaging.bytecode_problems(folder, RUNNING)]

    assert messages(problems, tmp_path) == {
        (
            "SharedLayer/python/bare.py",
            None,
            f"no {RUNNING.cache_tag} bytecode (__pycache__/bare.{RUNNING.cache_tag}.pyc)",
        ),
        (f"SharedLayer/python/{cache.format('stamped')}", None, "timestamp bytecode (flags 0b00), not unchecked-hash"),
        (
            f"SharedLayer/python/{cache.format('checked')}",
            None,
            "checked-hash bytecode (flags 0b11), not unchecked-hash",
        ),
        (
            "SharedLayer/python/__pycache__/gone.cpython-311.pyc",
            None,
            "bytecode of no module the target Python imports (dead weight)",
        ),
    }
    other_python = Target(b"\x00\x00\r\n", RUNNING.cache_tag, RUNNING.stdlib)
    assert {problem.message for problem in packaging.bytecode_problems(layer, other_python)} >= {
        f"bytecode of another Python (magic {RUNNING.magic.hex()})"
    }


def test_a_dev_only_distribution_or_one_no_runtime_requirement_needs_fails(tmp_path: Path) -> None:
    layer = tmp_path / "SharedLayer/python"
    fake_build(
        tmp_path,
        {
            "SubmitFunction/handle_submit.py": "",
            **dist_info("requests", "2.34.2", "urllib3<3", 'PySocks!=1.5.7; extra == "socks"'),
            **dist_info("urllib3", "2.8.0"),
            **dist_info("flask", "3.1.3", "werkzeug"),
            **dist_info("leftover", "1.0"),
            "SharedLayer/python/click/__init__.py": "",
        },
    )

    problems = packaging.distribution_problems(layer, ["requests"], {"flask": "flask", "click": "click"})

    assert messages(problems, tmp_path) == {
        ("SharedLayer/python/flask-3.1.3.dist-info", None, "flask is a dev-only package (requirements-dev.txt)"),
        ("SharedLayer/python/leftover-1.0.dist-info", None, "leftover: no runtime requirement needs it"),
        ("SharedLayer/python/click", None, "click is a dev-only package (click, requirements-dev.txt)"),
    }


def test_an_extension_module_built_for_another_machine_or_python_fails(tmp_path: Path) -> None:
    def elf(machine: int) -> bytes:
        return b"\x7fELF\x02\x01\x01" + bytes(11) + machine.to_bytes(2, "little")

    layer = tmp_path / "python"
    layer.mkdir()
    (layer / f"fast.{RUNNING.cache_tag}-aarch64-linux-gnu.so").write_bytes(elf(packaging.AARCH64))
    (layer / f"wrong.{RUNNING.cache_tag}-x86_64-linux-gnu.so").write_bytes(elf(62))
    (layer / "old.cpython-39-aarch64-linux-gnu.so").write_bytes(elf(packaging.AARCH64))

    problems = packaging.extension_problems(layer, RUNNING)

    assert messages(problems, tmp_path) == {
        (
            f"python/wrong.{RUNNING.cache_tag}-x86_64-linux-gnu.so",
            None,
            "not an extension module for Lambda's arm64 (ELF aarch64)",
        ),
        ("python/old.cpython-39-aarch64-linux-gnu.so", None, f"built for cpython-39, not {RUNNING.cache_tag}"),
    }


def test_dev_only_packages_are_what_requirements_dev_adds_by_their_import_names() -> None:
    dev_only = packaging.dev_only_packages()

    assert {"flask", "rich", "click", "moto", "pytest", "_pytest", "PIL"} <= set(dev_only)
    assert dev_only["PIL"] == "pillow"
    assert not {"boto3", "botocore", "requests", "pynamodb", "aws_lambda_powertools"} & set(dev_only)


# --- the build contract ----------------------------------------------------------------------------------------


def test_the_layer_and_every_function_are_built_by_their_own_makefile(template: dict[str, Any]) -> None:
    layer = template["Resources"]["SharedLayer"]
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    assert "build-SharedLayer:" in (PROJECT_ROOT / layer["Properties"]["ContentUri"] / "Makefile").read_text()
    makefiles = set()
    for logical_id, spec in functions(template).items():
        assert template["Resources"][logical_id]["Metadata"]["BuildMethod"] == "makefile", logical_id
        makefiles.add((spec.code_uri / "Makefile").read_text())
    # One file in each function's folder (SAM hashes that folder for its cached builds): the same file.
    assert len(makefiles) == 1
    assert "build-%:" in makefiles.pop()


# --- the real artifacts ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def python313() -> str:
    python = packaging.find_python313()
    if python is None:
        message = "python3.13 not found (PYTHON313, PATH, pyenv): the artifacts are compiled by the functions' Python"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture(scope="session")
def built(python313: str, template: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    """The artifacts as `sam build` makes them: each resource's Makefile target, run in its folder."""
    if given := os.environ.get("XASYNC_BUILD_DIR"):
        return Artifacts.at(Path(given))
    root = tmp_path_factory.mktemp("sam-build")
    folders = {"SharedLayer": PROJECT_ROOT / template["Resources"]["SharedLayer"]["Properties"]["ContentUri"]}
    folders |= {logical_id: spec.code_uri for logical_id, spec in functions(template).items()}
    for logical_id, folder in folders.items():
        subprocess.run(
            [
                "make",
                "--no-print-directory",
                "--makefile",
                str(folder / "Makefile"),
                f"build-{logical_id}",
                f"ARTIFACTS_DIR={root / logical_id}",
                f"PYTHON313={python313}",
            ],
            cwd=folder,
            check=True,
            capture_output=True,
        )
    return Artifacts.at(root)


@pytest.mark.slow
def test_the_built_layer_and_functions_pass_every_check(built: Artifacts, python313: str) -> None:
    target = Target.of(python313)
    runtime_requirements = packaging.requirement_names(packaging.LAYER_REQUIREMENTS)

    problems = packaging.problems(built, target, packaging.dev_only_packages(), runtime_requirements)

    assert [str(problem) for problem in problems] == []
    (layer,) = built.layers
    assert not (layer / "botocore" / "data").exists()
    assert list(layer.rglob("*aarch64*.so")), "no arm64 wheel in the layer"


COLD_START = """
import json, sys, sysconfig
artifacts, stdlib = {artifacts!r}, (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
compiled = []
def audit(event, args):
    # The import system compiles a source it has no valid bytecode for; bytecode is only unmarshalled.
    if event == "compile" and isinstance(args[1], str) and args[1].startswith(artifacts):
        compiled.append(args[1])
sys.addaudithook(audit)
sys.path[:0] = {path!r}
import {module}
files = [getattr(module, "__file__", None) for module in list(sys.modules.values())]
foreign = sorted(file for file in files if file and not file.startswith((artifacts, *stdlib)))
print(json.dumps({{"compiled": compiled, "foreign": foreign, "modules": len(sys.modules)}}))
"""


@pytest.mark.slow
def test_each_handler_cold_starts_from_the_artifacts_alone_on_their_bytecode(
    built: Artifacts, python313: str, template: dict[str, Any]
) -> None:
    # Lambda's environment: the template's variables, a region and the role's credentials; -S: no site-packages
    # of this machine's python3.13 on the path, which is the function's folder, then the layer's.
    credentials = {
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "ASIAPACKAGINGTEST000",
        "AWS_SECRET_ACCESS_KEY": "packaging-test-secret-access-key-000000",
        "AWS_SESSION_TOKEN": "packaging-test-session-token",
    }
    for logical_id, spec in functions(template, Resolver(template)).items():
        path = [str(built.root / logical_id), *map(str, built.layers)]
        code = COLD_START.format(artifacts=str(built.root), path=path, module=spec.handler_module)
        result = subprocess.run(
            [python313, "-I", "-S", "-B", "-c", code],
            env={"PATH": os.environ["PATH"], **credentials, **spec.environment},
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            timeout=60,
        )
        assert result.returncode == 0, f"{logical_id}'s cold start failed:\n{result.stderr[-3000:]}"
        cold_start = json.loads(result.stdout.splitlines()[-1])
        assert cold_start["compiled"] == [], logical_id
        assert cold_start["foreign"] == [], logical_id
        assert cold_start["modules"] > 300, logical_id  # the clients were built: botocore, pynamodb, ...
