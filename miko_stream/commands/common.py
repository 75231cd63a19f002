"""Pieces every command shares: settings with CLI overrides, one-line fatal errors, shared options."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from miko_stream.settings import KafkaSettings, Settings

err_console = Console(stderr=True, soft_wrap=True)

LlmOption = Annotated[
    str | None,
    typer.Option("--llm", help="fake[:ms] | smollm2 | hf:<id or path> | openai:<model>@<url>  [env MIKO_LLM]"),
]
VisionOption = Annotated[
    str | None,
    typer.Option("--vision", help="none | ocr | hf:<id or path> | openai:<model>@<url>  [env MIKO_VISION]"),
]
BootstrapOption = Annotated[
    str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers  [env MIKO_KAFKA_BOOTSTRAP]")
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line on stderr and exit: the CLI's way of refusing unusable arguments."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the CLI flags that were given taking precedence. Kafka flags go
    by their KafkaConfig names (``bootstrap``, ``posts_topic``, ``group_id`` ...; ``kafka_bootstrap`` too)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    kafka_fields = KafkaSettings.model_fields
    kafka = {
        key.removeprefix("kafka_"): given.pop(key) for key in list(given) if key.removeprefix("kafka_") in kafka_fields
    }
    try:
        return Settings(**given, kafka_settings=KafkaSettings(**kafka))
    except ValidationError as error:
        first = error.errors()[0]
        fail(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}")
