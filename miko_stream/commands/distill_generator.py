"""`distill generator`: fine-tune the local model on a teacher's intentions (see graph/distill).

The command joins the `distill` group of :mod:`miko_stream.commands.distill`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from miko_stream.commands.common import err_console, fail, load_settings


def generator(
    data: Annotated[Path, typer.Option("--data", help="Teacher outputs (teacher, IntentionEvent or judged JSONL).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the adapter (or model), card and checkpoints.")],
    base: Annotated[str, typer.Option("--base", help="Model spec of the student.")] = "smollm2",
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 1,
    lora_rank: Annotated[int, typer.Option("--lora-rank", min=1, help="LoRA rank (adapter size grows with it).")] = 8,
    full: Annotated[bool, typer.Option("--full", help="Fine-tune every weight instead of a LoRA adapter.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Train on the first N training posts.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.")] = False,
    posts_per_step: Annotated[int, typer.Option("--posts-per-step", min=1)] = 4,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="Default 2e-4 (LoRA), 3e-5 (full).")] = None,
    validation_posts: Annotated[int, typer.Option("--validation-posts", min=0)] = 24,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after N optimizer steps.")] = None,
    save_every: Annotated[int, typer.Option("--save-every", min=1, help="Steps between checkpoints.")] = 25,
    no_bf16: Annotated[bool, typer.Option("--no-bf16", help="Train in float32 (slower).")] = False,
) -> None:
    """Fine-tune the local model on teacher outputs, with exactly the prompts the graph sends.

    Held-out posts (`eval generation --split heldout`) are never trained on. Prints the run id, figures and
    the --llm spec that serves the result.
    """
    from graph.distill.examples import DistillDataError
    from graph.distill.run import DistillRequest, distill_generator
    from graph.distill.trainer import StepReport, TrainConfig
    from graph.knowledge import ReferenceDataError
    from graph.models.base import ModelSpecError
    from graph.models.registry import LLMConfig, local_source
    from graph.models.spec import parse_llm_spec

    if not data.is_file():
        fail(f"data file not found: {data}")
    if (out / "checkpoint").exists() and not resume:
        fail(f"{out} already holds a checkpoint: pass --resume to continue it, or choose another --out")
    settings = load_settings()
    try:
        spec = parse_llm_spec(base)
        if spec.kind not in ("smollm2", "hf"):
            fail(f"--base must be a local plain model (smollm2 or hf:<folder>), not {base!r}")
        base_folder = Path(local_source(spec, LLMConfig(cache_dir=settings.cache_dir)))
    except ModelSpecError as error:
        fail(str(error))
    config = TrainConfig(
        epochs=epochs,
        lora_rank=None if full else lora_rank,
        learning_rate=learning_rate,
        posts_per_step=posts_per_step,
        seed=seed,
        bf16=not no_bf16,
        save_every=save_every,
        max_steps=max_steps,
    )
    request = DistillRequest(
        data=data,
        out=out,
        base=str(spec),
        base_folder=base_folder,
        limit=limit,
        validation_posts=validation_posts,
        resume=resume,
        config=config,
    )
    columns = (TextColumn("[bold]steps"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=err_console) as progress:
        task = progress.add_task("train", total=None, info="loading")

        def on_step(report: StepReport) -> None:
            info = f"epoch {report.epoch + 1} loss {report.loss:.3f} {report.tokens_per_s:.0f} tok/s"
            progress.update(task, total=report.total_steps, completed=report.step, info=info)
            if not err_console.is_terminal:  # a log file gets a line per step instead of a redrawn bar
                progress.console.print(f"step {report.step}/{report.total_steps} {info} {report.elapsed_s:.0f}s")

        try:
            result = distill_generator(request, on_step=on_step, status=lambda line: progress.console.print(line))
        except (ReferenceDataError, DistillDataError, FileNotFoundError) as error:
            fail(str(error))
    err_console.print(
        f"run {result.run_id}: {result.train_posts} posts, {result.steps} steps in {result.elapsed_s:.0f}s "
        f"({result.tokens_per_s:.0f} tokens/s), validation loss {result.validation_loss_before:.4f} -> "
        f"{result.validation_loss_after:.4f}, peak RSS {result.peak_rss_mb:.0f} MB"
    )
    err_console.print(f"serve it with --llm distilled:{out}")


def register(app: typer.Typer) -> None:
    from miko_stream.commands.distill import distill_app

    distill_app.command("generator")(generator)
