"""A STDIO function: JSON payload on stdin, JSON result on stdout, logs on stderr."""

import json
import os
import sys

raw = sys.stdin.read()
payload = json.loads(raw) if raw.strip() else None

# Logs go to stderr: stdout is the result. The watchdog adds the execution id.
print(f"handler: received a {type(payload).__name__} payload", file=sys.stderr, flush=True)

print(json.dumps({"echo": payload, "pid": os.getpid()}))
