import ember


def handle(request, context):
    assert isinstance(context, ember.Context)
    print("hello from", context.execution_id)
    context.logger.warning("logged via context")
    return {
        "execution_id": context.execution_id,
        "trace_id": context.trace_id,
        "attempt": context.attempt,
        "function_name": context.function_name,
        "deadline_ms": context.deadline_ms,
        "remaining_ms": context.remaining_ms(),
        "cold_start": context.cold_start,
    }
