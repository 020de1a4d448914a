//! The runner as the stack's innermost service: calls the `Handler`, then
//! checks `OUTPUT_SCHEMA`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use runtime_sdk::{BoxFuture, Handler, Invocation, InvokeResult};
use tower::Service;

use crate::validate::Validator;

#[derive(Clone)]
pub struct Run {
    pub handler: Arc<dyn Handler>,
    pub validator: Validator,
}

impl Service<Invocation> for Run {
    type Response = InvokeResult;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<InvokeResult, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inv: Invocation) -> Self::Future {
        let handler = self.handler.clone();
        let validator = self.validator.clone();
        Box::pin(async move {
            let output = handler.invoke(inv).await;
            Ok(output.and_then(|o| validator.check_output(&o).map(|()| o)))
        })
    }
}
