"""The echo after 1 ms of waiting (bench/run's ember-python-1ms case): a handler that
holds its slot, so that throughput is bounded by MAX_CONCURRENCY x 1000 req/s."""
import time


def handle(req):
    time.sleep(0.001)
    return req
