"""Application settings from the environment (``MIKO_*``) and CLI flags, in one explicit object."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumers.kafka_config import KafkaConfig
from graph.intake import InputLimits


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "miko-stream"


class Settings(BaseSettings):
    """Every knob of the service. Environment variables are the field names upper-cased with ``MIKO_``."""

    model_config = SettingsConfigDict(env_prefix="MIKO_", env_file=".env", extra="ignore")

    # models
    llm: str = Field("smollm2", description="fake[:ms] | smollm2 | hf:<id or path> | openai:<model>@<base_url>")
    vision: str = Field("ocr", description="none | ocr | hf:<id or path> | openai:<model>@<base_url>")
    verifier: Literal["llm", "heuristic", "none"] = "llm"
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
    graph_batch_size: int | None = Field(
        None,
        ge=1,
        description="Posts per graph run (micro-batch); default 64 for fake and OpenAI-compatible models, 8 for "
        "local ones (a batch moves through the nodes together).",
    )

    # input limits
    max_text_chars: int = 100_000
    max_record_bytes: int = 8 * 1024 * 1024
    max_image_bytes: int = 5 * 1024 * 1024
    image_fetch_timeout_s: float = 5.0
    image_fetch_private: bool = Field(False, description="Allow image URLs on private/loopback addresses.")
    image_dir: Path | None = Field(None, description="Folder that `path` images must be inside (none: paths refused).")

    # kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    posts_topic: str = "miko.posts"
    intentions_topic: str = "miko.intentions"
    dlq_topic: str = "miko.posts.dlq"
    group_id: str = "miko-stream"
    max_in_flight: int = Field(64, description="Posts processed concurrently by one processor.")
    kafka_idempotence: Literal["auto", "on", "off"] = "auto"
    kafka_topic_partitions: int = Field(3, description="Partitions of topics the service creates.")
    kafka_replication_factor: int = 1
    commit_interval_s: float = Field(1.0, description="How often completed input offsets are committed.")
    drain_timeout_s: float = Field(30.0, description="On SIGTERM, how long in-flight posts may still run.")
    max_poll_interval_ms: int = 300_000
    kafka_session_timeout_ms: int = Field(10_000, description="How soon the group notices a dead processor.")

    # index and API
    index_dir: Path = Path("miko-index")
    embedding_model: str = "all-MiniLM-L6-v2"
    api_key: SecretStr | None = None

    def kafka(self) -> KafkaConfig:
        return KafkaConfig(
            bootstrap=self.kafka_bootstrap,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_cafile=self.kafka_ssl_cafile,
            ssl_certfile=self.kafka_ssl_certfile,
            ssl_keyfile=self.kafka_ssl_keyfile,
            posts_topic=self.posts_topic,
            intentions_topic=self.intentions_topic,
            dlq_topic=self.dlq_topic,
            group_id=self.group_id,
            idempotence=self.kafka_idempotence,
            topic_partitions=self.kafka_topic_partitions,
            replication_factor=self.kafka_replication_factor,
        )

    def limits(self) -> InputLimits:
        return InputLimits(max_record_bytes=self.max_record_bytes, max_text_chars=self.max_text_chars)
