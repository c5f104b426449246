//! Applies the access table ([`super::access::GRPC`]) to every gRPC call before
//! it reaches a service: anonymous callers get UNAUTHENTICATED, callers without
//! the permission PERMISSION_DENIED naming it, methods not in the table
//! UNIMPLEMENTED. An admitted caller travels to the handler as a request
//! extension ([`super::access::Caller`]).

use super::access::{admit, bearer_token, grpc_rule, Refusal};
use super::app::App;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A tower service that admits calls to the service it wraps.
#[derive(Clone)]
pub struct Guarded<S> {
    pub inner: S,
    pub app: App,
}

impl<S, B, R> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The ready service handles this call; a clone takes its place for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let app = self.app.clone();
        Box::pin(async move {
            let Some(rule) = grpc_rule(req.uri().path()) else {
                return Ok(tonic::Status::unimplemented(format!("no method {}", req.uri().path())).into_http());
            };
            let header = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            match admit(&app, rule, bearer_token(header)).await {
                Ok(Some(caller)) => {
                    req.extensions_mut().insert(caller);
                }
                Ok(None) => {}
                Err(Refusal::Unauthenticated(m)) => return Ok(tonic::Status::unauthenticated(m).into_http()),
                Err(Refusal::Denied(m)) => return Ok(tonic::Status::permission_denied(m).into_http()),
            }
            inner.call(req).await
        })
    }
}
