"""Application settings from the environment (``MIKO_*``) and CLI flags, in one explicit object."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from consumers.kafka_config import KafkaConfig
from graph.distill.artifact import default_llm
from graph.intake import InputLimits


def default_verifier() -> str:
    """``learned`` when the packaged verifier artifact is there, else the LLM judge."""
    from graph.verifier.artifact import default_artifact_present

    return "learned" if default_artifact_present() else "llm"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "miko-stream"


class KafkaSettings(KafkaConfig, BaseSettings):
    """:class:`KafkaConfig` read from the environment: each field from ``MIKO_KAFKA_<FIELD>`` (e.g.
    ``MIKO_KAFKA_BOOTSTRAP``, ``MIKO_KAFKA_SASL_PASSWORD``) or ``MIKO_<FIELD>`` (the names the topics and
    groups have always had: ``MIKO_POSTS_TOPIC``, ``MIKO_GROUP_ID``, ``MIKO_INDEXER_GROUP_ID``). The fields
    are defined once, in KafkaConfig."""

    model_config = SettingsConfigDict(env_prefix="MIKO_KAFKA_", env_file=".env", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        short_env = EnvSettingsSource(settings_cls, env_prefix="MIKO_")
        short_dotenv = DotEnvSettingsSource(settings_cls, env_prefix="MIKO_", env_file=".env")
        return init_settings, env_settings, short_env, dotenv_settings, short_dotenv, file_secret_settings


class Settings(BaseSettings):
    """Every knob of the service. Environment variables are the field names upper-cased with ``MIKO_``."""

    model_config = SettingsConfigDict(env_prefix="MIKO_", env_file=".env", extra="ignore")

    # models
    llm: str = Field(
        default_factory=default_llm,
        description="fake[:ms] | smollm2-miko (default when shipped) | smollm2 | distilled:<dir> | hf:<id or path> | "
        "openai:<model>@<base_url>",
    )
    vision: str = Field("ocr", description="none | ocr | hf:<id or path> | openai:<model>@<base_url>")
    verifier: Literal["learned", "hybrid", "llm", "heuristic", "none"] = Field(
        default_factory=default_verifier,
        description="learned (default when its artifact is installed) | hybrid | llm | heuristic | none",
    )
    verifier_path: Path | None = Field(
        None, description="Learned-verifier artifact folder (default: the packaged one)."
    )
    verify_threshold: float | None = Field(
        None,
        description="Accept intentions scoring at least this; default: the model's calibrated threshold.",
    )
    max_rounds: int = Field(2, description="Regeneration rounds for rejected relations after the first.")
    cache_dir: Path = Field(default_factory=default_cache_dir)
    openai_api_key: SecretStr | None = None
    max_batch_size: int = Field(
        64, description="Local models: rows decoded together (64 decodes ~1.5x the tokens/s of 16 on 2 cores)."
    )
    max_wait_ms: float = 15.0
    max_new_tokens: int = 24
    local_runtime: Literal["auto", "native", "transformers"] = Field(
        "auto", description="Local models: native Llama runtime (fast start), transformers, or auto (native if able)."
    )
    local_dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Local models' weights: bf16, fp32, or auto (bf16 where the CPU has AVX-512 BF16/AMX)."
    )
    post_deadline_s: float = 600.0
    classifiers: str = Field(
        "", description="Students that score every event: name:FOLDER[,name:FOLDER], e.g. sarcasm:/models/sarcasm."
    )
    graph_batch_size: int | None = Field(
        None,
        ge=1,
        description="Posts per graph run (micro-batch); default 64 for fake and OpenAI-compatible models, 8 for "
        "local ones (a batch moves through the nodes together).",
    )
    llm_request_timeout_s: float = Field(120.0, description="OpenAI-compatible servers: one request's time limit.")

    # input limits
    max_text_chars: int = 100_000
    max_record_bytes: int = 8 * 1024 * 1024
    max_image_bytes: int = 5 * 1024 * 1024
    image_fetch_timeout_s: float = 5.0
    image_fetch_private: bool = Field(False, description="Allow image URLs on private/loopback addresses.")
    image_dir: Path | None = Field(None, description="Folder that `path` images must be inside (none: paths refused).")

    # kafka: the connection and topics are KafkaSettings (below); these are the processor's group timing
    kafka_settings: KafkaSettings = Field(default_factory=lambda: KafkaSettings())
    max_in_flight: int = Field(64, description="Posts processed concurrently by one processor.")
    commit_interval_s: float = Field(1.0, description="How often completed input offsets are committed.")
    drain_timeout_s: float = Field(30.0, description="On SIGTERM, how long in-flight posts may still run.")
    max_poll_interval_ms: int = 300_000
    kafka_session_timeout_ms: int = Field(10_000, description="How soon the group notices a dead processor.")

    # index and API
    index_dir: Path = Path("miko-index")
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Embedding model precision: auto = bf16 where the CPU has bf16 matrix instructions."
    )
    api_key: SecretStr | None = None

    def kafka(self) -> KafkaConfig:
        return self.kafka_settings

    def with_kafka(self, **changes: Any) -> Settings:
        """A copy with some Kafka fields changed (e.g. the demo's broker address)."""
        return self.model_copy(update={"kafka_settings": self.kafka_settings.model_copy(update=changes)})

    def limits(self) -> InputLimits:
        return InputLimits(max_record_bytes=self.max_record_bytes, max_text_chars=self.max_text_chars)
