//! `INVOKE_TOKEN` (section 4): 401 before any body is read.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{ready, Either, Ready};
use hyper::header::AUTHORIZATION;
use runtime_sdk::{ErrorCode, InvokeError};
use tower::{Layer, Service};

use super::{Call, Outcome};

#[derive(Clone)]
pub struct AuthLayer {
    /// `INVOKE_TOKEN`, or `None` when no token is configured.
    expected: Option<Arc<[u8]>>,
}

impl AuthLayer {
    pub fn new(token: Option<&str>) -> Self {
        AuthLayer {
            expected: token.map(|t| Arc::from(t.as_bytes())),
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
    expected: Option<Arc<[u8]>>,
}

/// Whether `Authorization` holds `Bearer <token>`. The scheme is matched in any
/// case (RFC 9110, 11.1) and may be followed by several spaces (11.4).
fn authorized(header: &[u8], token: &[u8]) -> bool {
    let (scheme, credentials) = match header.iter().position(|&b| b == b' ') {
        Some(i) => (&header[..i], &header[i..]),
        None => (header, &[][..]),
    };
    let start = credentials
        .iter()
        .position(|&b| b != b' ')
        .unwrap_or(credentials.len());
    // Both checks run whatever the first found, so a wrong scheme takes the
    // same path as a wrong token.
    let scheme_ok = scheme.eq_ignore_ascii_case(b"bearer");
    let token_ok = same(&credentials[start..], token);
    scheme_ok & token_ok
}

/// Compares without stopping at the first difference or at a length
/// mismatch: the work depends only on the length of what the client sent, so
/// the time taken tells neither how much of a guess was right nor how long
/// the token is.
fn same(given: &[u8], expected: &[u8]) -> bool {
    if expected.is_empty() {
        return given.is_empty();
    }
    let mut diff = given.len() ^ expected.len();
    for (i, &g) in given.iter().enumerate() {
        diff |= usize::from(g ^ expected[i % expected.len()]);
    }
    std::hint::black_box(diff) == 0
}

impl<S> Service<Call> for Auth<S>
where
    S: Service<Call, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    // The inner future as it is: no box of our own on the way in.
    type Future = Either<Ready<Result<Outcome, Infallible>>, S::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        if let Some(expected) = &self.expected {
            let given = (call.req.headers())
                .get(AUTHORIZATION)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !authorized(given, expected) {
                let e = InvokeError::new(
                    ErrorCode::Unauthorized,
                    "missing or wrong bearer token: send Authorization: Bearer <INVOKE_TOKEN>",
                );
                return Either::Left(ready(Ok(Outcome::Refused(e))));
            }
        }
        Either::Right(self.inner.call(call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_needs_every_byte() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abd", b"abc"));
        assert!(!same(b"ab", b"abc"));
        assert!(!same(b"abcabc", b"abc"));
        assert!(!same(b"", b"abc"));
    }

    #[test]
    fn scheme_is_matched_in_any_case() {
        for h in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR   s3cret",
        ] {
            assert!(authorized(h.as_bytes(), b"s3cret"), "{h}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for h in [
            "",
            "Bearer",
            "Bearer ",
            "Bearers3cret",
            "Basic s3cret",
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer S3CRET",
            "Bearer s3cret s3cret",
            "s3cret",
        ] {
            assert!(!authorized(h.as_bytes(), b"s3cret"), "{h:?}");
        }
    }
}
