//! `OUTPUT_SCHEMA` (section 11): the output is checked after the run; the
//! tree the schema needs is built only when one is set.

use std::convert::Infallible;

use futures_util::future::Either;
use runtime_sdk::{BoxFuture, Invocation, InvokeResult};
use tower::{Layer, Service};

use crate::validate::Validator;

#[derive(Clone)]
pub struct OutputCheckLayer(pub Validator);

impl<S> Layer<S> for OutputCheckLayer {
    type Service = OutputCheck<S>;
    fn layer(&self, inner: S) -> OutputCheck<S> {
        OutputCheck {
            inner,
            validator: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct OutputCheck<S> {
    inner: S,
    validator: Validator,
}

impl<S> Service<Invocation> for OutputCheck<S>
where
    S: Service<Invocation, Response = InvokeResult, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = InvokeResult;
    type Error = Infallible;
    // Without a schema the run's own future, as it is: no box of its own.
    type Future = Either<S::Future, BoxFuture<'static, Result<InvokeResult, Infallible>>>;

    super::always_ready!();

    fn call(&mut self, inv: Invocation) -> Self::Future {
        let fut = self.inner.call(inv);
        if !self.validator.has_output() {
            return Either::Left(fut);
        }
        let validator = self.validator.clone();
        Either::Right(Box::pin(async move {
            let result = fut.await?;
            Ok(result.and_then(|o| validator.check_output(&o).map(|()| o)))
        }))
    }
}
