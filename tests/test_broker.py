"""The embedded broker speaks Kafka: aiokafka can produce to and consume from it."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from miko_stream.broker import EmbeddedBroker


async def test_produce_and_consume_round_trip(kafka_broker: EmbeddedBroker) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_broker.bootstrap, group_id=f"g-{topic}", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
        values = [record.value for records in batch.values() for record in records]
    finally:
        await consumer.stop()
    assert values == [b"hello"]
