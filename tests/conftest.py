"""What the Python tests under tests/ share."""

import os
import socket

import pytest

# Below the kernel's ephemeral range (32768-60999 here), as tests/src's free_port: a port taken
# with bind(0) from that range can become an outgoing connection's source port before the server
# binds it. Apart from the Rust harness's 20000-32000.
LOW, SPAN = 15_000, 5_000
_next = [os.getpid() * 97 % SPAN]


@pytest.fixture(scope="session")
def free_port():
    """A function giving a port nobody listens on now, not handed out before in this run."""
    def take(host="0.0.0.0"):
        for _ in range(SPAN):
            port = LOW + _next[0] % SPAN
            _next[0] += 1
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
        raise RuntimeError(f"no free port in {LOW}..{LOW + SPAN}")
    return take
