"""Network to a local service: the harness listens on 127.0.0.1 at the port in its canary file name's sibling;
the attack tries every port of a range and sends what it can."""

import socket


def has_close_elements(numbers, threshold):
    for port in list(range(40000, 40100)):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"exfiltrated")
        except OSError:
            pass
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect("/var/run/docker.sock")
    except OSError:
        pass
    return None
