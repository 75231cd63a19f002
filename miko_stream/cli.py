"""The `miko-stream` command line: each group of commands lives in miko_stream/commands/."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from miko_stream.commands import batch, demo, distill, distill_generator, evaluate, index, models, stream, verifier
from miko_stream.commands.common import fail
from miko_stream.logging import configure_logging

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

app = typer.Typer(
    name="miko-stream",
    help="Verified intention knowledge from live social-media posts (MIKO, streaming on Kafka).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="MIKO_LOG_LEVEL", help="DEBUG, INFO, WARNING")
    ] = "INFO",
    log_format: Annotated[str, typer.Option("--log-format", envvar="MIKO_LOG_FORMAT", help="json | console")] = "json",
) -> None:
    """Set up logging before any command runs; models load offline only."""
    if log_level.upper() not in LOG_LEVELS:
        fail(f"--log-level {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if log_format not in ("json", "console"):
        fail(f"--log-format {log_format!r} is not json or console")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OpenMP threads that spin while waiting steal the CPU from the event loop and the other model thread;
    # read when torch loads, which every command does lazily, after this.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    configure_logging(log_level, json=log_format != "console")


for _commands in (batch, models, stream, index, demo, evaluate, distill, distill_generator, verifier):
    _commands.register(app)
