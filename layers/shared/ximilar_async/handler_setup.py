"""What every handler sets up at its cold start, before its service: its settings, Logger and Metrics.

Each handler turns garbage collection off on its own first line (`coldstart.cold_start` says why), then
imports what it uses and calls `function_setup`, then builds its service in `coldstart.cold_start()`.
"""

from __future__ import annotations

from typing import TypeVar

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from ximilar_async.settings import CommonSettings

S = TypeVar("S", bound=CommonSettings)


def function_setup(settings_type: type[S]) -> tuple[S, Logger, Metrics]:
    """The function's settings (a missing or malformed variable fails the cold start with its name), its
    Logger and its Metrics (Powertools', named by the template's `POWERTOOLS_*` variables).

    Called after the handler's imports: the package's loggers configured are those registered by then.
    """
    settings = settings_type.from_env()
    logger = Logger()
    # The shared package logs through stdlib logging; give it the same JSON output and correlation keys.
    copy_config_to_registered_loggers(source_logger=logger, include={"ximilar_async"})
    return settings, logger, Metrics()
