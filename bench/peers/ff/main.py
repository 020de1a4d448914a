# Google functions-framework: the same echo, in its Flask request signature.
def handle(request):
    return request.get_json()
