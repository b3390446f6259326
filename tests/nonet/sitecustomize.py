"""Loaded by every Python process whose PYTHONPATH holds this folder: forbids network connections.

Each attempted TCP/UDP connection (IPv4 or IPv6) is appended to the file named by $NONET_LOG
and fails, so a test can prove that a pipeline run opened none. With NONET_ALLOW_LOOPBACK=1,
connections to 127.0.0.1 / ::1 (servers a test started itself) are let through.
"""

import os
import socket

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _refuse(sock, address):
    if os.environ.get("NONET_ALLOW_LOOPBACK") == "1" and address[0] in _LOOPBACK:
        return
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with open(os.environ.get("NONET_LOG", os.devnull), "a") as f:
            f.write(f"{os.getpid()} {address!r}\n")
        raise OSError(f"network access blocked by tests/nonet: {address!r}")


def _connect(self, address):
    _refuse(self, address)
    return _real_connect(self, address)


def _connect_ex(self, address):
    _refuse(self, address)
    return _real_connect_ex(self, address)


socket.socket.connect = _connect
socket.socket.connect_ex = _connect_ex
