"""ErlangEventLoop's own transports (erlang/_transports.py, C++ hot paths in
port_worker/uv_transports.cpp), inside a real worker: every test checks
that the transport under test is the native one, then the asyncio
behaviour users rely on."""
import asyncio
import os
import socket
import struct

import pytest

import erlang
from erlang._transports import DatagramTransport, SocketTransport

run = erlang.run


async def tcp_pair(server_factory, client_factory, **limits):
    """A server and one connection to it: (server, client transport,
    client protocol, server protocol)."""
    loop = asyncio.get_running_loop()
    made = []
    server = await loop.create_server(lambda: made.append(server_factory()) or made[-1], "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, client = await loop.create_connection(client_factory, "127.0.0.1", port)
    while not made or not hasattr(made[0], "transport"):
        await asyncio.sleep(0)
    return server, transport, client, made[0]


def small_socket_buffers(transport, peer_transport):
    """Makes the kernel hold little, so writes are buffered by the transport."""
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    peer_transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)


class Collect(asyncio.Protocol):
    """Keeps what it receives; a future for connection_lost and one for EOF."""

    def __init__(self, keep_open_on_eof=False):
        loop = asyncio.get_running_loop()
        self.data = bytearray()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.keep_open_on_eof = keep_open_on_eof
        self.calls = []

    def connection_made(self, transport):
        self.transport = transport
        self.calls.append("made")

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.data += data

    def eof_received(self):
        self.calls.append("eof")
        self.eof.set_result(None)
        return self.keep_open_on_eof

    def connection_lost(self, exc):
        self.calls.append("lost")
        self.lost.set_result(exc)

    async def wait_for(self, size):
        while len(self.data) < size:
            await asyncio.sleep(0.001)


def test_tcp_transports_are_native_with_extra_info():
    async def main():
        server, transport, client, peer = await tcp_pair(Collect, Collect)
        types = type(transport), type(peer.transport)
        sock = transport.get_extra_info("socket")
        info = (sock.family, sock.type, sock.getsockname(), transport.get_extra_info("sockname"),
                transport.get_extra_info("peername"), peer.transport.get_extra_info("sockname"),
                peer.transport.get_extra_info("peername"), transport.get_extra_info("nothing", 7))
        with pytest.raises(Exception):
            sock.recv(1)  # asyncio's TransportSocket: I/O belongs to the transport
        transport.close()
        await client.lost
        server.close()
        await server.wait_closed()
        return types, info

    types, (family, kind, sockname, name, peer, peer_name, peer_peer, default) = run(main())
    assert types == (SocketTransport, SocketTransport)
    assert (family, kind) == (socket.AF_INET, socket.SOCK_STREAM)
    assert sockname == name == peer_peer
    assert peer == peer_name
    assert default == 7


def test_write_copies_mutable_data_and_checks_its_argument():
    async def main():
        server, transport, client, peer = await tcp_pair(Collect, Collect)
        assert isinstance(transport, SocketTransport)
        data = bytearray(b"abc")
        transport.write(data)
        data[:] = b"XYZ"  # after write(): what was written stays written
        transport.write(memoryview(b"--defgh")[2:])
        transport.write(b"")
        transport.writelines([b"1", bytearray(b"2"), memoryview(b"3")])
        with pytest.raises(TypeError, match="bytes-like object, not 'str'"):
            transport.write("text")
        await peer.wait_for(11)
        transport.close()
        await client.lost
        server.close()
        await server.wait_closed()
        return bytes(peer.data)

    assert run(main()) == b"abcdefgh123"


def test_large_writes_are_buffered_and_arrive_whole_and_in_order():
    payload = os.urandom(3 * 1024 * 1024)

    async def main():
        server, transport, client, peer = await tcp_pair(Collect, Collect)
        assert isinstance(transport, SocketTransport)
        small_socket_buffers(transport, peer.transport)
        transport.set_write_buffer_limits(high=64 * 1024 * 1024)
        for i in range(0, len(payload), 100_000):
            transport.write(payload[i:i + 100_000])
        buffered = transport.get_write_buffer_size()
        await peer.wait_for(len(payload))
        transport.close()
        await client.lost
        server.close()
        await server.wait_closed()
        return buffered, bytes(peer.data), transport.get_write_buffer_size()

    buffered, received, left = run(main())
    assert buffered > 0  # the socket did not take it all at once
    assert received == payload
    assert left == 0


def test_close_flushes_pending_writes_before_connection_lost():
    payload = b"z" * (2 * 1024 * 1024)

    async def main():
        server, transport, client, peer = await tcp_pair(Collect, Collect)
        assert isinstance(transport, SocketTransport)
        small_socket_buffers(transport, peer.transport)
        peer.transport.pause_reading()
        transport.set_write_buffer_limits(high=16 * 1024 * 1024)
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        transport.close()
        assert transport.is_closing()
        transport.close()  # twice is harmless
        await asyncio.sleep(0.01)
        assert not client.lost.done()  # data still waits to be sent
        peer.transport.resume_reading()
        exc = await client.lost
        await peer.eof  # the peer sees everything, then the end
        server.close()
        await server.wait_closed()
        return exc, len(peer.data), client.calls, transport.get_write_buffer_size()

    exc, received, calls, left = run(main())
    assert exc is None
    assert received == len(payload)
    assert calls == ["made", "lost"]
    assert left == 0


def test_flow_control_follows_the_water_marks():
    class Writer(Collect):
        def __init__(self):
            super().__init__()
            self.marks = []

        def pause_writing(self):
            self.marks.append(("pause", self.transport.get_write_buffer_size()))

        def resume_writing(self):
            self.marks.append(("resume", self.transport.get_write_buffer_size()))

    async def main():
        server, transport, writer, peer = await tcp_pair(Collect, Writer)
        assert isinstance(transport, SocketTransport)
        transport.set_write_buffer_limits(high=100_000, low=20_000)
        limits = transport.get_write_buffer_limits()
        peer.transport.pause_reading()
        while not writer.marks:
            transport.write(b"w" * 30_000)
        writer.marks.append(("wrote", 0))
        transport.write(b"w" * 30_000)  # still buffered while paused, no second pause
        peer.transport.resume_reading()
        while len(writer.marks) < 3:
            await asyncio.sleep(0.001)
        transport.close()
        await writer.lost
        server.close()
        await server.wait_closed()
        return limits, writer.marks

    limits, marks = run(main())
    assert limits == (20_000, 100_000)
    (pause, at_pause), wrote, (resume, at_resume) = marks
    assert (pause, wrote[0], resume) == ("pause", "wrote", "resume")
    assert at_pause > 100_000
    assert at_resume <= 20_000


def test_pause_and_resume_reading():
    async def main():
        server, transport, client, peer = await tcp_pair(Collect, Collect)
        assert isinstance(peer.transport, SocketTransport)
        reading = [peer.transport.is_reading()]
        peer.transport.pause_reading()
        peer.transport.pause_reading()  # idempotent
        reading.append(peer.transport.is_reading())
        transport.write(b"held")
        await asyncio.sleep(0.02)
        held = bytes(peer.data)
        peer.transport.resume_reading()
        reading.append(peer.transport.is_reading())
        await peer.wait_for(4)
        transport.close()
        await client.lost
        await peer.lost  # the peer closed on EOF
        reading.append(peer.transport.is_reading())  # closed: not reading
        server.close()
        await server.wait_closed()
        return reading, held, bytes(peer.data)

    reading, held, data = run(main())
    assert reading == [True, False, True, False]
    assert held == b""
    assert data == b"held"


def test_write_eof_half_closes_and_eof_received_keeps_the_peer_open():
    async def main():
        server, transport, client, peer = await tcp_pair(lambda: Collect(keep_open_on_eof=True), Collect)
        assert isinstance(transport, SocketTransport)
        assert transport.can_write_eof()
        transport.write(b"question")
        transport.write_eof()
        with pytest.raises(RuntimeError, match="after write_eof"):
            transport.write(b"more")
        await peer.eof
        # The peer kept its side open (eof_received returned True): it can answer.
        peer.transport.write(b"answer")
        await client.wait_for(6)
        peer.transport.close()
        exc = await client.lost
        server.close()
        await server.wait_closed()
        return bytes(peer.data), bytes(client.data), peer.calls, client.calls, exc

    got, answer, peer_calls, client_calls, exc = run(main())
    assert (got, answer) == (b"question", b"answer")
    assert peer_calls == ["made", "eof", "lost"]
    assert client_calls == ["made", "eof", "lost"]
    assert exc is None


def test_abort_drops_buffered_data_and_a_late_write_is_ignored():
    async def main():
        server, transport, client, peer = await tcp_pair(Collect, Collect)
        assert isinstance(transport, SocketTransport)
        peer.transport.pause_reading()
        transport.set_write_buffer_limits(high=64 * 1024 * 1024)
        transport.write(b"a" * (4 * 1024 * 1024))
        transport.abort()
        exc = await client.lost
        for _ in range(10):
            transport.write(b"after")  # counted and dropped, as asyncio does
        peer.transport.resume_reading()
        peer_exc = await peer.lost
        server.close()
        await server.wait_closed()
        return exc, peer_exc, len(peer.data), transport.get_write_buffer_size()

    exc, peer_exc, received, left = run(main())
    assert exc is None
    assert peer_exc is None or isinstance(peer_exc, ConnectionResetError)
    assert received < 4 * 1024 * 1024
    assert left == 0


def test_a_reset_connection_is_reported_to_connection_lost():
    async def main():
        server, transport, client, peer = await tcp_pair(Collect, Collect)
        assert isinstance(transport, SocketTransport)
        # The peer resets the connection (SO_LINGER 0, then close).
        raw = peer.transport.get_extra_info("socket")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.transport.abort()
        for _ in range(200):
            if client.lost.done():
                break
            transport.write(b"x" * 1024)
            await asyncio.sleep(0.005)
        exc = await client.lost
        server.close()
        await server.wait_closed()
        return exc, transport.is_closing()

    exc, closing = run(main())
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
    assert closing


def test_a_failing_data_received_is_a_fatal_error():
    errors = []

    class Broken(Collect):
        def data_received(self, data):
            raise ValueError("bad data")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: errors.append(context))
        server, transport, client, peer = await tcp_pair(Broken, Collect)
        assert isinstance(peer.transport, SocketTransport)
        transport.write(b"boom")
        exc = await peer.lost
        await client.lost
        server.close()
        await server.wait_closed()
        return exc

    exc = run(main())
    assert isinstance(exc, ValueError) and str(exc) == "bad data"
    [context] = errors
    assert context["message"] == "Fatal error: protocol.data_received() call failed."
    assert context["exception"] is exc
    assert isinstance(context["transport"], SocketTransport)


def test_buffered_protocol_receives_into_its_own_buffer():
    payload = os.urandom(200_000)

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(1000)  # smaller than what arrives: many reads
            self.data = bytearray()
            self.sizes = set()
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            self.sizes.add(sizehint)
            return self.buf

        def buffer_updated(self, nbytes):
            self.data += self.buf[:nbytes]

        def eof_received(self):
            return False

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        server, transport, client, peer = await tcp_pair(Buffered, Collect)
        assert isinstance(peer.transport, SocketTransport)
        transport.write(payload)
        transport.write_eof()
        exc = await peer.lost
        await client.lost
        server.close()
        await server.wait_closed()
        return exc, bytes(peer.data), peer.sizes

    exc, data, sizes = run(main())
    assert exc is None
    assert data == payload
    assert sizes == {-1}


def test_a_failing_get_buffer_is_a_fatal_error():
    errors = []

    class NoBuffer(asyncio.BufferedProtocol):
        def __init__(self):
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            return bytearray()  # empty: asyncio's transports refuse it

        def buffer_updated(self, nbytes):
            raise AssertionError("never called")

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        server, transport, client, peer = await tcp_pair(NoBuffer, Collect)
        transport.write(b"data")
        exc = await peer.lost
        transport.close()
        server.close()
        await server.wait_closed()
        return exc

    exc = run(main())
    assert isinstance(exc, RuntimeError) and "empty buffer" in str(exc)
    assert errors[0]["message"] == "Fatal error: protocol.get_buffer() call failed."


def test_set_protocol_switches_between_plain_and_buffered_reads():
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(64)
            self.data = bytearray()

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            self.data += self.buf[:nbytes]

    async def main():
        server, transport, client, peer = await tcp_pair(Collect, Collect)
        assert isinstance(transport, SocketTransport)
        buffered = Buffered()
        transport.set_protocol(buffered)
        assert transport.get_protocol() is buffered
        peer.transport.write(b"to the buffered protocol")
        while len(buffered.data) < 24:
            await asyncio.sleep(0.001)
        transport.set_protocol(client)
        peer.transport.write(b"back to data_received")
        await client.wait_for(21)
        transport.close()
        await client.lost
        server.close()
        await server.wait_closed()
        return bytes(buffered.data), bytes(client.data)

    assert run(main()) == (b"to the buffered protocol", b"back to data_received")


def test_streams_in_debug_mode():
    async def handle(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    async def main():
        asyncio.get_running_loop().set_debug(True)
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert isinstance(writer.transport, SocketTransport)
            writer.write(b"debug\n")
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return line

    assert run(main()) == b"DEBUG\n"


def test_unix_socket_transports_are_native(tmp_path):
    path = str(tmp_path / "native.sock")

    async def main():
        loop = asyncio.get_running_loop()
        made = []
        server = await loop.create_unix_server(lambda: made.append(Collect()) or made[-1], path)
        transport, client = await loop.create_unix_connection(Collect, path)
        transport.write(b"over unix")
        while not made:
            await asyncio.sleep(0)
        await made[0].wait_for(9)
        info = transport.get_extra_info("peername"), made[0].transport.get_extra_info("sockname")
        transport.close()
        await client.lost
        server.close()
        await server.wait_closed()
        return type(transport), type(made[0].transport), bytes(made[0].data), info

    client_type, server_type, data, (peer, name) = run(main())
    assert client_type is server_type is SocketTransport
    assert data == b"over unix"
    assert peer == name == path


def test_connect_accepted_socket_is_native():
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        transport, proto = await loop.connect_accepted_socket(Collect, a)
        b.sendall(b"accepted")
        await proto.wait_for(8)
        transport.write(b"reply")
        b.setblocking(False)
        reply = await loop.sock_recv(b, 100)
        transport.close()
        await proto.lost
        b.close()
        return type(transport), bytes(proto.data), reply

    assert run(main()) == (SocketTransport, b"accepted", b"reply")


# ---------------------------------------------------------------- datagrams

class Datagrams(asyncio.DatagramProtocol):
    def __init__(self, echo=False):
        self.echo = echo
        self.got = asyncio.Queue()
        self.errors = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if self.echo:
            self.transport.sendto(data, addr)
        self.got.put_nowait((data, addr))

    def error_received(self, exc):
        self.errors.append(exc)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_udp_transports_are_native_connected_and_not():
    async def main():
        loop = asyncio.get_running_loop()
        server, echo = await loop.create_datagram_endpoint(lambda: Datagrams(echo=True),
                                                           local_addr=("127.0.0.1", 0))
        address = server.get_extra_info("sockname")
        free, free_proto = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        free.sendto(b"one", address)
        free.sendto(bytearray(b"two"), address)
        free.sendto(memoryview(b"three"), address)
        unconnected = [await free_proto.got.get() for _ in range(3)]
        bound, bound_proto = await loop.create_datagram_endpoint(Datagrams, remote_addr=address)
        bound.sendto(b"four")
        bound.sendto(b"five", address)  # the remote address itself is allowed
        connected = [await bound_proto.got.get() for _ in range(2)]
        with pytest.raises(ValueError, match="Invalid address"):
            bound.sendto(b"six", ("127.0.0.1", 9))
        with pytest.raises(TypeError, match="bytes-like object"):
            bound.sendto("seven")
        info = (bound.get_extra_info("peername"), bound.get_extra_info("socket").type,
                free.get_extra_info("peername"))
        seen_by_server = [await echo.got.get() for _ in range(5)]
        types = {type(t) for t in (server, free, bound)}
        for t in (server, free, bound):
            t.close()
        await bound_proto.lost
        return address, unconnected, connected, info, seen_by_server, types, free.get_extra_info("sockname")

    address, unconnected, connected, info, seen, types, free_name = run(main())
    assert types == {DatagramTransport}
    assert unconnected == [(b"one", address), (b"two", address), (b"three", address)]
    assert connected == [(b"four", address), (b"five", address)]
    assert info == (address, socket.SOCK_DGRAM, None)
    assert [data for data, _ in seen] == [b"one", b"two", b"three", b"four", b"five"]
    assert seen[0][1] == free_name


def test_udp_over_ipv6():
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")

    async def main():
        loop = asyncio.get_running_loop()
        server, echo = await loop.create_datagram_endpoint(lambda: Datagrams(echo=True),
                                                           local_addr=("::1", 0))
        client, proto = await loop.create_datagram_endpoint(Datagrams, local_addr=("::1", 0))
        address = server.get_extra_info("sockname")
        client.sendto(b"six", address)
        client.sendto(b"six", address[:2])  # (host, port) is enough
        replies = [await proto.got.get() for _ in range(2)]
        types = type(server), type(client)
        server.close()
        client.close()
        return address, replies, types

    address, replies, types = run(main())
    assert types == (DatagramTransport, DatagramTransport)
    assert len(address) == 4
    assert replies == [(b"six", address), (b"six", address)]


def test_udp_names_and_unix_datagrams_take_asyncio_path(tmp_path):
    path = str(tmp_path / "dgram.sock")

    async def main():
        loop = asyncio.get_running_loop()
        server, echo = await loop.create_datagram_endpoint(lambda: Datagrams(echo=True),
                                                           local_addr=("127.0.0.1", 0))
        port = server.get_extra_info("sockname")[1]
        client, proto = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        client.sendto(b"by name", ("localhost", port))  # resolved by the socket module
        by_name = await proto.got.get()
        unix_server, unix_echo = await loop.create_datagram_endpoint(
            lambda: Datagrams(echo=True), local_addr=path, family=socket.AF_UNIX)
        unix_client, unix_proto = await loop.create_datagram_endpoint(
            Datagrams, local_addr=path + ".client", family=socket.AF_UNIX)
        unix_client.sendto(b"over unix", path)
        over_unix = await unix_proto.got.get()
        types = {type(t) for t in (server, client, unix_server, unix_client)}
        for t in (server, client, unix_server, unix_client):
            t.close()
        return by_name, over_unix, types, port

    (data, addr), unix, types, port = run(main())
    assert types == {DatagramTransport}
    assert data == b"by name" and addr[1] == port
    assert unix == (b"over unix", path)


def test_udp_backlog_is_sent_in_order():
    async def main():
        loop = asyncio.get_running_loop()
        server, echo = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        address = server.get_extra_info("sockname")
        client, proto = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        assert isinstance(client, DatagramTransport)
        # What the C++ sendto does when the socket would block: the datagram
        # waits, and later ones queue behind it until the socket is writable.
        client._pyport_backlog(b"first", address)
        waiting = client.get_write_buffer_size()
        client.sendto(b"second", address)
        got = [(await echo.got.get())[0] for _ in range(2)]
        server.close()
        client.close()
        return waiting, got, client.get_write_buffer_size()

    waiting, got, left = run(main())
    assert waiting == len(b"first")
    assert got == [b"first", b"second"]
    assert left == 0


def test_udp_errors_reach_the_protocol_and_the_exception_handler():
    errors = []

    class Broken(Datagrams):
        def datagram_received(self, data, addr):
            raise KeyError("broken protocol")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: errors.append(context))
        # A port nobody listens on: the ICMP error comes back as error_received.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
        probe.close()
        client, proto = await loop.create_datagram_endpoint(Datagrams, remote_addr=("127.0.0.1", closed_port))
        for _ in range(50):
            client.sendto(b"anyone?")
            await asyncio.sleep(0.002)
            if proto.errors:
                break
        broken, _ = await loop.create_datagram_endpoint(Broken, local_addr=("127.0.0.1", 0))
        client2, _ = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        client2.sendto(b"x", broken.get_extra_info("sockname"))
        while not errors:
            await asyncio.sleep(0.001)
        for t in (client, broken, client2):
            t.close()
        return proto.errors, type(client)

    refused, kind = run(main())
    assert kind is DatagramTransport
    assert refused and isinstance(refused[0], ConnectionRefusedError)
    assert isinstance(errors[0]["exception"], KeyError)


def test_transports_take_part_in_garbage_collection():
    import gc
    import weakref

    async def main():
        loop = asyncio.get_running_loop()
        server, transport, client, peer = await tcp_pair(Collect, Collect)
        udp, udp_proto = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        # The state kept in C++ fields is visible to the collector.
        seen = (client in gc.get_referents(transport), udp_proto in gc.get_referents(udp))
        refs = [weakref.ref(t) for t in (transport, peer.transport, udp)]
        transport.close()
        udp.close()
        await client.lost
        await peer.lost
        await udp_proto.lost
        server.close()
        await server.wait_closed()
        return seen, refs

    seen, refs = run(main())
    gc.collect()
    assert seen == (True, True)
    assert [r() for r in refs] == [None, None, None]


def test_loop_sendfile_over_a_native_transport(tmp_path):
    path = tmp_path / "payload.bin"
    payload = os.urandom(300_000)
    path.write_bytes(payload)

    async def main():
        server, transport, client, peer = await tcp_pair(Collect, Collect)
        assert isinstance(transport, SocketTransport)
        transport.write(b"head:")  # sendfile waits for buffered data first
        with open(path, "rb") as f:
            sent = await asyncio.get_running_loop().sendfile(transport, f)
        transport.write(b":tail")
        await peer.wait_for(len(payload) + 10)
        transport.close()
        await client.lost
        server.close()
        await server.wait_closed()
        return sent, bytes(peer.data)

    sent, data = run(main())
    assert sent == len(payload)
    assert data == b"head:" + payload + b":tail"


def test_pause_reading_inside_a_callback_stops_delivery_at_once():
    payload = os.urandom(100_000)

    class Pausing(asyncio.BufferedProtocol):
        """Receives into a small buffer (so each read fills it and more is
        waiting) and pauses reading after every piece."""

        def __init__(self):
            self.buf = bytearray(100)
            self.data = bytearray()
            self.deliveries = 0

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            self.data += self.buf[:nbytes]
            self.deliveries += 1
            self.transport.pause_reading()

    async def main():
        server, transport, client, peer = await tcp_pair(Pausing, Collect)
        assert isinstance(peer.transport, SocketTransport)
        transport.write(payload)
        while not peer.deliveries:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)  # more is waiting in the socket meanwhile
        while_paused = peer.deliveries
        while len(peer.data) < len(payload):
            peer.transport.resume_reading()
            await asyncio.sleep(0)
        transport.close()
        await client.lost
        server.close()
        await server.wait_closed()
        return while_paused, bytes(peer.data)

    while_paused, data = run(main())
    assert while_paused == 1
    assert data == payload
