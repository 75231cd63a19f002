"""`demo`: the whole service embedded, on sample posts, with the default offline models."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from miko_stream.commands.common import LlmOption, VisionOption, err_console, fail, load_settings
from miko_stream.logging import configure_logging


def demo(
    llm: LlmOption = None,
    vision: VisionOption = None,
    posts: Annotated[
        Path | None, typer.Option("--posts", help="JSONL posts to replay (default: shipped samples).")
    ] = None,
    port: Annotated[int, typer.Option("--port", help="HTTP port of the search API.")] = 8000,
    index_dir: Annotated[
        Path | None, typer.Option("--index-dir", help="Index folder (default: a temporary one).")
    ] = None,
    exit_when_indexed: Annotated[
        bool, typer.Option("--exit-when-indexed", help="Stop once every post is indexed (for scripts and tests).")
    ] = False,
    json_logs: Annotated[
        bool, typer.Option("--json-logs", help="Keep the services' JSON log lines (default: only warnings, readable).")
    ] = False,
) -> None:
    """Broker + processor + indexer + search API, replaying sample posts; prints the URL. All offline."""
    from graph.models.base import ModelSpecError
    from miko_stream.broker import BrokerError
    from miko_stream.demo import DemoOptions, run_demo, sample_posts

    if not json_logs:  # the demo is for a person: progress lines, and log lines only for trouble
        configure_logging("WARNING", json=False)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars (read at import)
    source = posts or sample_posts()
    if not source.is_file():
        fail(f"posts file not found: {source}")
    with tempfile.TemporaryDirectory(prefix="miko-demo-") as scratch:
        settings = load_settings(llm=llm, vision=vision or "none", index_dir=index_dir or Path(scratch) / "index")
        # A few posts at a time: results arrive as the demo goes, instead of all at the end of one big batch.
        settings = settings.model_copy(update={"max_in_flight": min(settings.max_in_flight, 8)})
        options = DemoOptions(posts=source, port=port, exit_when_indexed=exit_when_indexed)
        try:
            code = asyncio.run(
                run_demo(settings, options, lambda line: err_console.print(line, highlight=False, soft_wrap=True))
            )
        except ModelSpecError as error:
            fail(str(error))
        except (BrokerError, OSError) as error:
            fail(str(error), code=1)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(demo)
