//! Prometheus metrics with the seed's names. Counters are recorded where things
//! happen (the `metrics` facade: the domain crate records too); `/metrics`
//! renders them, after setting the gauges that are read off the system.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets of `perfect21_request_duration_seconds`: 0.5 ms … 10 s.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the recorder (once per process) and returns the handle that renders.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full("perfect21_request_duration_seconds".into()), BUCKETS)
                .expect("valid buckets")
                .install_recorder()
                .expect("one metrics recorder per process");
            describe();
            handle
        })
        .clone()
}

/// HELP texts (and units) of every metric.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "perfect21_requests_total",
        "Requests answered, by service, method, endpoint (route template or RPC) and status"
    );
    describe_histogram!("perfect21_request_duration_seconds", Unit::Seconds, "Time to answer a request");
    describe_gauge!("perfect21_active_connections", "Requests in flight and open WebSockets");
    describe_counter!("perfect21_auth_events_total", "Logins (by outcome), registrations and lockouts");
    describe_counter!("perfect21_token_operations_total", "Access and refresh token operations, by outcome");
    describe_counter!("perfect21_permission_checks_total", "Permission checks, allowed or denied");
    describe_counter!("perfect21_session_operations_total", "Sessions started and revoked");
    describe_gauge!("perfect21_log_position", "Position of the last event in the log");
    describe_gauge!("perfect21_projection_lag_events", "Events the read models are behind the log");
    describe_gauge!("perfect21_relay_lag_events", "Events the relay is behind the log");
    describe_gauge!("perfect21_chain_verified_position", "Last log position whose hash chain this server has verified");
    describe_gauge!("perfect21_chain_broken", "1 once the log's hash chain no longer verifies (the log was edited)");
    describe_counter!("perfect21_notifications_total", "Notifications by channel and outcome");
}

/// Every seed metric family with a zero series for each label value known in
/// advance, so that dashboards and alerts have something to bind to from start-up.
/// `endpoints` are (service, method, endpoint) of the routes and RPCs served.
pub fn zero_series<'a>(endpoints: impl IntoIterator<Item = (&'static str, &'a str, &'a str)>) {
    for (service, method, endpoint) in endpoints {
        let labels = [
            ("service", service.to_string()),
            ("method", method.to_string()),
            ("endpoint", endpoint.to_string()),
            ("status", if service == "grpc" { "0" } else { "200" }.to_string()),
        ];
        metrics::counter!("perfect21_requests_total", &labels).increment(0);
        // A histogram appears with its first sample; register the series so it is known.
        let _ = metrics::histogram!("perfect21_request_duration_seconds", &labels[..3]);
    }
    for service in ["rest", "grpc"] {
        for kind in ["http", "call", "websocket"] {
            metrics::gauge!("perfect21_active_connections", "service" => service, "kind" => kind).increment(0.0);
        }
    }
    for (event, outcomes) in [
        (
            "login",
            &["success", "bad_password", "unknown_user", "mfa_required", "account_locked", "email_not_verified"][..],
        ),
        ("register", &["success", "email_taken"][..]),
        ("account_locked", &["locked"][..]),
        ("client_credentials", &["success", "failure"][..]),
    ] {
        for outcome in outcomes {
            metrics::counter!("perfect21_auth_events_total", "event" => event, "outcome" => *outcome).increment(0);
        }
    }
    for (operation, outcome) in [
        ("issue", "issued"),
        ("validate", "valid"),
        ("validate", "invalid"),
        ("refresh", "rotated"),
        ("refresh", "reuse_detected"),
        ("revoke", "revoked"),
    ] {
        metrics::counter!("perfect21_token_operations_total", "operation" => operation, "outcome" => outcome)
            .increment(0);
    }
    for result in ["allowed", "denied"] {
        metrics::counter!("perfect21_permission_checks_total", "result" => result).increment(0);
    }
    for operation in ["start", "revoke"] {
        metrics::counter!("perfect21_session_operations_total", "operation" => operation).increment(0);
    }
}

/// One finished request, REST or gRPC. `endpoint` is a route template or an RPC name, never a raw path.
pub fn request(service: &'static str, method: &str, endpoint: &str, status: &str, started: Instant) {
    let labels = [
        ("service", service.to_string()),
        ("method", method.to_string()),
        ("endpoint", endpoint.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!("perfect21_requests_total", &labels).increment(1);
    metrics::histogram!("perfect21_request_duration_seconds", &labels[..3]).record(started.elapsed().as_secs_f64());
}

/// Requests (or WebSockets) open now, by kind.
pub struct Active(&'static str, &'static str);

impl Active {
    pub fn start(service: &'static str, kind: &'static str) -> Active {
        metrics::gauge!("perfect21_active_connections", "service" => service, "kind" => kind).increment(1.0);
        Active(service, kind)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        metrics::gauge!("perfect21_active_connections", "service" => self.0, "kind" => self.1).decrement(1.0);
    }
}

/// OTLP trace export (HTTP/protobuf), configured by the standard `OTEL_*` variables:
/// on when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set
/// (and `OTEL_SDK_DISABLED` is not `true`), off otherwise.
pub fn tracer_provider() -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    let configured = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    if !configured || std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v == "true") {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().build())
        .build();
    Ok(Some(provider))
}

static TRACES_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records that spans are exported (OTLP configured), so that per-message spans are worth making.
pub fn set_traces_on() {
    TRACES_ON.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether spans are exported.
pub fn traces_on() -> bool {
    TRACES_ON.load(std::sync::atomic::Ordering::Relaxed)
}

/// The trace context a W3C `traceparent` (and `tracestate`) carries.
pub fn extract(traceparent: Option<&str>, tracestate: Option<&str>) -> opentelemetry::Context {
    let mut carrier = std::collections::HashMap::new();
    if let Some(tp) = traceparent {
        carrier.insert("traceparent".to_string(), tp.to_string());
    }
    if let Some(ts) = tracestate {
        carrier.insert("tracestate".to_string(), ts.to_string());
    }
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier))
}

/// The `traceparent` of the current span, when traces are on.
pub fn current_traceparent() -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    // Without export no span has a trace context (and asking costs a map per request).
    if !traces_on() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove("traceparent")
}

/// The span of one fold of the read models: a child of the first folded event that
/// carries a trace, so a request's trace shows its events reaching the read models.
pub fn projection_update_span(batch: &[perfect21_events::RecordedEvent]) -> tracing::Span {
    let span = tracing::info_span!("projection.update", events = batch.len());
    set_parent(&span, batch.iter().find_map(|e| e.metadata.traceparent.as_deref()), None);
    span
}

/// Makes `span` a child of the trace `traceparent` names (no-op without one, or when
/// traces are not exported).
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if traceparent.is_some() && traces_on() {
        let _ = span.set_parent(extract(traceparent, tracestate));
    }
}
