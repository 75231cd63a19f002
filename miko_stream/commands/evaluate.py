"""`eval generation`: the graph's intentions against reference intentions, per relation and overall."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from miko_stream.commands.common import LlmOption, err_console, fail, load_settings

if TYPE_CHECKING:
    from graph.knowledge import ReferencePost
    from miko_stream.evaluation.generation import Generated, GenerationReport

eval_app = typer.Typer(help="Measure the quality of the intention knowledge.", no_args_is_help=True)
out_console = Console(soft_wrap=True, width=120)


def _load_references(data: Path, split: str, limit: int | None) -> list[ReferencePost]:
    from graph.knowledge import ReferenceDataError, read_reference_posts
    from prompts import load_prompts

    try:
        references = list(read_reference_posts(data, load_prompts(), split=split, limit=limit))  # type: ignore[arg-type]
    except ReferenceDataError as error:
        fail(str(error))
    if not references:
        fail(f"no posts of {data} are in the {split!r} split")
    return references


def _progress() -> Progress:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())
    return Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=err_console)


def _run_graph(
    references: list[ReferencePost], llm: str | None, verifier: str | None, concurrency: int | None, events: Path | None
) -> tuple[list[Generated], float, str]:
    from graph.models.base import ModelSpecError
    from miko_stream.evaluation.runner import generate_for
    from miko_stream.wiring import build_pipeline

    settings = load_settings(llm=llm, verifier=verifier, max_in_flight=concurrency)
    try:
        pipeline = build_pipeline(settings)
    except ModelSpecError as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot load the model: {error}")
    sink = events.open("w") if events else None
    with _progress() as progress:
        task = progress.add_task("posts", total=len(references))

        def done(event: object) -> None:
            if sink is not None and event is not None:
                sink.write(event.model_dump_json() + "\n")  # type: ignore[attr-defined]
            progress.advance(task)

        started = time.perf_counter()

        async def run() -> list[Generated]:
            try:
                return await generate_for(pipeline, references, concurrency=settings.max_in_flight, on_done=done)
            finally:
                await pipeline.aclose()

        generated = asyncio.run(run())
        elapsed = time.perf_counter() - started
    if sink is not None:
        sink.close()
    return generated, elapsed, pipeline.info.models.llm


def _read_events(path: Path, references: list[ReferencePost]) -> list[Generated]:
    """Saved events (``--events`` of an earlier run) matched to the references by post id."""
    from pydantic import ValidationError

    from graph.contracts import IntentionEvent
    from miko_stream.evaluation.generation import Generated

    if not path.is_file():
        fail(f"events file not found: {path}")
    by_id: dict[str, Generated] = {}
    for number, line in enumerate(path.open(encoding="utf-8"), start=1):
        if line.strip():
            try:
                event = IntentionEvent.model_validate(json.loads(line))
            except (ValueError, ValidationError) as error:
                fail(f"{path.name}:{number}: not an IntentionEvent ({str(error).splitlines()[0]})")
            by_id[event.post_id] = Generated.from_event(event)
    return [by_id.get(r.post.id) or Generated.failure(r.post.id) for r in references]


def _print_report(report: GenerationReport, title: str) -> None:
    from graph.contracts import Relation

    table = Table(title=title, title_justify="left")
    for column in ("relation", "n", "similarity", "bertscore", "parse fail", "accepted", "words", "distinct", "copies"):
        table.add_column(column, justify="left" if column == "relation" else "right")
    rows = [*((r.value, f) for r, f in report.relations.items()), ("overall", report.overall)]
    for name, f in rows:
        table.add_row(
            name,
            str(f.intentions),
            f"{f.similarity:.4f}",
            f"{f.bertscore:.4f}",
            f"{f.parse_failures:.4f}",
            f"{f.accepted:.4f}",
            f"{f.words:.2f}",
            f"{f.distinct:.4f}",
            str(f.copies),
            end_section=name == list(Relation)[-1].value,
        )
    out_console.print(table)
    out_console.print(
        f"posts={report.posts} failed_posts={report.failed_posts} key_info_parsed={report.key_info_rate:.4f} "
        f"elapsed_s={report.elapsed_s:.1f} posts_per_s={report.posts_per_s:.3f} judge={report.judge}"
    )
    print(report.last_line(), flush=True)


@eval_app.command("generation")
def generation(
    data: Annotated[Path, typer.Option("--data", help="JSONL of posts with reference intentions.")],
    llm: LlmOption = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="First N posts of the split.")] = None,
    split: Annotated[
        str, typer.Option("--split", help="all | heldout (never trained on by `distill generator`) | train")
    ] = "all",
    verifier: Annotated[str | None, typer.Option("--verifier", help="Graph verifier  [env MIKO_VERIFIER]")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Posts in flight.")] = None,
    events: Annotated[Path | None, typer.Option("--events", help="Also write the generated events here.")] = None,
    from_events: Annotated[
        Path | None, typer.Option("--from-events", help="Score events saved by --events instead of running the graph.")
    ] = None,
    embedding_model: Annotated[str, typer.Option("--embedding-model", help="For similarity.")] = "all-MiniLM-L6-v2",
) -> None:
    """Run the graph over posts with reference intentions and report similarity, parse failures, acceptance.

    Accepts teacher_intentions.jsonl's format, IntentionEvent JSONL and verifier_dev.jsonl (its human-accepted
    intentions are the references). Last line: similarity=<x> parse_failures=<y> accepted=<z>.
    """
    from miko_stream.evaluation.generation import score_generation
    from miko_stream.evaluation.judges import load_judge
    from miko_stream.evaluation.similarity import MiniLMEncoder

    if split not in ("all", "heldout", "train"):
        fail(f"--split must be all, heldout or train, not {split!r}")
    references = _load_references(data, split, limit)
    if from_events is not None:
        generated, elapsed, llm_name = _read_events(from_events, references), 0.0, f"events:{from_events.name}"
    else:
        generated, elapsed, llm_name = _run_graph(references, llm, verifier, concurrency, events)
    with err_console.status("scoring..."):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        encoder = MiniLMEncoder(embedding_model)
        judge = load_judge(verifier or load_settings().verifier)
        report = score_generation(list(zip(references, generated, strict=True)), encoder, judge, elapsed)
    _print_report(report, f"eval generation: {data.name} ({split}, {len(references)} posts), llm={llm_name}")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
