"""Cold-start benchmark: each handler's import in a fresh interpreter, beside `import boto3` in the same run.

A Lambda cold start imports the handler module once; what it costs is paid on every new instance.
Each figure is the median of N fresh interpreters (`python -I`, only the function's folder and the layer
on the path, the environment the template gives the function), so the ratio to `import boto3` is
comparable across machines. `-X importtime` names the heaviest imports when `--top` is given.

    .venv/bin/python -m benchmarks.bench_cold_start --runs 9 --top 8
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from typing import Any

from xasync.template import PROJECT_ROOT, Resolver, functions, load_template

TIMED = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def fresh_import(module: str, path: list[str], environment: dict[str, str], *, importtime: bool = False) -> str:
    """Run the import in a fresh, isolated interpreter; returns its stdout (or stderr with -X importtime)."""
    code = f"import sys; sys.path[:0] = {path!r}; " + TIMED.format(module=module)
    flags = ["-X", "importtime"] if importtime else []
    result = subprocess.run(  # noqa: S603 - this interpreter, fixed code
        [sys.executable, "-I", *flags, "-c", code],
        env={"PATH": os.environ["PATH"], **environment},
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    return result.stderr if importtime else result.stdout


def median_seconds(module: str, path: list[str], environment: dict[str, str], runs: int) -> float:
    return statistics.median(float(fresh_import(module, path, environment).strip()) for _ in range(runs))


def heaviest(module: str, path: list[str], environment: dict[str, str], top: int) -> list[tuple[int, str]]:
    """The top-level packages with the largest cumulative import time (microseconds)."""
    totals: dict[str, int] = {}
    for line in fresh_import(module, path, environment, importtime=True).splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(2)) <= 2:  # a direct import of the handler's, or of its first level
            name = match.group(3).split(".")[0]
            totals[name] = max(totals.get(name, 0), int(match.group(1)))
    return sorted(((us, name) for name, us in totals.items()), reverse=True)[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--top", type=int, default=0, help="also list the N heaviest imports of each handler")
    args = parser.parse_args()
    template = load_template()
    base = {"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    layer = str(PROJECT_ROOT / "layers" / "shared")
    boto3_seconds = median_seconds("boto3", [layer], base, args.runs)
    print(f"cold import, median of {args.runs} fresh interpreters (python {sys.version_info[0]}.{sys.version_info[1]})")
    print(f"  {'import boto3':<28} {boto3_seconds * 1000:7.0f} ms   1.00x")
    results: dict[str, Any] = {"boto3_ms": round(boto3_seconds * 1000)}
    for logical_id, spec in functions(template, Resolver(template)).items():
        path = [str(spec.code_uri), layer]
        environment = {**base, **{name: str(value) for name, value in spec.environment.items()}}
        seconds = median_seconds(spec.handler_module, path, environment, args.runs)
        ratio = seconds / boto3_seconds
        results[logical_id] = {"ms": round(seconds * 1000), "ratio": round(ratio, 2)}
        print(f"  {spec.handler_module:<28} {seconds * 1000:7.0f} ms   {ratio:.2f}x")
        if args.top:
            for micros, name in heaviest(spec.handler_module, path, environment, args.top):
                print(f"      {name:<24} {micros / 1000:7.0f} ms")
    print(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
