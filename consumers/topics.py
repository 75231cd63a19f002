"""Create the topics a service needs when they are missing, so a fresh cluster works without manual setup."""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    for_code,
)

from consumers.io import KafkaClientError
from consumers.kafka_config import KafkaConfig

log = structlog.get_logger(__name__)

_NOT_ALLOWED = {TopicAuthorizationFailedError.errno, ClusterAuthorizationFailedError.errno}


async def ensure_topics(config: KafkaConfig, topics: Iterable[str]) -> list[str]:
    """Create whichever of ``topics`` do not exist (``config.topic_partitions`` partitions each) and return
    their names. Another process creating them at the same moment is fine; so is a cluster that forbids this
    client to create topics (an operator made them, or the broker auto-creates), which is logged."""
    wanted = list(dict.fromkeys(topics))
    admin = AIOKafkaAdminClient(**config.client_kwargs())
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return []
        new = [NewTopic(name, config.topic_partitions, config.replication_factor) for name in missing]
        response = await admin.create_topics(new)
    except KafkaError as error:
        raise KafkaClientError(f"cannot create topics {wanted} on {config.bootstrap}: {error}") from error
    finally:
        await admin.close()
    created = []
    for topic, code, *rest in response.topic_errors:
        if code == 0:
            created.append(topic)
        elif code == TopicAlreadyExistsError.errno:
            continue
        elif code in _NOT_ALLOWED:
            log.warning("topic_create_not_allowed", topic=topic, detail="create it yourself or grant CREATE")
        else:
            detail = rest[0] if rest and rest[0] else for_code(code).description
            raise KafkaClientError(f"cannot create topic {topic}: {for_code(code).__name__}: {detail}")
    if created:
        log.info("topics_created", topics=created, partitions=config.topic_partitions)
    return created
