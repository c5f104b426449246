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
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full("perfect21_request_duration_seconds".into()), BUCKETS)
                .expect("valid buckets")
                .install_recorder()
                .expect("one metrics recorder per process")
        })
        .clone()
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
