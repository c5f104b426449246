//! Events as the seed's AMQP messages: BaseMessage JSON, routing keys, priorities.

use chrono::SecondsFormat;
use perfect21_domain::secrets::SecretBox;
use perfect21_events::catalog::Severity;
use perfect21_events::{Event, RecordedEvent};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// The topic exchange every event is published to.
pub const EXCHANGE: &str = "perfect21.events";

/// What the relay needs to know of a user that the event does not carry.
#[derive(Debug, Clone, Default)]
pub struct Contact {
    pub email: Option<String>,
    pub phone_number: Option<String>,
}

/// One message ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub routing_key: String,
    pub message_type: String,
    pub priority: u8,
    /// The event id.
    pub message_id: String,
    /// Unix seconds.
    pub timestamp: u64,
    pub user_id: Option<String>,
    pub correlation_id: Option<String>,
    pub source_service: String,
    /// BaseMessage JSON.
    pub body: Vec<u8>,
}

/// The seed's message type and routing key of an event type; others follow the same scheme
/// (`<category>.events.<name>`, e.g. `session.events.revoked`).
pub fn route(event_type: &str) -> (String, String) {
    let seed = match event_type {
        "user.registered" => Some(("user.registered", "user.events.registered")),
        "user.login_succeeded" | "user.login_failed" => Some(("user.login", "user.events.login")),
        "user.logged_out" => Some(("user.logout", "user.events.logout")),
        "user.password_changed" => Some(("user.password_changed", "user.events.password_changed")),
        "user.mfa_enabled" => Some(("user.mfa_enabled", "user.events.mfa_enabled")),
        "permission.role_assigned" => Some(("permission.role_assigned", "permission.events.role_assigned")),
        "permission.role_revoked" => Some(("permission.role_revoked", "permission.events.role_revoked")),
        "permission.granted" => Some(("permission.granted", "permission.events.granted")),
        "permission.revoked" => Some(("permission.revoked", "permission.events.revoked")),
        "security.suspicious_activity" => Some(("security.suspicious_activity", "security.events.suspicious")),
        "security.account_locked" => Some(("security.account_locked", "security.events.locked")),
        "security.alert" => Some(("security.alert", "security.events.alert")),
        _ => None,
    };
    match seed {
        Some((t, k)) => (t.to_string(), k.to_string()),
        None => {
            let (category, name) = event_type.split_once('.').unwrap_or((event_type, "event"));
            (event_type.to_string(), format!("{category}.events.{name}"))
        }
    }
}

/// The seed's priorities: failed login 5; alerts low 1, medium 3, high 7, critical 9.
pub fn priority(event: &Event) -> u8 {
    match event {
        Event::UserLoginFailed(_) => 5,
        Event::SecurityAlert(a) => match a.severity {
            Severity::Low => 1,
            Severity::Medium => 3,
            Severity::High => 7,
            Severity::Critical => 9,
        },
        _ => 0,
    }
}

fn pairs(details: &[(String, String)]) -> Value {
    Value::Object(details.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// The event's public view (hashes and secrets never leave the log).
fn scrubbed(event: &Event) -> Map<String, Value> {
    match event.public_view() {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The BaseMessage `data` of an event, with the field names of the seed's message classes.
pub fn data(recorded: &RecordedEvent, event: &Event, contact: &Contact, secrets: &SecretBox) -> Value {
    let ip = recorded.metadata.client_ip.clone();
    let ua = recorded.metadata.user_agent.clone();
    match event {
        Event::UserRegistered(e) => json!({
            "user_id": e.user_id, "email": e.email, "username": e.username,
            "first_name": e.first_name, "last_name": e.last_name, "locale": e.locale,
            // Derived again from the server key: the log never held it.
            "verification_token": secrets.verification_token(e.user_id, e.verification_expires_at),
            "verification_expires_at": e.verification_expires_at,
            "registration_ip": ip.unwrap_or_default(), "user_agent": ua.unwrap_or_default(),
        }),
        Event::UserLoginSucceeded(e) => json!({
            "user_id": e.user_id, "email": contact.email, "login_successful": true,
            "ip_address": ip.unwrap_or_default(), "user_agent": ua.unwrap_or_default(), "location": null,
            "mfa_used": e.mfa_used, "risk_score": e.risk_score, "failure_reason": null, "session_id": e.session_id,
        }),
        Event::UserLoginFailed(e) => json!({
            "user_id": e.user_id, "email": contact.email, "login_successful": false,
            "ip_address": ip.unwrap_or_default(), "user_agent": ua.unwrap_or_default(), "location": null,
            "mfa_used": false, "risk_score": e.risk_score, "failure_reason": e.reason, "failure_count": e.failure_count,
        }),
        Event::SecurityAlert(e) => json!({
            "user_id": e.user_id, "alert_type": e.alert_type, "severity": e.severity,
            "description": e.description, "details": pairs(&e.details),
            "ip_address": ip.unwrap_or_default(), "user_agent": ua.unwrap_or_default(),
            "recommended_actions": e.recommended_actions,
            "email": contact.email, "phone_number": contact.phone_number,
        }),
        Event::UserRegistrationAttempted(e) => json!({
            "user_id": e.user_id, "email": contact.email,
            "ip_address": ip.unwrap_or_default(), "user_agent": ua.unwrap_or_default(),
        }),
        Event::SuspiciousActivity(e) => json!({
            "user_id": e.user_id, "activity_type": e.activity_type, "risk_score": e.risk_score,
            "description": e.description, "details": pairs(&e.details),
            "ip_address": ip.unwrap_or_default(), "user_agent": ua.unwrap_or_default(), "email": contact.email,
        }),
        other => {
            let mut map = scrubbed(other);
            if let (Some(email), Some(_)) = (&contact.email, map.get("user_id")) {
                map.insert("email".into(), json!(email));
            }
            Value::Object(map)
        }
    }
}

/// The user an event is about (for the `user_id` field and header).
pub fn user_of(event: &Event) -> Option<Uuid> {
    perfect21_projections::audit::audited_user(event).or(match event {
        Event::SessionStarted(e) => Some(e.user_id),
        Event::SessionRefreshed(e) => Some(e.user_id),
        Event::SessionExpired(e) => Some(e.user_id),
        _ => None,
    })
}

/// The whole message of a recorded event. `event` is `None` when this build cannot decode it.
pub fn outgoing(recorded: &RecordedEvent, event: Option<&Event>, contact: &Contact, secrets: &SecretBox) -> Outgoing {
    let (message_type, routing_key) = route(&recorded.event_type);
    let user_id = event.and_then(user_of).map(|u| u.to_string());
    let correlation_id = recorded.metadata.correlation_id.map(|c| c.to_string());
    let source_service = recorded.metadata.source_service.clone().unwrap_or_else(|| "perfect21".into());
    let data = event.map(|e| data(recorded, e, contact, secrets)).unwrap_or_else(|| json!({}));
    let timestamp = recorded.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let body = serde_json::to_vec(&Body {
        correlation_id: correlation_id.as_deref(),
        data: &data,
        message_id: recorded.event_id,
        message_type: &message_type,
        metadata: BodyMetadata {
            actor: recorded.metadata.actor.as_deref(),
            decodable: event.is_some(),
            event_type: &recorded.event_type,
            position: recorded.position,
            schema_version: recorded.schema_version,
            stream_id: &recorded.stream_id,
            stream_version: recorded.stream_version,
            traceparent: recorded.metadata.traceparent.as_deref(),
        },
        source_service: &source_service,
        timestamp: &timestamp,
        user_id: user_id.as_deref(),
    })
    .expect("strings, numbers and JSON values serialize");
    Outgoing {
        routing_key,
        message_type,
        priority: event.map(priority).unwrap_or(0),
        message_id: recorded.event_id.to_string(),
        timestamp: recorded.recorded_at.timestamp().max(0) as u64,
        user_id,
        correlation_id,
        source_service,
        body,
    }
}

/// The BaseMessage envelope, serialized straight from the event (fields in the order of
/// their names, as a JSON object map would write them).
#[derive(serde::Serialize)]
struct Body<'a> {
    correlation_id: Option<&'a str>,
    data: &'a Value,
    message_id: Uuid,
    message_type: &'a str,
    metadata: BodyMetadata<'a>,
    source_service: &'a str,
    timestamp: &'a str,
    user_id: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct BodyMetadata<'a> {
    actor: Option<&'a str>,
    decodable: bool,
    event_type: &'a str,
    position: u64,
    schema_version: u16,
    stream_id: &'a str,
    stream_version: u64,
    traceparent: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use perfect21_events::catalog::*;
    use perfect21_events::Metadata;

    fn recorded(event: &Event) -> RecordedEvent {
        RecordedEvent {
            event_id: Uuid::now_v7(),
            stream_id: "user-x".into(),
            stream_version: 0,
            position: 7,
            event_type: event.event_type().into(),
            schema_version: event.schema_version(),
            recorded_at: chrono::Utc::now(),
            metadata: Metadata {
                client_ip: Some("192.0.2.9".into()),
                user_agent: Some("ua".into()),
                correlation_id: Some(Uuid::now_v7()),
                source_service: Some("auth".into()),
                ..Default::default()
            },
            payload: event.encode_payload().unwrap(),
        }
    }

    fn body(m: &Outgoing) -> Value {
        serde_json::from_slice(&m.body).unwrap()
    }

    #[test]
    fn seed_types_get_the_seed_routing_keys_and_others_the_same_scheme() {
        for (t, k) in [
            ("user.registered", "user.events.registered"),
            ("user.login_failed", "user.events.login"),
            ("user.login_succeeded", "user.events.login"),
            ("user.logged_out", "user.events.logout"),
            ("permission.role_assigned", "permission.events.role_assigned"),
            ("permission.granted", "permission.events.granted"),
            ("security.suspicious_activity", "security.events.suspicious"),
            ("security.account_locked", "security.events.locked"),
            ("security.alert", "security.events.alert"),
            ("session.revoked", "session.events.revoked"),
            ("user.email_verified", "user.events.email_verified"),
        ] {
            assert_eq!(route(t).1, k, "{t}");
        }
        assert_eq!(route("user.login_failed").0, "user.login");
    }

    #[test]
    fn messages_carry_the_seed_fields_priorities_and_no_secrets() {
        let secrets = SecretBox::random();
        let user_id = Uuid::now_v7();
        let contact = Contact { email: Some("ada@example.com".into()), phone_number: Some("+15555550100".into()) };
        let reg = Event::UserRegistered(UserRegistered {
            user_id,
            email: "ada@example.com".into(),
            username: "ada".into(),
            first_name: Some("Ada".into()),
            last_name: None,
            phone_number: None,
            locale: "en".into(),
            password_hash: "$argon2id$v=19$secret".into(),
            verification_token_hash: "deadbeef".into(),
            verification_expires_at: 1_900_000_000,
        });
        let r = recorded(&reg);
        let m = outgoing(&r, Some(&reg), &contact, &secrets);
        let b = body(&m);
        assert_eq!(
            (m.routing_key.as_str(), b["message_type"].as_str()),
            ("user.events.registered", Some("user.registered"))
        );
        assert_eq!(b["message_id"], r.event_id.to_string());
        assert_eq!(m.message_id, r.event_id.to_string());
        assert_eq!(b["data"]["verification_token"], secrets.verification_token(user_id, 1_900_000_000));
        assert_eq!(b["data"]["registration_ip"], "192.0.2.9");
        assert_eq!(b["user_id"], user_id.to_string());
        assert_eq!(b["source_service"], "auth");
        let text = String::from_utf8(m.body.clone()).unwrap();
        assert!(!text.contains("argon2") && !text.contains("deadbeef"), "{text}");

        let failed = Event::UserLoginFailed(UserLoginFailed {
            user_id,
            reason: "bad_password".into(),
            failure_count: 2,
            risk_score: 0.4,
        });
        let m = outgoing(&recorded(&failed), Some(&failed), &contact, &secrets);
        let b = body(&m);
        assert_eq!(m.priority, 5);
        assert_eq!(b["data"]["login_successful"], false);
        assert_eq!(b["data"]["failure_reason"], "bad_password");
        assert_eq!(b["data"]["email"], "ada@example.com");
        assert_eq!(b["data"]["ip_address"], "192.0.2.9");

        for (severity, p) in [(Severity::Low, 1), (Severity::Medium, 3), (Severity::High, 7), (Severity::Critical, 9)] {
            let alert = Event::SecurityAlert(SecurityAlert {
                user_id,
                alert_type: "account_locked".into(),
                severity,
                description: "d".into(),
                details: vec![("k".into(), "v".into())],
                recommended_actions: vec!["Update your password".into()],
            });
            let m = outgoing(&recorded(&alert), Some(&alert), &contact, &secrets);
            assert_eq!(m.priority, p);
            let b = body(&m);
            assert_eq!(b["data"]["phone_number"], "+15555550100");
            assert_eq!(b["data"]["details"]["k"], "v");
            assert_eq!(b["data"]["recommended_actions"][0], "Update your password");
        }

        let mfa = Event::UserMfaEnabled(UserMfaEnabled {
            user_id,
            method: "totp".into(),
            secret_ciphertext: vec![1, 2, 3],
            recovery_code_hashes: vec!["h".into()],
        });
        let b = body(&outgoing(&recorded(&mfa), Some(&mfa), &contact, &secrets));
        assert_eq!(b["data"]["method"], "totp");
        assert!(b["data"].get("secret_ciphertext").is_none() && b["data"].get("recovery_code_hashes").is_none());
    }
}
