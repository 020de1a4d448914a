"""The machine's own bound for bench/run's 1 ms case: N threads that each call
time.sleep(0.001) in a loop for D seconds, with nothing else. Prints the calls a
second of all threads together as one JSON line.

    python3 sleep_loop.py THREADS SECONDS
"""
import json
import sys
import threading
import time


def main():
    threads, seconds = int(sys.argv[1]), float(sys.argv[2])
    counts = [0] * threads

    def loop(i):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.001)
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"threads": threads, "seconds": seconds,
                      "calls_per_s": round(sum(counts) / seconds, 1)}))


if __name__ == "__main__":
    main()
