"""Ablation grid of the sarcasm student: inputs × auxiliary losses × seeds, beside a frozen-feature floor.

For every cell (input variant × aux losses) it fine-tunes one student per seed on the training file (early
stopping on a validation slice carved from it), scores the held-out file, and prints F1 / ROC-AUC / PR-AUC as
mean ± std over the seeds. Then the deltas of ``itc,itm`` over ``none`` and of ``+intentions`` over the same
inputs without them, each marked ``*`` when it exceeds seed noise: |Δ| > 2·sqrt(s_a²/n + s_b²/n) (two standard
errors of the difference of two means). Beside the grid, the floor: a logistic regression on the frozen
pretrained encoder's mean-pooled features of the same inputs (deterministic, one value per input variant).

Every finished run and floor is appended to ``--results`` (JSONL; floors as ``"aux": "floor"``); a re-run skips
what is already there, so a grid can be stopped and resumed, extended cell by cell, or split across processes
whose result files are concatenated for ``--report``.

Run from the project root (labelled events and a held-out split first, written outside the project):
    miko-stream process posts.jsonl -o /tmp/events.jsonl            # posts.jsonl: id, text, caption (and label)
    miko-stream distill split /tmp/events.jsonl --labels posts.jsonl --out-dir /tmp/sarcasm-split --eval-fraction 0.3
    nice -n 19 python -m bench.distill --train /tmp/sarcasm-split/train.jsonl --eval /tmp/sarcasm-split/eval.jsonl \\
        --inputs text,text+caption,text+intentions,all --aux none --aux itc,itm --seeds 0,1,2 \\
        --epochs 4 --train-layers 1 --results /tmp/sarcasm-grid.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from graph.classifiers.data import read_labels, read_posts
from graph.classifiers.frozen import FrozenBottom
from graph.classifiers.inputs import InputSet, LabelledPost
from graph.classifiers.losses import AuxWeights
from graph.classifiers.metrics import classification_metrics
from graph.classifiers.model import SarcasmStudent, StudentConfig
from graph.classifiers.train import TrainConfig, encoded_scores, train_student

METRICS = ("f1", "roc_auc", "pr_auc")
FLOOR = "floor"
WITHOUT_INTENTIONS = {InputSet.TEXT_INTENTIONS: InputSet.TEXT, InputSet.ALL: InputSet.TEXT_CAPTION}


def run_cell(
    train: Sequence[LabelledPost], test: Sequence[LabelledPost], config: TrainConfig
) -> dict[str, float | int | str]:
    """One fine-tune and its held-out metrics (scored through the same cached bottom as training)."""
    result = train_student(train, config)
    scores = encoded_scores(result.student, result.encode, test, config.bf16)
    metrics = classification_metrics([post.label or 0 for post in test], scores)
    return {
        "inputs": str(config.inputs),
        "aux": config.aux.spec(),
        "seed": config.seed,
        **metrics,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 1),
        "bf16_max_prob_diff": result.bf16_max_prob_diff or 0.0,
    }


@torch.inference_mode()
def floor(
    train: Sequence[LabelledPost], test: Sequence[LabelledPost], inputs: InputSet, train_layers: int, max_length: int
) -> dict[str, float]:
    """Logistic regression on frozen, pretrained mean-pooled features of the same inputs."""
    from sklearn.linear_model import LogisticRegression

    student = SarcasmStudent.from_encoder(StudentConfig(inputs=inputs, max_length=max_length)).eval()
    bottom = FrozenBottom(student, train_layers)  # shares the grid's cache; the top layers are still pretrained

    def features(posts: Sequence[LabelledPost]) -> list[list[float]]:
        rows: list[list[float]] = []
        for start in range(0, len(posts), 32):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                rows.extend(bottom.pooled(posts[start : start + 32]).float().tolist())
        return rows

    model = LogisticRegression(max_iter=2000).fit(features(train), [post.label for post in train])
    scores = model.predict_proba(features(test))[:, 1].tolist()
    return classification_metrics([post.label or 0 for post in test], scores)


def _saved(row: dict, results: Path) -> dict:
    """Appends one finished run (or floor) to the results file, so a stopped grid resumes after it."""
    with results.open("a") as out:
        out.write(json.dumps(row) + "\n")
    return row


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [value for value in values if not math.isnan(value)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def delta(a: Sequence[float], b: Sequence[float]) -> str:
    """``mean(a) - mean(b)``, starred when beyond two standard errors of the difference."""
    (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
    if math.isnan(mean_a) or math.isnan(mean_b):
        return "n/a"
    if min(len(a), len(b)) < 2:
        return f"{mean_a - mean_b:+.4f}? (fewer than 2 seeds: no noise estimate)"
    noise = 2 * math.sqrt(std_a**2 / max(len(a), 1) + std_b**2 / max(len(b), 1))
    diff = mean_a - mean_b
    return f"{diff:+.4f}{'*' if abs(diff) > noise else ' '} (noise {noise:.4f})"


def against_floor(values: Sequence[float], floor_value: float) -> str:
    """``mean - floor`` with a verdict: above/below when two standard errors of the mean clear it, else noise."""
    mean, std = mean_std(values)
    if math.isnan(mean) or math.isnan(floor_value):
        return "n/a"
    margin = 2 * std / math.sqrt(len(values)) + 1e-9 if len(values) > 1 else math.inf  # 1e-9: float rounding
    verdict = "above" if mean - margin > floor_value else "below" if mean + margin < floor_value else "within noise"
    return f"{round(mean - floor_value, 4) + 0.0:+.4f} ({verdict})"  # + 0.0: no "-0.0000"


def print_table(runs: list[dict], floors: dict[str, dict[str, float]]) -> None:
    cells: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        cells.setdefault((run["inputs"], run["aux"]), []).append(run)
    print("\n| inputs | aux | seeds | " + " | ".join(METRICS) + " | mean s/run |")
    print("|---|---|---|" + "---|" * (len(METRICS) + 1))
    for (inputs, aux), group in sorted(cells.items()):
        stats = [mean_std([run[name] for run in group]) for name in METRICS]
        shown = " | ".join(f"{mean:.4f} ± {std:.4f}" for mean, std in stats)
        seconds = statistics.fmean(run["seconds"] for run in group)
        print(f"| {inputs} | {aux} | {len(group)} | {shown} | {seconds:.0f} |")
    for inputs, metrics in sorted(floors.items()):
        shown = " | ".join(f"{metrics[name]:.4f}" for name in METRICS)
        print(f"| {inputs} | floor: logistic regression on frozen features | - | {shown} | - |")
    print("\ndeltas (mean difference; * = beyond seed noise, |Δ| > 2·SE of the difference; ? = too few seeds)")
    for (inputs, aux), group in sorted(cells.items()):
        if aux != "none" and (inputs, "none") in cells:
            print(f"  {aux} over none, inputs {inputs}: {_per_metric(group, cells[(inputs, 'none')])}")
        without = WITHOUT_INTENTIONS.get(InputSet(inputs))
        if without and (str(without), aux) in cells:
            print(f"  {inputs} over {without}, aux {aux}: {_per_metric(group, cells[(str(without), aux)])}")
    if floors:
        print("\nagainst the floor (cell mean - floor; above/below = beyond 2 standard errors of the cell mean)")
    for (inputs, aux), group in sorted(cells.items()):
        if inputs in floors:
            shown = ", ".join(f"{m} {against_floor([r[m] for r in group], floors[inputs][m])}" for m in METRICS)
            print(f"  {inputs} aux {aux}: {shown}")


def _per_metric(group: Sequence[dict], base: Sequence[dict]) -> str:
    return ", ".join(f"{m} {delta([r[m] for r in group], [r[m] for r in base])}" for m in METRICS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--inputs", default="text,text+caption,text+intentions,all")
    parser.add_argument("--aux", action="append", help="repeat: --aux none --aux itc,itm (default: all four)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-layers", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--limit", type=int, default=None, help="first N training posts")
    parser.add_argument("--labels", type=Path, default=None, help="JSONL `id`+`label`: labels events by post id")
    parser.add_argument("--results", type=Path, default=Path("distill-grid.jsonl"))
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--report", action="store_true", help="print the table of the runs in --results; train nothing")
    args = parser.parse_args()

    labels = read_labels(args.labels) if args.labels else None
    train = read_posts(args.train, require_labels=True, limit=args.limit, labels=labels)
    test = read_posts(args.eval, require_labels=True, labels=labels)
    inputs = [InputSet(name) for name in args.inputs.split(",")]
    auxes = [AuxWeights.parse(spec) for spec in (args.aux or ["none", "itc", "itm", "itc,itm"])]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    done = [json.loads(line) for line in args.results.read_text().splitlines()] if args.results.exists() else []
    print(
        f"train {args.train} ({len(train)} posts, {sum(p.label or 0 for p in train)} sarcastic), "
        f"eval {args.eval} ({len(test)} posts, {sum(p.label or 0 for p in test)} sarcastic); "
        f"epochs ≤{args.epochs}, top {args.train_layers} layers, max_length {args.max_length}, seeds {seeds}; "
        f"torch threads {torch.get_num_threads()}, load {os.getloadavg()}",
        flush=True,
    )
    started = time.perf_counter()
    for variant in [] if args.report else inputs:  # one variant at a time: the frozen-bottom cache holds one variant
        if not args.no_floor and not any(r["inputs"] == variant and r["aux"] == FLOOR for r in done):
            metrics = floor(train, test, variant, args.train_layers, args.max_length)
            done.append(_saved({"inputs": str(variant), "aux": FLOOR, **metrics}, args.results))
            print(f"floor {variant}: " + " ".join(f"{m}={metrics[m]:.4f}" for m in METRICS), flush=True)
        for aux in auxes:
            for seed in seeds:
                if any(r["inputs"] == variant and r["aux"] == aux.spec() and r.get("seed") == seed for r in done):
                    continue
                config = TrainConfig(
                    inputs=variant, aux=aux, seed=seed, epochs=args.epochs,
                    train_layers=args.train_layers, max_length=args.max_length,
                )  # fmt: skip
                run = _saved(run_cell(train, test, config), args.results)
                done.append(run)
                print(
                    f"{variant} aux={aux.spec()} seed={seed}: "
                    + " ".join(f"{m}={run[m]:.4f}" for m in METRICS)
                    + f" epochs={run['epochs_run']} {run['seconds']}s load={os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    wanted = {(str(v), a.spec()) for v in inputs for a in auxes}
    floors = {r["inputs"]: r for r in done if r["aux"] == FLOOR and InputSet(r["inputs"]) in inputs}
    print_table([r for r in done if (r["inputs"], r["aux"]) in wanted and r.get("seed") in seeds], floors)
    print(f"\nwall time {time.perf_counter() - started:.0f}s, load {os.getloadavg()}")


if __name__ == "__main__":
    main()
