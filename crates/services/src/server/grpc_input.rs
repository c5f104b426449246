//! A request the server cannot take is the caller's fault, and its status says so:
//! INVALID_ARGUMENT for a message that is not valid protobuf, RESOURCE_EXHAUSTED for
//! one over the size limit — for every service, ours and the standard ones.
//!
//! tonic answers these itself, before any handler runs, in a trailers-only answer:
//! INTERNAL with prost's "failed to decode Protobuf message…", and OUT_OF_RANGE with
//! "Error, decoded message length too large…". This layer changes exactly those two
//! statuses and keeps the message. `tests/access.rs` sends malformed and oversized
//! messages to every method, so a tonic or prost that words them otherwise fails there.

use http::HeaderValue;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// (status tonic gives, how its message starts, the status the caller's input earns)
const REWRITES: [(&str, &str, &str); 2] =
    [("13", "failed to decode Protobuf message", "3"), ("11", "Error, decoded message length too large", "8")];

/// A tower service that gives refused input its status.
#[derive(Clone)]
pub struct InputStatus<S>(pub S);

impl<S, B, R> tower::Service<http::Request<B>> for InputStatus<S>
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
        let future = self.0.call(req);
        Box::pin(async move {
            let mut response = future.await?;
            let headers = response.headers_mut();
            let status = headers.get("grpc-status").and_then(|s| s.to_str().ok()).unwrap_or_default();
            // grpc-message is percent-encoded; these prefixes hold nothing it escapes but spaces.
            let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default();
            let message = message.replace("%20", " ");
            if let Some((_, _, earned)) = REWRITES.iter().find(|(s, m, _)| *s == status && message.starts_with(m)) {
                headers.insert("grpc-status", HeaderValue::from_static(earned));
            }
            Ok(response)
        })
    }
}
