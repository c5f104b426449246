//! No secret leaves the process: the public view of every readable event type
//! (each golden fixture, current and legacy versions) carries no field that
//! looks like a secret, and no secret value anywhere inside it.

use perfect21_events::catalog::{readable_versions, Event};
use serde_json::Value;
use std::path::PathBuf;

/// Field names that hold secrets or their hashes.
fn looks_secret(field: &str) -> bool {
    ["hash", "secret", "ciphertext", "password", "recovery_code", "private"].iter().any(|w| field.contains(w))
}

fn fixture(event_type: &str, version: u16) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/{event_type}.v{version}.bin"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{} has no fixture ({e})", path.display()))
}

/// Every string inside `v`, keys included.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                strings(v, out);
            }
        }
        Value::Number(n) => out.push(n.to_string()),
        _ => {}
    }
}

#[test]
fn the_view_of_every_event_type_carries_no_secret() {
    let mut checked = 0;
    for (event_type, version) in readable_versions() {
        let event = Event::decode(event_type, version, &fixture(event_type, version)).unwrap();
        let raw = event.payload_json();
        let view = event.public_view();
        let Value::Object(raw_fields) = &raw else { panic!("{event_type} v{version}: payload is not an object") };
        let Value::Object(view_fields) = &view else { panic!("{event_type} v{version}: view is not an object") };

        for (field, value) in raw_fields {
            if looks_secret(field) {
                assert!(
                    event.secret_fields().contains(&field.as_str()),
                    "{event_type} v{version}: field '{field}' looks secret but is not in Event::secret_fields"
                );
            }
            if event.secret_fields().contains(&field.as_str()) {
                assert!(!view_fields.contains_key(field), "{event_type} v{version}: the view carries '{field}'");
                // The secret's value must not reappear under another name.
                let mut secret_values = Vec::new();
                strings(value, &mut secret_values);
                let mut visible = Vec::new();
                strings(&view, &mut visible);
                for s in secret_values.iter().filter(|s| s.len() >= 8) {
                    assert!(
                        !visible.iter().any(|v| v.contains(s.as_str())),
                        "{event_type} v{version}: the view shows the value of '{field}'"
                    );
                }
            }
        }
        for field in view_fields.keys() {
            assert!(!looks_secret(field), "{event_type} v{version}: the view has a field named '{field}'");
        }
        // Every secret field this type declares exists in its payload (no stale names).
        for field in event.secret_fields() {
            assert!(raw_fields.contains_key(*field), "{event_type}: secret field '{field}' is not in its payload");
        }
        checked += 1;
    }
    assert_eq!(checked, readable_versions().count());
    assert!(checked >= Event::CURRENT_VERSIONS.len());
}

#[test]
fn the_view_keeps_every_field_that_is_not_secret() {
    for (event_type, version) in readable_versions() {
        let event = Event::decode(event_type, version, &fixture(event_type, version)).unwrap();
        let Value::Object(raw) = event.payload_json() else { unreachable!() };
        let Value::Object(view) = event.public_view() else { unreachable!() };
        assert_eq!(
            raw.len() - event.secret_fields().len(),
            view.len(),
            "{event_type} v{version}: the view dropped a public field"
        );
    }
}
