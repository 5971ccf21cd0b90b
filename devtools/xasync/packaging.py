"""What `sam build` hands to Lambda, checked: `python -m xasync.packaging check .aws-sam/build`.

The layer and the functions are built by their Makefiles (`layers/shared/Makefile`, `functions/*/Makefile`,
which template.yaml names with `BuildMethod: makefile`). A build folder passes when:
- every `.py` module has its bytecode where the import system looks for it
  (`__pycache__/<name>.cpython-313.pyc`), written by python3.13 (its magic number) as unchecked-hash (flags
  0b01): Lambda's code folders are read-only, so a module without it is compiled again by every cold start,
  and a timestamp-checked one depends on the times zip extraction leaves;
- no package of requirements-dev.txt is in the layer (by distribution or by import name) unless the
  layer's requirements name it, and no distribution is there that no runtime requirement needs;
- every module the handlers can import resolves from the artifacts alone (the function's folder, then the
  layer, as on Lambda's path), the standard library of the functions' Python, or what Lambda's runtime
  provides; the handlers' own code (the function folders and the layer's unpackaged packages, that is
  `ximilar_async`) imports no dev-only package, with the file and line of any that does. Walked statically
  (`ast`): the handlers' own imports wherever they stand, a library's module-level ones (those inside its
  functions are its optional features'); an import under an `if`, or in a `try` that catches its
  ImportError, may be missing, and so may the imports of a module reached only through such an import;
- its extension modules are built for Lambda's machine (arm64).

It prints each artifact's size, unzipped and zipped (what `sam deploy` uploads). Only the standard library
is used: it reads the build, and asks the functions' Python (python3.13) for its magic number and module
names.
"""

from __future__ import annotations

import argparse
import ast
import email.parser
import glob
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LAYER_REQUIREMENTS = PROJECT_ROOT / "layers" / "shared" / "requirements.txt"
DEV_REQUIREMENTS = PROJECT_ROOT / "requirements-dev.txt"
# What Lambda's python runtime puts on the path besides the standard library (/var/runtime): its runtime
# interface client. It also carries a boto3 and a botocore, not counted here: the layer brings its own, pinned
# beside the service models it carries, and ahead of the runtime's on the path.
RUNTIME_PROVIDED = frozenset({"awslambdaric"})
# pyc flags (PEP 552): bit 0 hash-based, bit 1 check the source. Unchecked hash: 0b01.
UNCHECKED_HASH = 0b01
# ELF e_machine of Lambda's arm64 (EM_AARCH64).
AARCH64 = 183
TARGET_PROBE = (
    "import importlib.util, json, sys; print(json.dumps({'magic': importlib.util.MAGIC_NUMBER.hex(),"
    " 'cache_tag': sys.implementation.cache_tag,"
    " 'stdlib': sorted(set(sys.stdlib_module_names) | set(sys.builtin_module_names))}))"
)


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Target:
    """The Python that runs the functions, as far as the artifacts depend on it."""

    magic: bytes
    cache_tag: str
    stdlib: frozenset[str]

    @classmethod
    def of(cls, python: str) -> Target:
        probe = subprocess.run(  # noqa: S603 - the interpreter asked for, fixed code
            [python, "-I", "-c", TARGET_PROBE], capture_output=True, text=True, check=True
        )
        found = json.loads(probe.stdout)
        return cls(bytes.fromhex(found["magic"]), found["cache_tag"], frozenset(found["stdlib"]))

    @classmethod
    def running(cls) -> Target:
        """This interpreter (the checker's own tests build their fake artifacts with it)."""
        stdlib = frozenset(sys.stdlib_module_names) | frozenset(sys.builtin_module_names)
        return cls(importlib.util.MAGIC_NUMBER, sys.implementation.cache_tag, stdlib)


def find_python313() -> str | None:
    """The functions' Python as the Makefiles find it: PYTHON313, python3.13 on PATH, pyenv's install."""
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [
        os.environ.get("PYTHON313"),
        shutil.which("python3.13"),
        *sorted(glob.glob(f"{pyenv_root}/versions/3.13*/bin/python3.13")),
    ]
    for candidate in filter(None, candidates):
        probe = subprocess.run(  # noqa: S603 - a candidate interpreter, fixed code
            [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 13); print(sys.executable)"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0:
            return probe.stdout.strip()
    return None


@dataclass(frozen=True)
class Artifacts:
    """A build folder: each layer's `python/` (what Lambda mounts as /opt/python) and each function's folder."""

    root: Path
    layers: tuple[Path, ...]
    functions: tuple[Path, ...]

    @classmethod
    def at(cls, root: Path) -> Artifacts:
        folders = sorted(path for path in root.iterdir() if path.is_dir())
        layers = tuple(folder / "python" for folder in folders if (folder / "python").is_dir())
        functions = tuple(folder for folder in folders if not (folder / "python").is_dir())
        if not layers or not functions:
            raise ValueError(f"{root} holds no layer (a folder with python/) or no function folder: not a sam build")
        return cls(root, layers, functions)

    @property
    def folders(self) -> tuple[Path, ...]:
        return (*self.layers, *self.functions)


# --- bytecode ------------------------------------------------------------------------------------------------


def bytecode_problems(folder: Path, target: Target) -> list[Problem]:
    """Each module's bytecode: there, of the target's magic, unchecked-hash; and no bytecode of anything else."""
    problems: list[Problem] = []
    expected: set[Path] = set()
    for source in sorted(folder.rglob("*.py")):
        cached = source.parent / "__pycache__" / f"{source.stem}.{target.cache_tag}.pyc"
        expected.add(cached)
        if not cached.is_file():
            problems.append(Problem(source, None, f"no {target.cache_tag} bytecode (__pycache__/{cached.name})"))
            continue
        with cached.open("rb") as pyc:
            header = pyc.read(8)
        if header[:4] != target.magic:
            problems.append(Problem(cached, None, f"bytecode of another Python (magic {header[:4].hex()})"))
        flags = int.from_bytes(header[4:8], "little")
        if flags & 0b11 != UNCHECKED_HASH:
            kind = "timestamp" if not flags & 0b01 else "checked-hash"
            problems.append(Problem(cached, None, f"{kind} bytecode (flags {flags:#04b}), not unchecked-hash"))
    for stray in sorted(set(folder.rglob("*.pyc")) - expected):
        problems.append(Problem(stray, None, "bytecode of no module the target Python imports (dead weight)"))
    return problems


# --- extension modules ----------------------------------------------------------------------------------------


def extension_problems(folder: Path, target: Target, machine: int = AARCH64) -> list[Problem]:
    """Extension modules compiled for another machine (an x86 wheel) or another Python."""
    problems: list[Problem] = []
    for extension in sorted(folder.rglob("*.so")):
        with extension.open("rb") as binary:
            header = binary.read(20)
        if header[:4] != b"\x7fELF" or int.from_bytes(header[18:20], "little") != machine:
            problems.append(Problem(extension, None, "not an extension module for Lambda's arm64 (ELF aarch64)"))
        tag = re.search(r"\.(cpython-\d+)-", extension.name)
        if tag and tag.group(1) != target.cache_tag:
            problems.append(Problem(extension, None, f"built for {tag.group(1)}, not {target.cache_tag}"))
    return problems


# --- distributions and dev-only packages ----------------------------------------------------------------------


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_names(path: Path) -> frozenset[str]:
    """The distributions a requirements file names itself (not through -r), normalized."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = REQUIREMENT_NAME.match(line)
        if line and not line.startswith("-") and match:
            names.add(normalize(match.group(1)))
    return frozenset(names)


def dev_only_packages(
    layer_requirements: Path = LAYER_REQUIREMENTS, dev_requirements: Path = DEV_REQUIREMENTS
) -> dict[str, str]:
    """Import name -> distribution, for the distributions requirements-dev.txt names and the layer's do not.

    Import names come from the distributions installed where this runs (the dev venv: flask, but PIL for
    pillow, _pytest and pytest for pytest), else from the distribution's name."""
    dev_only = requirement_names(dev_requirements) - requirement_names(layer_requirements)
    imports: dict[str, str] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            if normalize(distribution) in dev_only and module.isidentifier():
                imports[module] = normalize(distribution)
    for distribution in dev_only:
        imports.setdefault(distribution.replace("-", "_"), distribution)
    return imports


@dataclass(frozen=True)
class Distribution:
    name: str
    requires: frozenset[str]
    top_level: frozenset[str]
    path: Path


def distributions(layer: Path) -> dict[str, Distribution]:
    """The distributions installed in a layer's python/ folder, from their dist-info."""
    found = {}
    for info in sorted(layer.glob("*.dist-info")):
        metadata = email.parser.Parser().parsestr((info / "METADATA").read_text(encoding="utf-8"))
        # An extra's requirements are installed only when the extra is asked for; the layer asks for none.
        requires = frozenset(
            normalize(match.group(1))
            for requirement in metadata.get_all("Requires-Dist") or []
            if "extra" not in requirement.partition(";")[2] and (match := REQUIREMENT_NAME.match(requirement))
        )
        top_level = set()
        record = info / "RECORD"
        for line in record.read_text(encoding="utf-8").splitlines() if record.is_file() else []:
            first = line.split(",", 1)[0].split("/", 1)[0]
            if first and not first.endswith((".dist-info", ".data")) and first not in {"..", "__pycache__", "bin"}:
                top_level.add(first.removesuffix(".py"))
        name = normalize(metadata["Name"])
        found[name] = Distribution(name, requires, frozenset(top_level), info)
    return found


def own_packages(layer: Path) -> frozenset[str]:
    """The layer's top-level modules that no distribution installed: the project's own (ximilar_async)."""
    installed: set[str] = set()
    for distribution in distributions(layer).values():
        installed |= distribution.top_level
    return (
        frozenset(
            path.name.removesuffix(".py")
            for path in layer.iterdir()
            if (path.is_dir() and path.name.isidentifier() and path.name != "__pycache__") or path.suffix == ".py"
        )
        - installed
    )


def distribution_problems(
    layer: Path, runtime_requirements: Collection[str], dev_only: Mapping[str, str]
) -> list[Problem]:
    """Dev-only packages in the layer (by distribution or import name), and distributions nothing there needs."""
    problems: list[Problem] = []
    installed = distributions(layer)
    needed: set[str] = set()
    wanted = [normalize(name) for name in runtime_requirements]
    while wanted:
        name = wanted.pop()
        if name not in needed:
            needed.add(name)
            wanted.extend(installed[name].requires if name in installed else ())
    dev_distributions = set(dev_only.values())
    for name, distribution in installed.items():
        if name in dev_distributions:
            problems.append(Problem(distribution.path, None, f"{name} is a dev-only package (requirements-dev.txt)"))
        elif name not in needed:
            problems.append(Problem(distribution.path, None, f"{name}: no runtime requirement needs it"))
    for entry in sorted(layer.iterdir()):
        module = entry.name.removesuffix(".py")
        if module in dev_only and entry.name.partition(".")[0] == module:
            problems.append(
                Problem(entry, None, f"{module} is a dev-only package ({dev_only[module]}, requirements-dev.txt)")
            )
    return problems


# --- imports --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportStatement:
    module: str  # absolute
    line: int
    # Runs whenever the code around it runs: not under an `if`, nor in a `try` that catches its ImportError.
    required: bool
    in_function: bool
    # `from package import name`: a submodule if there is one, else a name the package defines.
    maybe: bool = False


# Modules a package makes at run time, which no file holds: six's `moves`, by a meta path importer.
DYNAMIC_MODULES = ("six.moves",)


def _is_dynamic(module: str) -> bool:
    return any(module == dynamic or module.startswith(f"{dynamic}.") for dynamic in DYNAMIC_MODULES)


GUARDS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def _catches_import_errors(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(name, ast.Name) and name.id in GUARDS for name in caught)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """The import statements of one module, with where they stand (`if TYPE_CHECKING:` bodies never run)."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module.split(".") if is_package else module.split(".")[:-1]
        self.found: list[ImportStatement] = []
        self._conditional = 0
        self._function = 0

    def _add(self, module: str, line: int, *, maybe: bool = False) -> None:
        self.found.append(ImportStatement(module, line, not self._conditional, self._function > 0, maybe))

    def _conditionally(self, nodes: Iterable[ast.AST]) -> None:
        self._conditional += 1
        for node in nodes:
            self.visit(node)
        self._conditional -= 1

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        if not _is_type_checking(node.test):
            self._conditionally(node.body)
        self._conditionally(node.orelse)

    def visit_Try(self, node: ast.Try) -> None:
        if any(_catches_import_errors(handler) for handler in node.handlers):
            self._conditionally([*node.body, *node.orelse])
        else:
            for child in [*node.body, *node.orelse]:
                self.visit(child)
        self._conditionally(node.handlers)
        for child in node.finalbody:
            self.visit(child)

    visit_TryStar = visit_Try  # type: ignore[assignment]  # same fields as Try

    def _in_function(self, node: ast.AST) -> None:
        self._function += 1
        self.generic_visit(node)
        self._function -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _in_function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            if node.level - 1 > len(self.package):
                return  # beyond the top-level package: Python's ImportError, not a missing module
            base = self.package[: len(self.package) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        if not module:
            return
        if module != "__future__":
            self._add(module, node.lineno)
            for alias in node.names:
                if alias.name != "*":
                    self._add(f"{module}.{alias.name}", node.lineno, maybe=True)

    def visit_Call(self, node: ast.Call) -> None:
        # importlib.import_module("literal"): an import by another name.
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
        target = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
        if name == "import_module" and isinstance(target, str) and not target.startswith("."):
            self._add(target, node.lineno)
        self.generic_visit(node)


def imports_of(source: str, module: str, *, is_package: bool) -> list[ImportStatement]:
    collector = _Imports(module, is_package)
    collector.visit(ast.parse(source))
    return collector.found


@dataclass(frozen=True)
class Found:
    kind: str  # "source", "extension", "namespace", "stdlib"
    file: Path | None = None
    is_package: bool = False
    locations: tuple[Path, ...] = ()  # where its submodules are looked for


class ModuleFinder:
    """Finds modules as Lambda's import system would: the path's folders in order, then the standard library
    (its built-in modules first) and what the runtime provides."""

    def __init__(self, path: Sequence[Path], available: frozenset[str]) -> None:
        self.path = tuple(path)
        self.available = available
        self._found: dict[str, Found | None] = {}

    def find(self, name: str) -> Found | None:
        if name not in self._found:
            self._found[name] = self._find(name)
        return self._found[name]

    def _find(self, name: str) -> Found | None:
        parent, _, last = name.rpartition(".")
        if parent:
            found_parent = self.find(parent)
            if found_parent is None or found_parent.kind == "stdlib":
                return found_parent
            return self._find_in(last, found_parent.locations)
        return self._find_in(name, self.path) or (Found("stdlib") if name in self.available else None)

    @staticmethod
    def _find_in(name: str, locations: Iterable[Path]) -> Found | None:
        portions = []
        for location in locations:
            package = location / name
            if (package / "__init__.py").is_file():
                return Found("source", package / "__init__.py", is_package=True, locations=(package,))
            if any(location.glob(f"{name}.*.so")) or (location / f"{name}.so").is_file():
                return Found("extension")
            if (location / f"{name}.py").is_file():
                return Found("source", location / f"{name}.py")
            if package.is_dir():
                portions.append(package)
        return Found("namespace", is_package=True, locations=tuple(portions)) if portions else None


@dataclass
class _Walk:
    finder: ModuleFinder
    own: frozenset[str]
    own_folder: Path
    dev_only: Mapping[str, str]
    parsed: dict[Path, list[ImportStatement]]
    problems: list[Problem] = field(default_factory=list)
    seen: set[tuple[str, bool]] = field(default_factory=set)

    def run(self, roots: Iterable[str]) -> None:
        # (module, strict): a module reached by required imports all the way from a handler is strict, its own
        # required imports must resolve; one reached only through optional ones (urllib3's pyopenssl,
        # boto3's CRT transfers) may import what is not there, as it is only imported when that is.
        pending = [(root, True) for root in roots]
        while pending:
            name, strict = pending.pop()
            if (name, True) in self.seen or (name, strict) in self.seen:
                continue
            self.seen.add((name, strict))
            found = self.finder.find(name)
            if found is None or found.file is None:
                continue
            parent = name.rpartition(".")[0]
            if parent:
                pending.append((parent, strict))  # a submodule's import runs its packages' __init__ first
            pending.extend(self._imports(name, found.file, is_package=found.is_package, strict=strict))

    def _is_own(self, name: str, file: Path) -> bool:
        return name.partition(".")[0] in self.own or file.parent == self.own_folder

    def _imports(self, name: str, file: Path, *, is_package: bool, strict: bool) -> Iterator[tuple[str, bool]]:
        if file not in self.parsed:
            try:
                self.parsed[file] = imports_of(file.read_text(encoding="utf-8"), name, is_package=is_package)
            except (SyntaxError, UnicodeDecodeError) as error:
                self.problems.append(Problem(file, getattr(error, "lineno", None), f"cannot be read: {error}"))
                self.parsed[file] = []
        own = self._is_own(name, file)
        for statement in self.parsed[file]:
            top = statement.module.partition(".")[0]
            if own and top in self.dev_only and top not in self.own and not statement.maybe:
                message = f"imports {statement.module}: a dev-only package ({self.dev_only[top]}, requirements-dev.txt)"
                self.problems.append(Problem(file, statement.line, message))
                continue
            # A library's imports inside its functions are its optional features' (pynamodb's signals
            # through blinker, urllib3's SOCKS): only its module-level imports run because a handler imports it.
            if statement.in_function and not own:
                continue
            # `from package import name` needs the package; `name` is a submodule only if there is one.
            required = strict and statement.required
            if self.finder.find(statement.module) is not None:
                yield statement.module, required
            elif required and not statement.maybe and not _is_dynamic(statement.module):
                message = f"imports {statement.module}, which the artifacts do not hold (nor the standard library)"
                self.problems.append(Problem(file, statement.line, message))


def import_problems(artifacts: Artifacts, target: Target, dev_only: Mapping[str, str]) -> list[Problem]:
    """Every module each handler can import, walked from the function's modules through the layers."""
    own = frozenset().union(*(own_packages(layer) for layer in artifacts.layers))
    available = target.stdlib | RUNTIME_PROVIDED
    parsed: dict[Path, list[ImportStatement]] = {}
    problems: list[Problem] = []
    for function in artifacts.functions:
        walk = _Walk(ModuleFinder([function, *artifacts.layers], available), own, function, dev_only, parsed)
        walk.run(sorted(path.stem for path in function.glob("*.py")))
        problems += [problem for problem in walk.problems if problem not in problems]
    return problems


# --- all of it ------------------------------------------------------------------------------------------------


def problems(
    artifacts: Artifacts,
    target: Target,
    dev_only: Mapping[str, str],
    runtime_requirements: Collection[str],
) -> list[Problem]:
    found: list[Problem] = []
    for folder in artifacts.folders:
        found += bytecode_problems(folder, target)
        found += extension_problems(folder, target)
    for layer in artifacts.layers:
        found += distribution_problems(layer, runtime_requirements, dev_only)
    found += import_problems(artifacts, target, dev_only)
    return found


def size(folder: Path) -> tuple[int, int, int]:
    """(files, bytes unzipped, bytes zipped as `sam deploy` zips it)."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, path.relative_to(folder))
    return len(files), sum(path.stat().st_size for path in files), len(buffer.getvalue())


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check a sam build folder (.aws-sam/build) and print its sizes")
    check.add_argument("build", type=Path)
    check.add_argument("--python", help="the functions' Python (default: python3.13, found as the Makefiles do)")
    args = parser.parse_args(argv)
    python = args.python or find_python313()
    if python is None:
        print(
            "python3.13 not found (PYTHON313, PATH, pyenv): it says what the functions' Python imports", file=sys.stderr
        )
        return 2
    artifacts = Artifacts.at(args.build)
    for folder in artifacts.folders:
        count, unzipped, zipped = size(folder.parent if folder in artifacts.layers else folder)
        name = (folder.parent if folder in artifacts.layers else folder).name
        print(f"{name}: {_megabytes(unzipped)} in {count} files, {_megabytes(zipped)} zipped")
    found = problems(artifacts, Target.of(python), dev_only_packages(), requirement_names(LAYER_REQUIREMENTS))
    for problem in found:
        print(problem, file=sys.stderr)
    if found:
        print(f"{args.build}: {len(found)} problems", file=sys.stderr)
        return 1
    print(f"{args.build}: every module has its unchecked-hash bytecode, every import resolves, no dev-only package")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
