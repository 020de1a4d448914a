"""Ember STDIO runner's per-invocation process: payload on stdin, JSON on stdout.

Runs the same handler as the PYTHON and LOOP cases (peers/ember/handler.py).
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ember"))
from handler import handle  # noqa: E402

sys.stdout.write(json.dumps(handle(json.load(sys.stdin))))
