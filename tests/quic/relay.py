"""A lossy, reordering UDP relay for QUIC tests (real sockets, in the test's loop)."""

from __future__ import annotations

import asyncio
import random
from typing import Any


class _Upstream(asyncio.DatagramProtocol):
    """One relay socket toward the server, per client address (as a NAT would)."""

    def __init__(self, relay: LossyRelay, client: Any) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        front = self.relay.front
        if front is not None:
            self.relay.forward(data, lambda d: front.sendto(d, self.client))


class LossyRelay(asyncio.DatagramProtocol):
    """Forwards datagrams both ways, dropping ``loss`` of them and delaying
    ``reorder`` of them by up to ``delay`` seconds (so later ones overtake)."""

    def __init__(
        self,
        target: tuple[str, int],
        loss: float = 0.05,
        reorder: float = 0.1,
        delay: float = 0.03,
        seed: int = 7,
    ) -> None:
        self.target = target
        self.loss = loss
        self.reorder = reorder
        self.delay = delay
        self.rng = random.Random(seed)
        self.front: asyncio.DatagramTransport | None = None
        self.upstreams: dict[Any, _Upstream] = {}
        self.pending: dict[Any, list[bytes]] = {}
        self.forwarded = 0
        self.dropped = 0
        self.reordered = 0

    @classmethod
    async def start(cls, target: tuple[str, int], **kw: Any) -> LossyRelay:
        loop = asyncio.get_running_loop()
        relay = cls(target, **kw)
        await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
        return relay

    @property
    def port(self) -> int:
        assert self.front is not None
        return int(self.front.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.front = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        up = self.upstreams.get(addr)
        if up is None:
            up = self.upstreams[addr] = _Upstream(self, addr)
            self.pending[addr] = [data]
            asyncio.get_running_loop().create_task(self._open(addr, up))
            return
        if up.transport is None:
            self.pending[addr].append(data)
            return
        transport = up.transport
        self.forward(data, lambda d: transport.sendto(d, self.target))

    async def _open(self, addr: Any, up: _Upstream) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: up, local_addr=("127.0.0.1", 0))
        assert up.transport is not None
        transport = up.transport
        for data in self.pending.pop(addr, []):
            self.forward(data, lambda d: transport.sendto(d, self.target))

    def forward(self, data: bytes, send: Any) -> None:
        r = self.rng.random()
        if r < self.loss:
            self.dropped += 1
            return
        self.forwarded += 1
        if r < self.loss + self.reorder:
            self.reordered += 1
            delay = self.rng.uniform(0.002, self.delay)
            asyncio.get_running_loop().call_later(delay, send, data)
        else:
            send(data)

    def close(self) -> None:
        for up in self.upstreams.values():
            if up.transport is not None:
                up.transport.close()
        if self.front is not None:
            self.front.close()
