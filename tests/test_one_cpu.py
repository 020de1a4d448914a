"""Warm PYTHON on one CPU (`taskset -c 0`), black-box.

With one CPU the runtime keeps a second, held tokio worker, so that quick calls run on
the worker that read them (the lane) instead of being handed to a Python thread
(runtime-python/src/threads/spare.rs). A call in the lane that turns out slow blocks
that worker; these tests check that the promise holds all the same: its deadline
fires, others are served and health answers meanwhile, and SIGTERM drains.
"""

from __future__ import annotations

import signal
import threading
import time

from harness import BIN, Warm
from test_python import health, py_env, wait_health

ONE_CPU = ["taskset", "-c", "0", BIN]


def one_cpu(**kw):
    return Warm(py_env(function="dispatch", **kw), command=ONE_CPU)


def until_in_lane(w):
    """Calls a quick handler until one runs on a tokio worker (the lane). The lane
    opens once the moving average of recent calls is under its bound (250 µs); after
    a slow call, and in a debug build whose thread calls take close to that bound,
    that took from 45 to 260 calls here (eight runs), so the bound is generous."""
    names = []
    for _ in range(2000):
        r = w.post(json={"fn": "thread_name"})
        assert r.status_code == 200, r.text
        names.append(r.json())
        if names[-1].startswith("tokio-rt-worker"):
            return
    raise AssertionError(f"no call ran in the lane on one CPU: {names[-10:]}")


def test_quick_calls_run_on_the_worker_that_read_them():
    with one_cpu() as w:
        until_in_lane(w)


def test_a_sleeping_call_in_the_lane_times_out_while_others_are_served():
    with one_cpu(MAX_CONCURRENCY=2, TIMEOUT_MS=3000) as w:
        until_in_lane(w)
        out = {}

        def slow():
            t = time.monotonic()
            out["r"] = w.post(json={"fn": "sleep", "seconds": 2.0}, headers={"X-Timeout-Ms": "400"})
            out["took"] = time.monotonic() - t

        caller = threading.Thread(target=slow)
        caller.start()
        time.sleep(0.1)
        # The worker that took the call is blocked in time.sleep; the held one serves.
        assert health(w)[0] == 200
        r = w.post(json={"fn": "echo", "v": 1}, timeout=5)
        assert r.status_code == 200 and r.json() == {"fn": "echo", "v": 1}, r.text
        caller.join(10)
        assert out["r"].status_code == 504 and out["r"].json()["code"] == "TIMEOUT", out["r"].text
        assert out["took"] < 1.5, out["took"]


def test_a_busy_loop_in_the_lane_gets_timeout_error_and_the_lane_serves_again():
    with one_cpu(MAX_CONCURRENCY=1, TIMEOUT_MS=3000, KILL_GRACE_MS=200) as w:
        until_in_lane(w)
        t = time.monotonic()
        r = w.post(json={"fn": "spin"}, headers={"X-Timeout-Ms": "300"})
        assert r.status_code == 504, r.text
        assert time.monotonic() - t < 1.0
        until_in_lane(w)
        assert health(w)[0] == 200


def test_a_call_stuck_in_the_lane_for_good_leaves_the_threads_serving():
    with one_cpu(MAX_CONCURRENCY=1, TIMEOUT_MS=300, KILL_GRACE_MS=100) as w:
        until_in_lane(w)
        r = w.post(json={"fn": "stuck", "hang": True})
        assert r.status_code == 504, r.text
        stuck_id = r.headers["X-Execution-Id"]
        # The worker stays in time.sleep(3600); the held worker and the Python thread
        # serve everything else.
        for _ in range(20):
            r = w.post(json={"fn": "thread_name"}, timeout=5)
            assert r.status_code == 200, r.text
        assert r.json().startswith("ember-py"), r.json()
        body = wait_health(w, 503, 2)
        assert body["status"] == "unhealthy" and stuck_id in body["reason"], body


def test_sigterm_under_load_in_the_lane_answers_every_call_then_exits_0():
    with one_cpu(MAX_CONCURRENCY=4) as w:
        until_in_lane(w)
        stop = threading.Event()
        statuses = []

        def load():
            while not stop.is_set():
                try:
                    r = w.post(json={"fn": "echo"}, timeout=5)
                except Exception as e:
                    statuses.append(type(e).__name__)
                    return
                statuses.append(r.status_code)
                if r.status_code == 503:
                    return

        workers = [threading.Thread(target=load) for _ in range(4)]
        for t in workers:
            t.start()
        time.sleep(0.5)
        w.signal(signal.SIGTERM)
        assert w.wait(10) == 0
        stop.set()
        for t in workers:
            t.join(10)
        served = [s for s in statuses if s == 200]
        assert len(served) > 20, statuses[-10:]
        # Answered while serving (200), refused once draining (503), or not taken at
        # all once the listener closed; a call that was taken and never answered
        # would be a ReadTimeout.
        assert set(statuses) <= {200, 503, "ConnectionError"}, set(statuses)
