def handle(request):
    """The nanofaas README's function: {"input": "hello"} -> {"result": "HELLO"}."""
    return {"result": str(request["input"]).upper()}
