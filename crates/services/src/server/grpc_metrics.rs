//! Counts and times every gRPC call by method (`/package.Service/Method`) and grpc-status.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// A tower service that measures the service it wraps.
#[derive(Clone)]
pub struct Measured<S>(pub S);

impl<S, B, R> tower::Service<http::Request<B>> for Measured<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        // Only paths of our services and the standard ones become label values: few, whatever clients send.
        let path = req.uri().path();
        let known = ["/perfect21.", "/grpc.health.", "/grpc.reflection."].iter().any(|p| path.starts_with(p))
            && path.len() <= 100;
        let endpoint = if known { path.to_string() } else { "unknown".to_string() };
        let active = crate::telemetry::Active::start("grpc", "call");
        let span = tracing::info_span!("rpc", method = %endpoint);
        let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
        crate::telemetry::set_parent(&span, header("traceparent"), header("tracestate"));
        let future = {
            let _entered = span.enter();
            self.0.call(req)
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                let response = future.await;
                let status = match &response {
                    // A failed call answers trailers-only: grpc-status is in the headers. Otherwise 0 (OK).
                    Ok(r) => r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_string(),
                    Err(_) => "transport_error".to_string(),
                };
                crate::telemetry::request("grpc", "POST", &endpoint, &status, started);
                drop(active);
                response
            },
            span,
        ))
    }
}
