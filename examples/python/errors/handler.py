import ember


def handle(request):
    """Fails with a code of its own choosing: {"code": "RATE_LIMITED", "error": "..."}."""
    if request.get("fail", True):
        raise ember.FunctionError("RATE_LIMITED", "too many requests for this tenant; retry in 10 s")
    return {"ok": True}
