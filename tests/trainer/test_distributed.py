"""Where the process group's sockets go: the interface that holds the node's address (the job itself is in
test_sockets.py)."""

from __future__ import annotations

import socket

import psutil

from trainer.distributed import interface_of


def test_interface_of_finds_the_interface_holding_an_address():
    ips = {(name, a.address.split("%")[0])  # IPv6 link-local addresses carry a %zone
           for name, addrs in psutil.net_if_addrs().items() for a in addrs
           if a.family in (socket.AF_INET, socket.AF_INET6)}
    assert any(ip == "127.0.0.1" for _, ip in ips)
    for name, ip in ips:
        assert (interface_of(ip), ip) in ips
    assert interface_of("198.51.100.77") is None  # TEST-NET-2: documentation only, held by no interface
