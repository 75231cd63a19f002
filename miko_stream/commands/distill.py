"""`distill`: small students trained from intention knowledge. `sarcasm` trains one, `predict` scores posts."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from miko_stream.commands.common import err_console, fail

distill_app = typer.Typer(help="Distil small students from intention knowledge.", no_args_is_help=True)

INPUT_CHOICES = "text | text+caption | text+intentions | all"
LabelsOption = Annotated[
    Path | None,
    typer.Option(
        "--labels",
        help="JSONL with `id` and `label` per post (e.g. the source dataset): labels `process` events by post id.",
    ),
]


class _RichTrainProgress:
    """Training progress as rich bars, one per epoch, with the running loss."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: int | None = None
        self.losses: list[float] = []

    def phase(self, name: str, total: int) -> None:
        self.losses = []
        self.task = self.progress.add_task(name, total=total, loss="")

    def advance(self, loss: float) -> None:
        self.losses.append(loss)
        mean = sum(self.losses[-20:]) / len(self.losses[-20:])
        self.progress.update(self.task, advance=1, loss=f"loss {mean:.4f}")  # type: ignore[arg-type]


@distill_app.command("sarcasm")
def sarcasm(
    train: Annotated[Path, typer.Option("--train", help="Labelled posts (JSONL: text, caption, intentions, label).")],
    eval_path: Annotated[Path, typer.Option("--eval", help="Held-out labelled posts, never used for training.")],
    inputs: Annotated[str, typer.Option("--inputs", help=INPUT_CHOICES)] = "text",
    aux: Annotated[str, typer.Option("--aux", help="none | itc | itm | itc,itm (β = 0.1 each)")] = "none",
    encoder: Annotated[
        str, typer.Option("--encoder", help="all-MiniLM-L6-v2 (bundled) or a local Hugging Face encoder folder")
    ] = "all-MiniLM-L6-v2",
    image_encoder: Annotated[
        str | None,
        typer.Option("--image-encoder", help="Local vision encoder folder: ITC/ITM on images instead of captions."),
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="At most; early stopping may end sooner.")] = 3,
    limit: Annotated[int | None, typer.Option("--limit", min=2, help="Use only the first N training posts.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Folder for the trained student.")] = Path("sarcasm-student"),
    train_layers: Annotated[
        int | None,
        typer.Option("--train-layers", min=1, help="Fine-tune only the top N encoder layers (default: all)."),
    ] = None,
    max_length: Annotated[int, typer.Option("--max-length", min=16, help="Tokens per post.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Encoder learning rate (heads: 1e-3).")] = 5e-5,
    precision: Annotated[str, typer.Option("--precision", help="bf16 (autocast) | fp32")] = "bf16",
    labels: LabelsOption = None,
) -> None:
    """Fine-tune a sarcasm student; prints the held-out metrics, last line `f1=<x> roc_auc=<y> pr_auc=<z>`."""
    from graph.classifiers.card import model_card
    from graph.classifiers.data import DataError, read_labels, read_posts
    from graph.classifiers.inputs import InputSet
    from graph.classifiers.losses import AuxWeights
    from graph.classifiers.metrics import classification_metrics, summary_line
    from graph.classifiers.model import StudentError
    from graph.classifiers.train import TrainConfig, train_student

    if inputs not in {choice.value for choice in InputSet}:
        fail(f"--inputs must be one of: {INPUT_CHOICES}")
    try:
        config = TrainConfig(
            inputs=InputSet(inputs),
            aux=AuxWeights.parse(aux),
            encoder=encoder,
            image_encoder=image_encoder,
            epochs=epochs,
            seed=seed,
            train_layers=train_layers,
            max_length=max_length,
            batch_size=batch_size,
            lr=lr,
            bf16=_bf16(precision),
        )
        known = read_labels(labels) if labels else None
        train_posts = read_posts(train, require_labels=True, limit=limit, labels=known)
        eval_posts = read_posts(eval_path, require_labels=True, labels=known)
    except ValueError as error:  # DataError too
        fail(str(error))
    _refuse_overlap(train_posts, eval_posts)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=err_console) as progress:
            result = train_student(
                train_posts, config, image_base=train.resolve().parent, progress=_RichTrainProgress(progress)
            )
    except (DataError, StudentError) as error:
        fail(str(error))
    started = time.perf_counter()
    scores = result.student.score(eval_posts, bf16=config.bf16)
    metrics = classification_metrics([post.label or 0 for post in eval_posts], scores)
    student = result.student
    student.config.trained = {
        "train_file": str(train),
        "eval_file": str(eval_path),
        "train_posts": result.train_posts,
        "validation_posts": result.val_posts,
        "eval_posts": len(eval_posts),
        "seed": seed,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_layers": train_layers or "all",
        "precision": precision,
        "bf16_max_prob_diff_on_validation": result.bf16_max_prob_diff,
        "train_seconds": round(result.seconds, 1),
        "eval_seconds": round(time.perf_counter() - started, 1),
        "history": result.history,
        "eval_metrics": metrics,
    }
    student.save(out, model_card(student.config, metrics))
    _print_metrics(metrics, result.history, result.bf16_max_prob_diff, out)
    typer.echo(summary_line(metrics))


def _bf16(precision: str) -> bool:
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"--precision must be bf16 or fp32, got {precision!r}")
    return precision == "bf16"


def _refuse_overlap(train_posts: list, eval_posts: list) -> None:
    shared = {post.id for post in train_posts} & {post.id for post in eval_posts}
    if shared:
        example = sorted(shared)[0]
        fail(f"{len(shared)} posts are in both --train and --eval (e.g. {example}): use `miko-stream distill split`")


def _print_metrics(
    metrics: dict[str, float], history: list[dict[str, float]], bf16_diff: float | None, out: Path
) -> None:
    table = Table(title="held-out evaluation")
    for name in ("roc_auc", "pr_auc", "accuracy", "f1", "precision", "recall"):
        table.add_column(name)
    table.add_row(
        *(
            f"{metrics[name]:.4f}" if not math.isnan(metrics[name]) else "n/a"
            for name in ("roc_auc", "pr_auc", "accuracy", "f1", "precision", "recall")
        )
    )
    err_console.print(table)
    epochs = ", ".join(f"{row['epoch']:.0f}: val loss {row['val_loss']:.4f}" for row in history)
    err_console.print(f"epochs ({epochs}); eval posts {metrics['n']:.0f}, sarcastic {metrics['positives']:.0f}")
    if bf16_diff is not None:
        err_console.print(f"bf16 autocast check: max |P_bf16 - P_fp32| on the validation slice = {bf16_diff:.5f}")
    err_console.print(f"[green]saved[/] {out} (student.json, README.md model card)")


@distill_app.command("predict")
def predict(
    model: Annotated[Path, typer.Option("--model", help="A folder written by `distill sarcasm`.")],
    input_path: Annotated[Path, typer.Argument(metavar="FILE.jsonl", help="Posts or IntentionEvents, one a line.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Scores as JSONL (default: stdout).")] = None,
    labels: LabelsOption = None,
) -> None:
    """Score posts with a saved student: one `{"id", "<task>", "predicted"}` line per post; metrics if labelled."""
    from graph.classifiers.data import DataError, read_labels, read_posts
    from graph.classifiers.metrics import classification_metrics, summary_line
    from graph.classifiers.model import SarcasmStudent, StudentError

    try:
        student = SarcasmStudent.load(model)
        posts = read_posts(input_path, labels=read_labels(labels) if labels else None)
    except (DataError, StudentError, OSError) as error:
        fail(str(error))
    task = student.config.task
    with err_console.status(f"scoring {len(posts)} posts..."):
        scores = student.score(posts)
    sink = output.open("w", encoding="utf-8") if output else sys.stdout
    try:
        for post, score in zip(posts, scores, strict=True):
            row = {"id": post.id, task: round(score, 6), "predicted": int(score >= student.config.threshold)}
            sink.write(json.dumps(row) + "\n")
    finally:
        if output:
            sink.close()
    if all(post.label is not None for post in posts):
        metrics = classification_metrics([post.label or 0 for post in posts], scores, student.config.threshold)
        err_console.print(summary_line(metrics) + f" accuracy={metrics['accuracy']:.4f}")


@distill_app.command("split")
def split(
    input_path: Annotated[Path, typer.Argument(metavar="FILE.jsonl", help="Labelled posts.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where train.jsonl and eval.jsonl go.")],
    fraction: Annotated[float, typer.Option("--eval-fraction", min=0.01, max=0.99)] = 0.2,
    labels: LabelsOption = None,
) -> None:
    """A fixed, stratified held-out slice (chosen by a hash of each post id): the same split on every machine.

    With --labels, the written files carry the joined labels, so `process` events become training data."""
    from graph.classifiers.data import DataError, read_labels, read_posts, split_posts, write_posts

    try:
        known = read_labels(labels) if labels else None
        rest, held = split_posts(read_posts(input_path, require_labels=True, labels=known), fraction)
    except DataError as error:
        fail(str(error))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_posts(rest, out_dir / "train.jsonl")
    write_posts(held, out_dir / "eval.jsonl")
    for name, part in (("train", rest), ("eval", held)):
        err_console.print(
            f"{out_dir / (name + '.jsonl')}: {len(part)} posts, {sum(p.label or 0 for p in part)} labelled 1"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(distill_app, name="distill")
