"""`verifier train` (learn the verifier from human judgements) and `eval verifier` (measure any verifier mode)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from miko_stream.commands.common import LlmOption, err_console, fail, load_settings

if TYPE_CHECKING:
    import numpy as np

    from graph.verifier.items import LabelledItem
    from graph.verifier.metrics import VerifierMetrics
    from graph.verifier.training import TrainedVerifier

verifier_app = typer.Typer(help="The learned verifier: train it from human judgements.", no_args_is_help=True)

DataOption = Annotated[
    Path, typer.Option("--data", help="Human-judged intentions, JSONL in the format of verifier_dev.jsonl.")
]
Mode = Literal["learned", "hybrid", "llm", "heuristic", "none"]


@contextmanager
def progress_bar(description: str) -> Iterator[Progress]:
    columns = (TextColumn(f"[bold]{description}"), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=err_console) as progress:
        yield progress


def read_items(data: Path, limit: int | None = None) -> list[LabelledItem]:
    """The judged items of ``data`` (first ``limit`` posts), or a one-line error."""
    from graph.verifier.items import VerifierDataError, groups_of, read_labelled

    try:
        items = read_labelled(data)
    except VerifierDataError as error:
        fail(str(error))
    if limit is not None:
        groups = groups_of([x.item for x in items])
        items = [x for x, g in zip(items, groups, strict=True) if g < limit]
    return items


def train_with_progress(items: Sequence[LabelledItem], encoder_spec: str, folds: int, seed: int) -> TrainedVerifier:
    from graph.verifier.artifact import VerifierArtifactError, load_encoder
    from graph.verifier.features import FeatureExtractor
    from graph.verifier.training import TrainConfig, train_verifier

    try:
        extractor = FeatureExtractor(load_encoder(encoder_spec))
    except VerifierArtifactError as error:
        fail(str(error))
    config = TrainConfig(folds=folds, seed=seed)
    with progress_bar("train") as progress:
        task = progress.add_task("", total=None)

        def report(step: str, done: int, total: int) -> None:
            progress.update(task, description=step, completed=done, total=total)

        try:
            return train_verifier(items, extractor, config, report)
        except ValueError as error:
            fail(str(error))


@verifier_app.command("train")
def train(
    data: DataOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for the artifact (verifier.json, weights, card).")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fold split and the fit.")] = 0,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Grouped-CV folds (model choice, thresholds).")] = 5,
    llm: Annotated[
        str | None, typer.Option("--llm", help="Also fit hybrid weights for this LLM judge (runs it on every item).")
    ] = None,
    judge_limit: Annotated[
        int | None, typer.Option("--judge-limit", min=10, help="--llm: fit the hybrid on the first N posts only.")
    ] = None,
    encoder: Annotated[str, typer.Option("--encoder", help="Sentence encoder (default: bundled MiniLM).")] = (
        "all-MiniLM-L6-v2"
    ),
) -> None:
    """Train the learned verifier on human judgements; writes the artifact with a model card."""
    from graph.verifier.artifact import VerifierMeta, save_artifact
    from graph.verifier.card import model_card

    started = time.monotonic()
    items = read_items(data)
    trained = train_with_progress(items, encoder, folds, seed)
    hybrid = [fit_hybrid_weights(items, trained, llm, folds, seed, judge_limit)] if llm else []
    meta = VerifierMeta(
        name="miko-verifier-minilm",
        version="1.0.0",
        encoder=encoder,
        feature_groups=list(trained_groups()),
        thresholds=trained.thresholds,
        cv=cv_summary(trained.metrics, folds, trained.cv.c, trained.cv.auroc_by_c),
        training={
            "data": data.name,
            "items": len(items),
            "posts": len({x.item.group_key() for x in items}),
            "seed": seed,
        },
        hybrid=hybrid,
    )
    try:
        save_artifact(out, meta, trained.head, model_card(meta))
    except OSError as error:
        fail(f"cannot write the artifact to {out}: {error}")
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print_metrics(trained.metrics, f"grouped {folds}-fold CV on {data.name} (C={trained.cv.c})")
    err_console.print(f"[green]ok[/] wrote {out} ({size / 1024:.1f} KiB) in {time.monotonic() - started:.0f}s")
    print(f"auroc={trained.metrics.auroc:.4f} version={meta.version}")


def trained_groups() -> tuple[str, ...]:
    from graph.verifier.training import TrainConfig

    return TrainConfig().feature_groups


def cv_summary(metrics: VerifierMetrics, folds: int, c: float, by_c: dict[float, float]) -> dict[str, object]:
    return {
        "folds": folds,
        "c": c,
        "auroc_by_c": {str(k): round(v, 4) for k, v in by_c.items()},
        "auroc": round(metrics.auroc, 4),
        "accuracy": round(metrics.accuracy, 4),
        "f1": round(metrics.f1, 4),
        "accept_rate": round(metrics.accept_rate, 4),
        "accept_rate_human": round(metrics.accept_rate_human, 4),
        "precision_accepted": round(metrics.precision_accepted, 4),
        "rejection_precision": round(metrics.rejection_precision, 4),
        "rejection_recall": round(metrics.rejection_recall, 4),
        "ece": round(metrics.ece, 4),
        "auroc_by_relation": {k: round(v, 4) for k, v in metrics.auroc_by_relation.items()},
    }


def fit_hybrid_weights(items: Sequence[LabelledItem], trained: TrainedVerifier, llm: str, folds: int, seed: int):
    """Hybrid weights for ``llm``, fitted on the same grouped folds as the learned model's out-of-fold scores."""
    from graph.verifier.artifact import HybridWeights
    from graph.verifier.items import groups_of
    from graph.verifier.training import fit_hybrid, relation_thresholds

    judged = judge(items, llm)
    groups = groups_of([x.item for x in items])
    (a, b, c), scores = fit_hybrid(trained.cv.scores, judged, trained.cv.labels, groups, folds, seed)
    thresholds = relation_thresholds(trained.cv.labels, scores, trained.cv.relations)
    return HybridWeights(llm=llm, learned_weight=a, llm_weight=b, bias=c, thresholds=thresholds)


def judge(items: Sequence[LabelledItem], llm: str | None) -> np.ndarray:
    """P(yes) of the LLM judge for every item, through the verify node (progress bar; model loaded once)."""
    import numpy as np

    from graph.models.base import ModelSpecError
    from graph.models.registry import build_chat_model
    from graph.nodes import GraphDeps, MikoNodes
    from miko_stream.wiring import llm_config
    from prompts import load_prompts

    settings = load_settings(llm=llm)
    try:
        chat = build_chat_model(settings.llm, llm_config(settings))
    except ModelSpecError as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot load the model: {error}")
    nodes = MikoNodes(GraphDeps(llm=chat, prompts=load_prompts()))
    with progress_bar(f"judge {settings.llm}") as progress:
        task = progress.add_task("intentions", total=len(items))
        scores = asyncio.run(_judge(nodes, items, lambda n: progress.advance(task, n), settings.max_in_flight))
    return np.nan_to_num(scores, nan=0.5)


async def _judge(nodes, items, advance, concurrency):
    from graph.models.registry import shutdown_local_models
    from graph.verifier.evaluation import judge_scores

    try:
        return await judge_scores(nodes, items, advance, concurrency)
    finally:
        await asyncio.to_thread(shutdown_local_models)


def print_metrics(metrics: VerifierMetrics, title: str) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("intentions", f"{metrics.n}"),
        ("human accept rate", f"{metrics.accept_rate_human:.3f}"),
        ("verifier accept rate", f"{metrics.accept_rate:.3f}"),
        ("AUROC", f"{metrics.auroc:.4f}"),
        ("accuracy", f"{metrics.accuracy:.4f}"),
        ("F1 (accepted)", f"{metrics.f1:.4f}"),
        ("precision of accepted", f"{metrics.precision_accepted:.4f}"),
        ("precision of rejections", f"{metrics.rejection_precision:.4f}"),
        ("recall of rejections", f"{metrics.rejection_recall:.4f}"),
        ("ECE (10 bins)", f"{metrics.ece:.4f}"),
    ]
    rows += [(f"AUROC {name}", f"{value:.4f}") for name, value in metrics.auroc_by_relation.items()]
    for row in rows:
        table.add_row(*row)
    err_console.print(table)


def eval_verifier(
    data: DataOption,
    verifier: Annotated[
        str | None, typer.Option("--verifier", help="learned | hybrid | llm | heuristic | none  [env MIKO_VERIFIER]")
    ] = None,
    llm: LlmOption = None,
    cv: Annotated[
        int | None,
        typer.Option("--cv", min=2, help="learned/hybrid: grouped K-fold CV on DATA (retrains per fold)."),
    ] = None,
    verifier_path: Annotated[
        Path | None, typer.Option("--verifier-path", help="Learned-verifier artifact  [env MIKO_VERIFIER_PATH]")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N posts of DATA.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Fold split seed (--cv).")] = 0,
) -> None:
    """AUROC, accuracy, F1, rejection precision/recall, per-relation AUROC and ECE of a verifier vs human labels."""
    started = time.monotonic()
    settings = load_settings(llm=llm, verifier=verifier, verifier_path=verifier_path)
    mode: Mode = settings.verifier  # type: ignore[assignment]
    items = read_items(data, limit)
    if cv is not None and mode not in ("learned", "hybrid"):
        fail("--cv retrains the learned verifier per fold: use it with --verifier learned or hybrid")
    metrics, title = _evaluate(items, mode, settings, cv, seed)
    print_metrics(metrics, f"eval verifier: {title} on {data.name}, {time.monotonic() - started:.1f}s")
    print(f"auroc={metrics.auroc:.4f} accuracy={metrics.accuracy:.4f} f1={metrics.f1:.4f}")


def _evaluate(items, mode, settings, cv, seed):
    import numpy as np

    from graph.verifier.metrics import evaluate
    from graph.verifier.training import apply_thresholds, relation_thresholds

    labels = np.array([x.label for x in items])
    relations = [x.item.relation.value for x in items]
    if cv is not None:
        trained = train_with_progress(items, "all-MiniLM-L6-v2", cv, seed)
        if mode == "learned":
            return trained.metrics, f"learned, grouped {cv}-fold CV (C={trained.cv.c})"
        hybrid = fit_hybrid_weights(items, trained, settings.llm, cv, seed)
        scores = hybrid.combine(trained.cv.scores, judge(items, settings.llm))
        accepted = apply_thresholds(scores, relations, relation_thresholds(labels, scores, relations))
        return evaluate(labels, scores, accepted, relations), f"hybrid learned+{settings.llm}, grouped {cv}-fold CV"
    scores, thresholds, title = _scores(items, mode, settings)
    accepted = apply_thresholds(scores, relations, thresholds)
    return evaluate(labels, scores, accepted, relations), title


def _scores(items, mode, settings):
    import numpy as np

    from graph.contracts import Relation
    from graph.verifier.artifact import VerifierArtifactError, load_learned_verifier
    from graph.verifier.evaluation import heuristic_scores
    from miko_stream.wiring import verify_threshold

    everywhere = {r.value: verify_threshold(settings) for r in Relation}
    if mode == "none":
        return np.ones(len(items)), {r: 0.0 for r in everywhere}, "none (accepts everything)"
    if mode == "heuristic":
        return heuristic_scores(items), everywhere, "heuristic"
    if mode == "llm":
        return judge(items, settings.llm), everywhere, f"llm:{settings.llm}"
    try:
        learned = load_learned_verifier(settings.verifier_path)
    except VerifierArtifactError as error:
        fail(str(error))
    with progress_bar("score") as progress:
        progress.add_task("learned", total=None)
        scores = np.array(learned.score([x.item for x in items]))
    title = f"learned {learned.label} (its training data gives optimistic figures: use --cv)"
    if mode == "learned":
        return scores, dict(learned.meta.thresholds), title
    hybrid = learned.hybrid(settings.llm)
    if hybrid is None:
        fail(f"the verifier artifact has no hybrid weights for --llm {settings.llm}; use --cv to fit them here")
    return (
        hybrid.combine(scores, judge(items, settings.llm)),
        hybrid.thresholds,
        f"hybrid {learned.label}+{settings.llm}",
    )


def register(app: typer.Typer) -> None:
    from miko_stream.commands.evaluate import eval_app

    app.add_typer(verifier_app, name="verifier")
    eval_app.command("verifier")(eval_verifier)
