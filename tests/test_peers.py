"""The workers' mesh of a data-parallel fit (spadrt/peers.py), without Ray: meshes in threads of
this process gather every worker's value in rank order, messages larger than the sockets buffer
(both ways at once) included; a peer gone raises PeerLost in the others at once, and a closed mesh
never gathers alone."""

import socket
import threading
import time

import numpy as np
import pytest

from spadrt.peers import Mesh, PeerLost

WORKERS = 3
LARGE = 500_000  # float64s a worker sends each round: 4 MB, beyond what one send of a socket takes
HEAD = 1024  # bytes at most of a message's head (its pickle beside its arrays)
PROMPT = 10.0
TOKEN = b"the mesh's secret"  # seconds within which a lost peer is noticed (PEER_TIMEOUT is far longer)


def _meshes(count: int) -> list[Mesh]:
    meshes = [Mesh("127.0.0.1") for _ in range(count)]
    addresses = [mesh.address for mesh in meshes]
    _each(meshes, lambda k, mesh: mesh.connect(k, addresses, TOKEN))
    return meshes


def _each(meshes, work) -> list:
    """work(rank, mesh) on a thread per mesh: each one's result (or the exception it raised)."""
    results = [None] * len(meshes)

    def run(k):
        try:
            results[k] = work(k, meshes[k])
        except Exception as error:  # (returned, for the test to look at)
            results[k] = error

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(meshes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_every_worker_gathers_every_value_in_rank_order():
    meshes = _meshes(WORKERS)
    for round_ in range(3):
        values = [{"rank": k, "round": round_, "sums": {(k, k + 1): np.full(LARGE, float(k + round_))}}
                  for k in range(WORKERS)]
        gathered = _each(meshes, lambda k, mesh: mesh.gather(values[k]))
        assert not any(isinstance(got, Exception) for got in gathered), gathered
        for got in gathered:
            assert [value["rank"] for value in got] == list(range(WORKERS))
            assert all(np.array_equal(value["sums"][(k, k + 1)], values[k]["sums"][(k, k + 1)])
                       for k, value in enumerate(got))
    received = gathered[0][1]["sums"][(1, 2)]
    received += 1  # (an array received is the receiver's own: writable)
    arrays = 3 * (WORKERS - 1) * LARGE * 8  # (each message's head, its pickle beside the array, is small)
    assert 0 < meshes[0].sent - arrays < 3 * (WORKERS - 1) * HEAD
    for mesh in meshes:
        mesh.close()


def test_one_worker_alone_gathers_its_own_value():
    mesh = Mesh("127.0.0.1")
    mesh.connect(0, [mesh.address], TOKEN)
    assert mesh.gather("mine") == ["mine"]


def test_a_caller_without_the_token_is_turned_away():
    meshes = [Mesh("127.0.0.1") for _ in range(2)]
    addresses = [mesh.address for mesh in meshes]
    stranger = socket.create_connection(addresses[0])
    stranger.sendall(b"x" * len(TOKEN) + (1).to_bytes(8, "little"))  # (rank 1's claim, the wrong secret)
    results = _each(meshes, lambda k, mesh: mesh.connect(k, addresses, TOKEN))
    assert results == [None, None]
    assert stranger.recv(1) == b""  # closed unread
    assert set(meshes[0].peers) == {1}
    assert [value for value in _each(meshes, lambda k, mesh: mesh.gather(k))] == [[0, 1], [0, 1]]
    for mesh in meshes:
        mesh.close()


def test_a_peer_gone_is_lost_at_once_and_a_closed_mesh_never_gathers_alone():
    meshes = _meshes(WORKERS)
    start = time.monotonic()

    def gather_or_leave(k, mesh):
        if k == 2:
            mesh.close()  # (as a worker whose step failed: its peers must not wait PEER_TIMEOUT)
            return None
        return mesh.gather(np.zeros(LARGE))

    results = _each(meshes, gather_or_leave)
    assert time.monotonic() - start < PROMPT
    assert all(isinstance(result, PeerLost) for result in results[:2]), results
    with pytest.raises(PeerLost, match="closed"):
        meshes[0].gather("again")
