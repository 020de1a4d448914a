"""Free TCP ports for the test and bench harnesses (stdlib only).

A port the kernel picks (bind to 0) comes from the ephemeral range, which any
outgoing connection may take before the process it is meant for binds it (a CI
run once failed so: an upstream got EADDRINUSE). These come from below it.

A port is free when it is checked, not when its server binds it: `bench/run`
starts every case before any has bound. So one process never gets the same port
twice (a full run once gave two cases the same one).
"""
import random
import socket

# Every port this process has handed out.
_given = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 by default)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago, below the ephemeral range."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        if port in _given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _given.add(port)
    return port


if __name__ == "__main__":
    print(free_port())
