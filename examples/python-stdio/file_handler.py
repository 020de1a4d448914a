"""A FILE function: reads the payload from INPUT_FILE, writes the result to OUTPUT_FILE."""

import json
import os
import sys

input_file = os.environ["INPUT_FILE"]
output_file = os.environ["OUTPUT_FILE"]

with open(input_file, encoding="utf-8") as f:
    payload = json.load(f)

print(f"file_handler: read {input_file}", file=sys.stderr, flush=True)

with open(output_file, "w", encoding="utf-8") as f:
    json.dump(
        {"echo": payload, "input_file": input_file, "output_file": output_file, "pid": os.getpid()},
        f,
    )
