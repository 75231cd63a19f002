"""Shared fixtures: a real Kafka-protocol broker (Tansu) on a free loopback port, offline model settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests of the stream, API and CLI machinery run fake models; the default learned verifier would make every
# processor they start load torch and MiniLM first. tests/test_verifier.py covers the learned verifier, and
# the default choice of it, end to end.
os.environ.setdefault("MIKO_VERIFIER", "heuristic")

from helpers.kafka import BROKER_START_S

from index.service import IntentionIndex
from miko_stream.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One embedded broker for the whole session; tests isolate themselves with unique topic/group names."""
    log = Path(tmp_path_factory.mktemp("broker")) / "tansu.log"
    with EmbeddedBroker(log_path=log, start_timeout=BROKER_START_S) as broker:
        yield broker


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of the test's own, for tests that stop or restart it."""
    with EmbeddedBroker(log_path=tmp_path / "tansu.log", start_timeout=BROKER_START_S) as broker:
        yield broker


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama and tokenizer, saved once per test session."""
    from helpers.models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def sample_index(tmp_path: Path) -> Iterator[IntentionIndex]:
    """A writable index in ``tmp_path`` holding :func:`helpers.index.sample_docs` (five posts)."""
    from helpers.index import apply, open_index, sample_docs

    opened = open_index(tmp_path)
    apply(opened, sample_docs())
    yield opened
    opened.close()


@pytest.fixture
def fresh_local_engines() -> Iterator[None]:
    """Stops the shared local-model engines after the test, so the next one loads its own."""
    yield
    from graph.models.registry import shutdown_local_models

    shutdown_local_models()
