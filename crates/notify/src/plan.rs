//! What one AMQP message asks the notification service to send: the decoder of the
//! bytes the broker delivers, pure (no I/O, the clock passed in), so that any message
//! — well-formed, truncated, hostile — is either a plan or a named refusal.

use anyhow::Context;
use serde_json::{json, Value};

/// One delivery to make; `step` names it for the once-only record of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Email { to: String, template: String, context: Value, subject: Option<String> },
    Sms { to: String, text: SmsText },
    Push { data: Value },
}

/// An SMS's text: given, or a template rendered with the message's data.
#[derive(Debug, Clone, PartialEq)]
pub enum SmsText {
    Given(String),
    Template { name: String, context: Value },
}

impl Action {
    /// The step's name in the once-only record (a redelivery skips steps already done).
    pub fn step(&self) -> &'static str {
        match self {
            Action::Email { .. } => "email",
            Action::Sms { .. } => "sms",
            Action::Push { .. } => "push",
        }
    }
}

/// The message's id, required of every message (consumers deduplicate on it).
pub fn message_id(msg: &Value) -> anyhow::Result<&str> {
    msg["message_id"].as_str().context("the message has no message_id")
}

/// When the message asks to be delivered, if it says (`data.send_at`, RFC 3339), in
/// milliseconds since the epoch.
pub fn send_at(msg: &Value) -> Option<i64> {
    let at = msg["data"]["send_at"].as_str()?;
    chrono::DateTime::parse_from_rfc3339(at).ok().map(|t| t.timestamp_millis())
}

/// The deliveries `msg` asks for, in order; `now` in seconds since the epoch. Messages of
/// types this service does not handle ask for nothing.
pub fn plan(msg: &Value, public_url: &str, now: i64) -> anyhow::Result<Vec<Action>> {
    let data = &msg["data"];
    let mut ctx = data.clone();
    if let Some(m) = ctx.as_object_mut() {
        m.insert("timestamp".into(), msg["timestamp"].clone());
    }
    let email = |to: &str, template: &str, context: Value| Action::Email {
        to: to.to_string(),
        template: template.to_string(),
        context,
        subject: None,
    };
    let actions = match msg["message_type"].as_str().unwrap_or_default() {
        "user.registered" => {
            let to = data["email"].as_str().context("user.registered without email")?;
            let token = data["verification_token"].as_str().context("user.registered without verification_token")?;
            let left = data["verification_expires_at"].as_i64().unwrap_or(0).saturating_sub(now);
            // `data` is an object here (it has an email), so `ctx` is one too.
            let mut ctx = ctx;
            ctx["verification_link"] =
                json!(format!("{}/verify-email?token={token}", public_url.trim_end_matches('/')));
            ctx["expires_in"] = json!(in_words(left));
            vec![email(to, "welcome", ctx)]
        }
        "user.registration_attempted" => match data["email"].as_str() {
            Some(to) => vec![email(to, "registration_attempt", ctx)],
            None => vec![],
        },
        "user.login" => {
            let risky = data["risk_score"].as_f64().unwrap_or(0.0) > 0.7;
            match data["email"].as_str() {
                Some(to) if data["login_successful"] == false || risky => vec![email(to, "login_notice", ctx)],
                _ => vec![],
            }
        }
        "security.alert" => {
            let mut actions = Vec::new();
            if let Some(to) = data["email"].as_str() {
                actions.push(email(to, "security_alert", ctx.clone()));
            }
            let severe = matches!(data["severity"].as_str(), Some("high" | "critical"));
            if let (true, Some(phone)) = (severe, data["phone_number"].as_str()) {
                let text = SmsText::Template { name: "security_alert_sms".into(), context: ctx };
                actions.push(Action::Sms { to: phone.to_string(), text });
            }
            actions
        }
        "notification.email.send" => {
            let to = data["recipient"].as_str().context("notification.email.send without recipient")?;
            let template = data["template_name"].as_str().context("notification.email.send without template_name")?;
            vec![Action::Email {
                to: to.to_string(),
                template: template.to_string(),
                context: data["template_data"].clone(),
                subject: data["subject"].as_str().map(String::from),
            }]
        }
        "notification.sms.send" => {
            let to = data["phone_number"].as_str().context("notification.sms.send without phone_number")?;
            let text = match (data["message"].as_str(), data["template_name"].as_str()) {
                (Some(m), _) => SmsText::Given(m.to_string()),
                (None, Some(t)) => SmsText::Template { name: t.to_string(), context: data["template_data"].clone() },
                _ => anyhow::bail!("notification.sms.send needs message or template_name"),
            };
            vec![Action::Sms { to: to.to_string(), text }]
        }
        "notification.push.send" => vec![Action::Push { data: data.clone() }],
        // Other events are not this service's business.
        _ => vec![],
    };
    Ok(actions)
}

/// A duration in words for people ("24 hours", "30 minutes", "2 days"), rounded up.
pub fn in_words(seconds: i64) -> String {
    let plural = |n: i64, unit: &str| if n == 1 { format!("1 {unit}") } else { format!("{n} {unit}s") };
    let seconds = seconds.max(0);
    let up = |unit: i64| seconds / unit + i64::from(seconds % unit != 0);
    if seconds <= 60 * 60 {
        plural(up(60).max(1), "minute")
    } else if seconds <= 48 * 3600 {
        plural(up(3600), "hour")
    } else {
        plural(up(86_400), "day")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_read_as_words() {
        assert_eq!(in_words(24 * 3600 - 3), "24 hours");
        assert_eq!(in_words(30 * 60), "30 minutes");
        assert_eq!(in_words(1), "1 minute");
        assert_eq!(in_words(3 * 86_400), "3 days");
        assert_eq!(in_words(-5), "1 minute");
        assert_eq!(in_words(i64::MAX), format!("{} days", i64::MAX / 86_400 + 1));
    }

    #[test]
    fn a_registration_plans_its_welcome_email() {
        let msg = json!({"message_id": "m1", "message_type": "user.registered", "timestamp": "t",
            "data": {"email": "ada@example.com", "verification_token": "tok", "verification_expires_at": 1000 + 86_400}});
        let actions = plan(&msg, "https://id.example.com/", 1000).unwrap();
        let [Action::Email { to, template, context, .. }] = actions.as_slice() else { panic!("{actions:?}") };
        assert_eq!((to.as_str(), template.as_str()), ("ada@example.com", "welcome"));
        assert_eq!(context["verification_link"], "https://id.example.com/verify-email?token=tok");
        assert_eq!(context["expires_in"], "24 hours");
    }

    const TYPES: &[&str] = &[
        "user.registered",
        "user.registration_attempted",
        "user.login",
        "security.alert",
        "notification.email.send",
        "notification.sms.send",
        "notification.push.send",
        "user.logout",
    ];

    /// Any JSON value, nested a little.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("email".to_string()),
                        Just("phone_number".to_string()),
                        Just("verification_token".to_string()),
                        Just("verification_expires_at".to_string()),
                        Just("severity".to_string()),
                        Just("recipient".to_string()),
                        Just("template_name".to_string()),
                        Just("message".to_string()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the broker delivers, planning gives a plan or a refusal, never a panic.
        #[test]
        fn any_message_is_planned_or_refused(
            kind in prop::sample::select(TYPES), data in any_json(), timestamp in any_json(), now in any::<i64>(),
        ) {
            let msg = json!({"message_id": "m", "message_type": kind, "timestamp": timestamp, "data": data});
            let _ = plan(&msg, "http://localhost:8080", now);
            let _ = send_at(&msg);
        }

        /// Well-shaped messages of every type with extreme numbers, any strings and any clock.
        #[test]
        fn well_shaped_messages_with_any_values_are_planned(
            kind in prop::sample::select(TYPES), expires in any::<i64>(), now in any::<i64>(),
            risk in any::<f64>(), text in "\\PC{0,40}", severity in prop::sample::select(&["low", "high", "critical"][..]),
        ) {
            let data = json!({
                "email": text, "verification_token": text, "verification_expires_at": expires,
                "risk_score": risk, "login_successful": false, "severity": severity, "phone_number": text,
                "recipient": text, "template_name": text, "message": text, "send_at": text,
            });
            let msg = json!({"message_id": "m", "message_type": kind, "timestamp": now, "data": data});
            let actions = plan(&msg, &text, now).unwrap();
            prop_assert_eq!(actions.is_empty(), kind == "user.logout");
        }

        /// Bytes off the wire: not JSON is refused before planning; JSON is planned or refused.
        #[test]
        fn any_bytes_are_parsed_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(msg) = serde_json::from_slice::<Value>(&bytes) {
                let _ = message_id(&msg);
                let _ = plan(&msg, "", 0);
            }
        }
    }
}
