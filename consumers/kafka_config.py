"""Kafka connection settings (plain, SASL and TLS) turned into aiokafka client arguments."""

from __future__ import annotations

import ssl
from typing import Any, Literal

from pydantic import BaseModel, SecretStr


class KafkaConfig(BaseModel):
    """How to reach the cluster and which topics to use (made by ``miko_stream.settings`` from ``MIKO_*``)."""

    bootstrap: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # OAUTHBEARER is not offered: it needs a token provider, which this service does not have.
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "miko-stream"
    posts_topic: str = "miko.posts"
    intentions_topic: str = "miko.intentions"
    dlq_topic: str = "miko.posts.dlq"
    group_id: str = "miko-stream"
    indexer_group_id: str = "miko-indexer"
    topic_partitions: int = 3
    replication_factor: int = 1
    idempotence: Literal["auto", "on", "off"] = "auto"  # auto: on where the broker supports it (not Tansu)
    # How often clients refresh cluster metadata: partitions added to a topic are picked up this soon
    # (a group rebalances onto them, the indexer assigns them). Kafka's default is 5 minutes.
    metadata_max_age_ms: int = 30_000

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments shared by every aiokafka client (producer, consumer, admin)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
            "metadata_max_age_ms": self.metadata_max_age_ms,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            kwargs["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            kwargs["sasl_plain_username"] = self.sasl_username
            password = self.sasl_password.get_secret_value() if self.sasl_password else None
            kwargs["sasl_plain_password"] = password
        return kwargs
