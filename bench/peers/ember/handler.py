# The echo handler every case runs: Ember PYTHON (HANDLER_MODULE=handler),
# the LOOP adapter and the STDIO script all load this file.
def handle(req):
    return req
