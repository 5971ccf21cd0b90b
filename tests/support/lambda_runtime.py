"""The Lambda runtime mode's parts for tests: which build they run, and a skip (a failure under CI) without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xasync import lambda_rie

# The `sam build` output the runtime tests run: .aws-sam/build (make build), or the one XASYNC_BUILD_DIR names.
BUILD_DIR = Path(os.environ.get("XASYNC_BUILD_DIR") or lambda_rie.DEFAULT_BUILD_DIR)


def require_lambda_runtime(build_dir: Path = BUILD_DIR) -> None:
    """Skip when a part of the runtime mode is missing, naming it and what makes it; under CI (CI set), fail:
    CI builds them, and a skip there would hide that the functions no longer run as built."""
    missing = lambda_rie.missing_parts(build_dir)
    if missing:
        message = "the Lambda runtime mode needs " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
