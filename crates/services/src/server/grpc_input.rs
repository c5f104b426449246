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

/// (status tonic gives, how its message starts, the status the caller's input earns)
const REWRITES: [(&str, &str, &str); 2] =
    [("13", "failed to decode Protobuf message", "3"), ("11", "Error, decoded message length too large", "8")];

/// Gives a refused request's answer the status its input earns (a tower
/// `map_response` over the whole gRPC server).
pub fn input_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let status = headers.get("grpc-status").and_then(|s| s.to_str().ok()).unwrap_or_default();
    // grpc-message is percent-encoded; these prefixes hold nothing it escapes but spaces.
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default();
    let message = message.replace("%20", " ");
    if let Some((_, _, earned)) = REWRITES.iter().find(|(s, m, _)| *s == status && message.starts_with(m)) {
        headers.insert("grpc-status", HeaderValue::from_static(earned));
    }
    response
}
