"""A consumer written the way the seed writes them (aio-pika + pydantic).

Usage: seed_consumer.py AMQP_URL QUEUE COUNT

Declares QUEUE like the seed's consumers (durable, 24 h TTL, max length 10000,
prefetch 10), binds it to user.events.*, security.events.* and
permission.events.*, prints "ready", then validates COUNT messages: every
message of the seed's fifteen types must parse as the seed's BaseMessage, and
its data as the seed's message class where there is one. Prints the message
types it validated, as JSON, and exits 0; any mismatch raises.
"""

import asyncio
import json
import sys
from datetime import datetime
from enum import Enum
from typing import Any, Dict, List, Optional

import aio_pika
from pydantic import BaseModel


class MessageType(str, Enum):
    USER_REGISTERED = "user.registered"
    USER_LOGIN = "user.login"
    USER_LOGOUT = "user.logout"
    PASSWORD_CHANGED = "user.password_changed"
    MFA_ENABLED = "user.mfa_enabled"
    ROLE_ASSIGNED = "permission.role_assigned"
    ROLE_REVOKED = "permission.role_revoked"
    PERMISSION_GRANTED = "permission.granted"
    PERMISSION_REVOKED = "permission.revoked"
    SUSPICIOUS_ACTIVITY = "security.suspicious_activity"
    ACCOUNT_LOCKED = "security.account_locked"
    SECURITY_ALERT = "security.alert"
    EMAIL_SEND = "notification.email.send"
    SMS_SEND = "notification.sms.send"
    PUSH_SEND = "notification.push.send"


class BaseMessage(BaseModel):
    message_id: str
    message_type: MessageType
    timestamp: datetime
    source_service: str
    correlation_id: Optional[str] = None
    user_id: Optional[str] = None
    data: Dict[str, Any]
    metadata: Optional[Dict[str, Any]] = None


class UserRegisteredMessage(BaseModel):
    user_id: str
    email: str
    first_name: Optional[str]
    last_name: Optional[str]
    verification_token: str
    registration_ip: str
    user_agent: str


class UserLoginMessage(BaseModel):
    user_id: str
    email: str
    login_successful: bool
    ip_address: str
    user_agent: str
    location: Optional[Dict[str, str]]
    mfa_used: bool
    risk_score: Optional[float]
    failure_reason: Optional[str]


class SecurityAlertMessage(BaseModel):
    user_id: str
    alert_type: str
    severity: str
    description: str
    details: Dict[str, Any]
    ip_address: str
    user_agent: str
    recommended_actions: List[str]


DATA_CLASSES = {
    MessageType.USER_REGISTERED: UserRegisteredMessage,
    MessageType.USER_LOGIN: UserLoginMessage,
    MessageType.SECURITY_ALERT: SecurityAlertMessage,
}
SEED_TYPES = {m.value for m in MessageType}


async def main() -> None:
    url, queue_name, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=10)
    exchange = await channel.declare_exchange("perfect21.events", aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(
        queue_name, durable=True, arguments={"x-message-ttl": 86400000, "x-max-length": 10000}
    )
    for key in ("user.events.*", "security.events.*", "permission.events.*"):
        await queue.bind(exchange, routing_key=key)
    print("ready", flush=True)
    validated, seen = set(), 0
    async with queue.iterator() as messages:
        async for message in messages:
            async with message.process():
                body = json.loads(message.body.decode())
                if body["message_type"] in SEED_TYPES:
                    parsed = BaseMessage(**body)
                    assert message.message_id == parsed.message_id, "AMQP message_id is the envelope's"
                    assert message.headers["message_type"] == parsed.message_type.value
                    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
                    data_class = DATA_CLASSES.get(parsed.message_type)
                    if data_class is not None:
                        data_class(**parsed.data)
                    validated.add(parsed.message_type.value)
                seen += 1
                if seen >= want:
                    break
    print(json.dumps(sorted(validated)), flush=True)
    await queue.delete(if_unused=False, if_empty=False)
    await connection.close()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 60))
