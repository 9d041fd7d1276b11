"""The workers of a data-parallel training linked to each other directly, over TCP, so that each step's
shares of the gradient pass from worker to worker without waiting on the driver (spadc/cluster_training.py).
The standard library only: a worker needs neither Ray nor the compiler.

Invariants:
- A mesh: one connection between every two workers. `gather(mine)` on every worker returns every
  worker's value, in rank order: the same list on each; `exchange` sends each peer a value of its
  own.
- A peer lost (its process killed: its connections reset or closed; or silent for PEER_TIMEOUT
  seconds) raises `PeerLost` in the workers waiting for it; a worker whose own step failed closes
  its connections first, so its peers learn it at once instead of after the timeout.
- Only the mesh's workers link: a caller shows the driver's secret for the mesh, else it is
  closed unread (shares are unpickled).
- A message is a pickle with its large arrays out of band, sent and received without a copy of
  theirs. A worker sends and receives at once (one thread, a selector), so two workers sending
  each other more than their sockets buffer never wait on each other.
- A closed mesh stays closed: a later `gather` raises `PeerLost` (never a gather of one).
"""

from __future__ import annotations

import hmac
import pickle
import selectors
import socket
import struct
import time

PEER_TIMEOUT = 120.0  # seconds a worker waits for a peer's share before it counts it lost
_LENGTH = struct.Struct("<q")


class PeerLost(RuntimeError):
    """A peer of a data-parallel training stopped answering: its worker is lost."""


class Mesh:
    """A worker's ends of the mesh. `toward`: the driver's host, whose route names the interface
    peers reach this worker by (the driver sends them its `address`)."""

    def __init__(self, toward: str):
        self.rank, self.workers = 0, 1
        self.listener = socket.create_server(("", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # (no packet is sent)
            probe.connect((toward, 9))
            host = probe.getsockname()[0]
        self.address = (host, self.listener.getsockname()[1])
        self.peers: dict[int, socket.socket] = {}
        self.sent = 0  # bytes sent to peers so far
        self.broken = False  # closed: a step's failure, a peer lost or the run's end

    def connect(self, rank: int, addresses: list[tuple[str, int]], token: bytes, timeout: float = PEER_TIMEOUT):
        """Link to every other worker (`addresses`: each one's, by rank), this one being worker
        `rank`: it calls those of lower rank and answers those of higher rank (a call completes
        while the callee is still calling others: its listener queues it). A caller shows
        `token` (the driver's secret for this mesh, sent through Ray): a connection that does not
        is closed unread, for a share is unpickled. Every link is made within `timeout` seconds
        (a peer that could not call this one fails, so this one must not wait for it long)."""
        self.rank, self.workers = rank, len(addresses)
        deadline = time.monotonic() + timeout
        try:
            for k in range(self.rank):
                peer = socket.create_connection(tuple(addresses[k]), timeout=timeout)
                peer.sendall(token + _LENGTH.pack(self.rank))
                self.peers[k] = peer
            while len(self.peers) < len(addresses) - 1:
                self.listener.settimeout(max(deadline - time.monotonic(), 0.001))
                peer, _ = self.listener.accept()
                peer.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    shown = bytes(_exactly(peer, len(token) + _LENGTH.size))
                except (OSError, PeerLost):
                    shown = b""
                caller = _LENGTH.unpack(shown[len(token):])[0] if len(shown) == len(token) + _LENGTH.size else -1
                if not hmac.compare_digest(shown[:len(token)], token) or not self.rank < caller < len(addresses) \
                        or caller in self.peers:
                    peer.close()  # (not one of this mesh's workers)
                    continue
                self.peers[caller] = peer
        except OSError as error:
            self.close()
            raise PeerLost(f"worker {self.rank} could not link to its peers: {error}") from None
        for peer in self.peers.values():
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer.setblocking(False)  # (`gather` waits on them all at once, with its own timeout)

    def gather(self, mine) -> list:
        """Every worker's value (this one's `mine`), in rank order."""
        received = self.exchange({k: mine for k in self.peers})
        return [mine if k == self.rank else received[k] for k in range(self.workers)]

    def exchange(self, values: dict) -> dict:
        """Each peer's value for this worker, by rank, each peer sent its own of `values` (by rank;
        one value for several peers is pickled once)."""
        if self.broken:
            raise PeerLost(f"worker {self.rank}'s links were closed")
        messages = {id(value): _message(value) for value in values.values()}
        outgoing = {k: list(messages[id(values[k])]) for k in self.peers}
        sizes = {k: sum(view.nbytes for view in views) for k, views in outgoing.items()}
        inboxes = {k: _Inbox() for k in self.peers}
        selector = selectors.DefaultSelector()
        for k, peer in self.peers.items():
            selector.register(peer, selectors.EVENT_READ | selectors.EVENT_WRITE, k)
        try:
            # One thread sends and receives at once: neither side of a link waits on the other's reading.
            while any(outgoing.values()) or not all(inbox.done for inbox in inboxes.values()):
                events = selector.select(PEER_TIMEOUT)
                if not events:
                    raise PeerLost(f"silent for {PEER_TIMEOUT:.0f} s")
                for key, mask in events:
                    k, peer = key.data, key.fileobj
                    if mask & selectors.EVENT_WRITE:
                        views = outgoing[k]
                        views[0] = views[0][peer.send(views[0]):]
                        if not views[0]:
                            views.pop(0)
                    if mask & selectors.EVENT_READ:
                        inboxes[k].receive(peer)
                    # (a link done with is not read again: its peer may already send its next step's share)
                    wanted = ((0 if inboxes[k].done else selectors.EVENT_READ)
                              | (selectors.EVENT_WRITE if outgoing[k] else 0))
                    if not wanted:
                        selector.unregister(peer)
                    elif wanted != key.events:
                        selector.modify(peer, wanted, k)
        except (OSError, PeerLost) as error:
            self.close()
            raise PeerLost(f"worker {self.rank} lost a peer: {error}") from None
        finally:
            selector.close()
        self.sent += sum(sizes.values())
        return {k: inbox.value() for k, inbox in inboxes.items()}

    def close(self):
        self.broken = True
        for peer in [*self.peers.values(), self.listener]:
            try:
                peer.close()
            except OSError:
                pass
        self.peers = {}


def _message(value) -> list[memoryview]:
    """`value` as a message: the length of its head, its head (its pickle, out of band of its large
    arrays, and their lengths), then their bytes themselves (no copy)."""
    buffers = []
    meta = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    raw = [buffer.raw() for buffer in buffers]
    head = pickle.dumps((meta, [view.nbytes for view in raw]), protocol=5)
    return [memoryview(_LENGTH.pack(len(head)) + head), *raw]


class _Inbox:
    """One message arriving on a link (`_message`): each part is received into a buffer of its own
    size, which `then` reads."""

    def __init__(self):
        self.head, self.buffers = None, []
        self._expect(_LENGTH.size, self._head_length)

    def _expect(self, size: int, then):
        self.target, self.got, self.then = bytearray(size), 0, then
        if size == 0:
            then()

    def _head_length(self):
        self._expect(_LENGTH.unpack(self.target)[0], self._head)

    def _head(self):
        self.head = pickle.loads(self.target)
        self._next_buffer()

    def _next_buffer(self):
        if len(self.buffers) == len(self.head[1]):
            self.target = None
        else:
            self._expect(self.head[1][len(self.buffers)], self._buffer)

    def _buffer(self):
        self.buffers.append(self.target)
        self._next_buffer()

    @property
    def done(self) -> bool:
        return self.target is None

    def receive(self, peer: socket.socket):
        count = peer.recv_into(memoryview(self.target)[self.got:])
        if count == 0:
            raise PeerLost("its connection closed")
        self.got += count
        if self.got == len(self.target):
            self.then()

    def value(self):
        """The value sent (its arrays in the buffers received: writable, the receiver's own)."""
        return pickle.loads(self.head[0], buffers=self.buffers)


def _exactly(peer: socket.socket, size: int) -> memoryview:
    buffer = memoryview(bytearray(size))
    got = 0
    while got < size:
        count = peer.recv_into(buffer[got:])
        if count == 0:
            raise PeerLost("its connection closed")
        got += count
    return buffer
