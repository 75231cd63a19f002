"""`process` (offline batch over JSONL) and `schemas` (write the contract JSON Schemas)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import IO, Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from miko_stream.commands.common import LlmOption, VisionOption, err_console, fail, load_settings


def process(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT.jsonl", help="Posts, one JSON object a line.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where IntentionEvents go (JSONL).")],
    dlq: Annotated[Path | None, typer.Option("--dlq", help="Dead letters (default: OUT with .dlq.jsonl).")] = None,
    llm: LlmOption = None,
    vision: VisionOption = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Process only the first N records.")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Posts in flight.")] = None,
) -> None:
    """Run the MIKO graph over a JSONL file: one IntentionEvent per valid post, a dead letter per invalid line."""
    from graph.intake import count_jsonl_records
    from graph.models.base import ModelSpecError
    from miko_stream.batch import BatchRunner
    from miko_stream.wiring import build_pipeline

    if not input_path.is_file():
        fail(f"input file not found: {input_path}")
    dlq = dlq or output.with_name(output.name.removesuffix(".jsonl") + ".dlq.jsonl")
    settings = load_settings(llm=llm, vision=vision, max_in_flight=concurrency)
    with contextlib.ExitStack() as files:
        out = files.enter_context(open_for_writing(output, "-o"))
        dead = files.enter_context(open_for_writing(dlq, "--dlq"))
        try:
            pipeline = build_pipeline(settings, image_dir=input_path.resolve().parent)
        except ModelSpecError as error:
            fail(str(error))
        except OSError as error:
            fail(f"cannot load the model: {error}")
        runner = BatchRunner(pipeline, settings.limits(), concurrency=settings.max_in_flight)
        total = count_jsonl_records(input_path, limit)
        columns = (
            TextColumn("[bold]posts"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err_console) as progress:
            task = progress.add_task("posts", total=total)
            report = asyncio.run(runner.run(input_path, out, dead, limit, on_done=lambda: progress.advance(task)))
    err_console.print(
        f"{report.records} records in {report.elapsed_s:.1f}s ({report.posts_per_s:.2f} posts/s): "
        f"{report.events} events ({report.partial} partial) -> {output}, {report.dead_letters} dead letters -> {dlq}"
    )


def open_for_writing(path: Path, option: str) -> IO[str]:
    """``path`` opened for writing, its folder created like ``mkdir -p``; a one-line error otherwise."""
    if path.is_dir():
        fail(f"{option} {path} is a directory: give a file path, e.g. {path / 'events.jsonl'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("w", encoding="utf-8")
    except OSError as error:
        fail(f"cannot write {option} {path}: {error.strerror or error}")


def schemas(
    directory: Annotated[Path, typer.Argument(help="Folder for the *.schema.json files.")] = Path("docs/schemas"),
) -> None:
    """Write the JSON Schemas of Post, IntentionEvent and DeadLetter (generated from the pydantic models)."""
    from miko_stream.schemas import write_schemas

    for path in write_schemas(directory):
        err_console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command()(process)
    app.command()(schemas)
