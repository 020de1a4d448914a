# The streaming case: a generator of 100 small values (bench/run, "streaming").
def handle(req):
    for i in range(100):
        yield {"i": i, "text": "hello"}
