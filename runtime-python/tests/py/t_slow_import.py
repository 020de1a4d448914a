"""Imported by t_errors.slow_import: its body runs past the caller's deadline."""
import time

_end = time.monotonic() + 0.3
while time.monotonic() < _end:
    pass
DONE = True
