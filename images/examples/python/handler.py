"""Echo: returns the request's input (the whole payload if it has no "input")."""


def handle(request):
    if isinstance(request, dict) and "input" in request:
        return request["input"]
    return request
