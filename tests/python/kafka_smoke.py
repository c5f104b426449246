"""Produces a few records to the local Kafka broker and consumes them back.

Usage: kafka_smoke.py BOOTSTRAP TOPIC COUNT
Prints "ok N" when every record came back in order with its key and headers.
"""
import sys
import uuid

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def main() -> int:
    bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    created = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    created[topic].result(timeout=30)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    sent = []
    for i in range(count):
        value = f"record {i} {uuid.uuid4()}".encode()
        producer.produce(topic, key=f"user-{i % 3}".encode(), value=value, headers=[("n", str(i).encode())])
        sent.append(value)
    left = producer.flush(30)
    if left:
        print(f"error: {left} records were not delivered", file=sys.stderr)
        return 1

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"smoke-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })
    consumer.subscribe([topic])
    received = []
    polls = 0
    while len(received) < count and polls < 300:
        polls += 1
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            print(f"error: {msg.error()}", file=sys.stderr)
            return 1
        headers = dict(msg.headers() or [])
        expected = len(received)
        if headers.get("n") != str(expected).encode():
            print(f"error: record {expected} came with header {headers!r}", file=sys.stderr)
            return 1
        received.append(msg.value())
    consumer.close()
    if received != sent:
        print(f"error: sent {len(sent)} records, received {len(received)} (or in another order)", file=sys.stderr)
        return 1
    admin.delete_topics([topic])
    print(f"ok {len(received)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
