"""The unit layer's guard: a test here that tried the network would fail, not silently reach a server."""

from __future__ import annotations

import socket

import pytest
from pytest_socket import SocketBlockedError


def test_a_unit_test_cannot_open_a_socket() -> None:
    with pytest.raises(SocketBlockedError), pytest.warns(UserWarning, match="socket"):  # pytest-socket also warns
        socket.create_connection(("127.0.0.1", 9))
