"""Local TCP ports: a free one, and whether something listens on one."""

from __future__ import annotations

import socket

from sophiavl_verl.integration.cpu_backend.transformers_serve import free_port

__all__ = ["free_port", "port_open"]


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` (within a second)."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0
