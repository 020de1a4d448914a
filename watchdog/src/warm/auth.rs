//! `INVOKE_TOKEN` (section 4): 401 before any body is read.

use std::convert::Infallible;
use std::task::{Context, Poll};

use hyper::header::AUTHORIZATION;
use runtime_sdk::{BoxFuture, ErrorCode, InvokeError};
use tower::{Layer, Service};

use super::{HttpRequest, Outcome};

#[derive(Clone)]
pub struct AuthLayer {
    /// `Bearer <INVOKE_TOKEN>`, or `None` when no token is configured.
    expected: Option<Vec<u8>>,
}

impl AuthLayer {
    pub fn new(token: Option<&str>) -> Self {
        AuthLayer {
            expected: token.map(|t| format!("Bearer {t}").into_bytes()),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            expected: self.expected.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    expected: Option<Vec<u8>>,
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guessed token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<S> Service<HttpRequest> for Auth<S>
where
    S: Service<HttpRequest, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Outcome, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        if let Some(expected) = &self.expected {
            let given = req
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !same(given, expected) {
                let e = InvokeError::new(
                    ErrorCode::Unauthorized,
                    "missing or wrong bearer token: send Authorization: Bearer <INVOKE_TOKEN>",
                );
                return Box::pin(async move { Ok(Outcome::Refused(e)) });
            }
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_needs_every_byte() {
        assert!(same(b"Bearer abc", b"Bearer abc"));
        assert!(!same(b"Bearer abd", b"Bearer abc"));
        assert!(!same(b"Bearer ab", b"Bearer abc"));
    }
}
