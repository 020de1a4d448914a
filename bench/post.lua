-- wrk script shared by every case: the same small JSON body and headers, and a
-- machine-readable summary (one line starting with "BENCHJSON ") at the end.
wrk.method = "POST"
wrk.body = '{"input": {"message": "hello"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Execution-Id"] = "bench"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
