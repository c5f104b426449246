"""A consumer of the Kafka event stream written with another client (confluent-kafka).

Usage: kafka_relay_consumer.py BOOTSTRAP TOPIC

Reads TOPIC from its start to its end and validates every message: the body parses
as the seed's BaseMessage (for the seed's types) and its data as the seed's message
class where there is one; the record's headers repeat the envelope (message_type,
source_service, message_id, user_id); the record's key is the user. Redeliveries
(at least once) are allowed; per key, the first deliveries keep log order. Prints
{"positions": [...distinct, sorted], "types": [...], "messages": n} as JSON.
"""

import json
import sys

from confluent_kafka import Consumer, KafkaError, TopicPartition

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from seed_consumer import DATA_CLASSES, SEED_TYPES, BaseMessage  # noqa: E402


def main() -> None:
    bootstrap, topic = sys.argv[1], sys.argv[2]
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "p21t-python", "enable.partition.eof": True,
         "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    at_end, messages, positions, types = set(), 0, set(), set()
    last_per_key, seen_ids = {}, set()
    while len(at_end) < len(partitions):
        m = consumer.poll(10)
        assert m is not None, "no end of the topic within 10 s"
        if m.error():
            assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
            at_end.add(m.partition())
            continue
        messages += 1
        body = json.loads(m.value())
        headers = {k: v.decode() for k, v in (m.headers() or [])}
        assert headers["message_type"] == body["message_type"], headers
        assert headers["message_id"] == body["message_id"], headers
        assert headers["source_service"] == body["source_service"], headers
        assert headers["content_type"] == "application/json", headers
        assert headers.get("user_id") == body.get("user_id"), (headers, body)
        assert m.key().decode() == (body.get("user_id") or "perfect21"), "keyed by the user"
        if body["message_type"] in SEED_TYPES:
            parsed = BaseMessage(**body)
            data_class = DATA_CLASSES.get(parsed.message_type)
            if data_class is not None:
                data_class(**parsed.data)
            types.add(parsed.message_type.value)
        position = body["metadata"]["position"]
        if body["message_id"] not in seen_ids:
            seen_ids.add(body["message_id"])
            key = m.key()
            assert last_per_key.get(key, 0) < position, f"key {key} out of log order at {position}"
            last_per_key[key] = position
        positions.add(position)
    consumer.close()
    print(json.dumps({"positions": sorted(positions), "types": sorted(types), "messages": messages}), flush=True)


main()
