"""The parent's own pieces, without forking: its listening socket and exit descriptions."""
from __future__ import annotations

import os
import signal
import socket

from service.cluster.supervisor import ClusterOptions, Supervisor, describe_exit
from support import free_port


def test_the_shared_socket_is_inheritable_and_hands_connections_tcp_nodelay(tmp_path):
    options = ClusterOptions(workers=2, host="127.0.0.1", port=free_port(), run_root=tmp_path)
    listener = Supervisor(options, worker_main=lambda *_: None)._listen()
    try:
        assert listener.get_inheritable()
        with socket.create_connection(("127.0.0.1", options.port)):
            accepted, _ = listener.accept()
            with accepted:  # Linux: an accepted socket inherits the listener's TCP_NODELAY
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        listener.close()


def test_exits_are_described_as_an_operator_reads_them():
    assert describe_exit(signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(3 << 8) == "exited with status 3"
    assert os.WIFEXITED(3 << 8)
