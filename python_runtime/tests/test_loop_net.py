"""Networking on ErlangEventLoop inside a real worker: TCP, Unix sockets,
UDP (connected, unconnected, broadcast), TLS, sock_* and DNS."""
import asyncio
import os
import socket
import ssl
import subprocess

import pytest

import erlang
from erlang._transports import SocketTransport

run = erlang.run


# ---------------------------------------------------------------- TCP

class EchoServerProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.peer = transport.get_extra_info("peername")

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        # Returning false closes the transport once the echo is written.
        return False


class EchoClientProtocol(asyncio.Protocol):
    def __init__(self, message, on_con_lost):
        self.message = message
        self.on_con_lost = on_con_lost
        self.received = b""
        self.eof = False

    def connection_made(self, transport):
        transport.write(self.message)
        transport.write_eof()

    def data_received(self, data):
        self.received += data

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        self.on_con_lost.set_result(exc)


def test_tcp_echo_protocols():
    async def main():
        loop = asyncio.get_running_loop()
        assert isinstance(loop, erlang.ErlangEventLoop)
        server = await loop.create_server(EchoServerProtocol, "127.0.0.1", 0, reuse_address=True)
        port = server.sockets[0].getsockname()[1]
        async with server:
            lost = loop.create_future()
            transport, client = await loop.create_connection(
                lambda: EchoClientProtocol(b"Hello, World!" * 1000, lost), "127.0.0.1", port)
            sock = transport.get_extra_info("socket")
            assert transport.get_extra_info("peername") == ("127.0.0.1", port)
            assert transport.get_extra_info("sockname") == sock.getsockname()
            assert await lost is None
            return client.received, client.eof

    received, eof = run(main())
    assert received == b"Hello, World!" * 1000
    assert eof


def test_tcp_streams_many_clients():
    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def client(port, i):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = []
        for j in range(20):
            writer.write(f"client {i} line {j}\n".encode())
            await writer.drain()
            lines.append(await reader.readline())
        writer.close()
        await writer.wait_closed()
        return lines

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await asyncio.gather(*(client(port, i) for i in range(16)))

    results = run(main())
    for i, lines in enumerate(results):
        assert lines == [f"CLIENT {i} LINE {j}\n".encode() for j in range(20)]


def test_tcp_reuse_port_lets_two_servers_share_a_port():
    async def main():
        loop = asyncio.get_running_loop()
        a = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
        port = a.sockets[0].getsockname()[1]
        b = await loop.create_server(asyncio.Protocol, "127.0.0.1", port, reuse_port=True)
        ports = {s.getsockname()[1] for s in a.sockets + b.sockets}
        a.close()
        b.close()
        await a.wait_closed()
        await b.wait_closed()
        return ports, port

    ports, port = run(main())
    assert ports == {port}


def test_write_flow_control_pauses_and_resumes():
    class Slow(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            transport.pause_reading()

    class Writer(asyncio.Protocol):
        def __init__(self):
            self.events = []
            self.resumed = asyncio.get_running_loop().create_future()

        def pause_writing(self):
            self.events.append("pause")

        def resume_writing(self):
            self.events.append("resume")
            if not self.resumed.done():
                self.resumed.set_result(None)

    async def main():
        loop = asyncio.get_running_loop()
        servers = []
        server = await loop.create_server(lambda: servers.append(Slow()) or servers[-1], "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, proto = await loop.create_connection(Writer, "127.0.0.1", port)
        transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        chunk = b"x" * 65536
        while "pause" not in proto.events:
            transport.write(chunk)
        assert transport.get_write_buffer_size() > 0
        while not servers:
            await asyncio.sleep(0)
        servers[0].transport.resume_reading()
        await proto.resumed
        transport.close()
        server.close()
        await server.wait_closed()
        return proto.events

    events = run(main())
    assert events[:2] == ["pause", "resume"]


def test_transport_closed_mid_write():
    received = []

    class Sink(asyncio.Protocol):
        def __init__(self):
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            transport.pause_reading()
            self.transport = transport

        def data_received(self, data):
            received.append(len(data))

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    class Writer(asyncio.Protocol):
        def __init__(self):
            self.lost = asyncio.get_running_loop().create_future()

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    written = []

    async def main():
        loop = asyncio.get_running_loop()
        sinks = []
        server = await loop.create_server(lambda: sinks.append(Sink()) or sinks[-1], "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, writer = await loop.create_connection(Writer, "127.0.0.1", port)
        chunk = b"y" * 65536
        for _ in range(4096):  # until the socket takes no more (its size is the kernel's)
            transport.write(chunk)
            written.append(len(chunk))
            if transport.get_write_buffer_size() > 0:
                break
        assert transport.get_write_buffer_size() > 0
        transport.abort()  # closes with data still buffered
        assert transport.is_closing()
        exc = await writer.lost
        while not sinks:
            await asyncio.sleep(0)
        sinks[0].transport.resume_reading()
        peer_exc = await sinks[0].lost
        server.close()
        await server.wait_closed()
        return exc, peer_exc, transport.get_write_buffer_size()

    exc, peer_exc, left = run(main())
    assert exc is None  # abort() is a local close, not an error
    assert left == 0
    # The peer saw the connection end (reset or end of file) after only a
    # part of what was queued.
    assert peer_exc is None or isinstance(peer_exc, ConnectionResetError)
    assert sum(received) < sum(written)


def test_sock_methods():
    async def main():
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        with listener, client:
            accepting = loop.create_task(loop.sock_accept(listener))
            await loop.sock_connect(client, listener.getsockname())
            conn, addr = await accepting
            with conn:
                assert addr == client.getsockname()
                await loop.sock_sendall(client, b"a" * 100000)
                got = bytearray()
                while len(got) < 100000:
                    got += await loop.sock_recv(conn, 65536)
                buf = bytearray(10)
                await loop.sock_sendall(conn, b"0123456789")
                n = await loop.sock_recv_into(client, buf)
                return bytes(got), bytes(buf[:n])

    got, echoed = run(main())
    assert got == b"a" * 100000
    assert echoed == b"0123456789"[: len(echoed)] and echoed


def test_sock_datagram_methods_and_sendfile(tmp_path):
    payload = bytes(range(256)) * 1000
    path = tmp_path / "payload"
    path.write_bytes(payload)

    async def main():
        loop = asyncio.get_running_loop()
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        with a, b:
            await loop.sock_sendto(a, b"datagram", b.getsockname())
            data, addr = await loop.sock_recvfrom(b, 100)
            buf = bytearray(100)
            await loop.sock_sendto(b, b"back", addr)
            n, _ = await loop.sock_recvfrom_into(a, buf)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        with listener, client:
            accepting = loop.create_task(loop.sock_accept(listener))
            await loop.sock_connect(client, listener.getsockname())
            conn, _ = await accepting
            with conn, open(path, "rb") as f:
                sent = await loop.sock_sendfile(client, f)
                client.shutdown(socket.SHUT_WR)
                got = bytearray()
                while chunk := await loop.sock_recv(conn, 65536):
                    got += chunk
        return data, addr, bytes(buf[:n]), sent, bytes(got)

    data, addr, back, sent, got = run(main())
    assert data == b"datagram" and back == b"back"
    assert sent == len(payload) and got == payload


def test_connection_refused_is_reported():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def main():
        await asyncio.open_connection("127.0.0.1", port)

    with pytest.raises(ConnectionRefusedError):
        run(main())


# ---------------------------------------------------------------- Unix sockets

def test_unix_socket_server_and_client(tmp_path):
    path = str(tmp_path / "echo.sock")

    async def handle(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_unix_server(handle, path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"over unix")
            data = await reader.read()
            writer.close()
            await writer.wait_closed()
            return data

    assert run(main()) == b"over unix"


# ---------------------------------------------------------------- UDP

class EchoUDPServer(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class UDPClient(asyncio.DatagramProtocol):
    def __init__(self):
        loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()
        self.errors = asyncio.Queue()
        self.lost = loop.create_future()

    def datagram_received(self, data, addr):
        self.queue.put_nowait((data, addr))

    def error_received(self, exc):
        self.errors.put_nowait(exc)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_udp_echo_connected_and_unconnected():
    async def main():
        loop = asyncio.get_running_loop()
        server_t, _ = await loop.create_datagram_endpoint(EchoUDPServer, local_addr=("127.0.0.1", 0))
        addr = server_t.get_extra_info("sockname")
        # Connected: remote_addr fixed, sendto without an address.
        conn_t, conn = await loop.create_datagram_endpoint(UDPClient, remote_addr=addr)
        assert conn_t.get_extra_info("peername") == addr
        conn_t.sendto(b"connected")
        got1 = await asyncio.wait_for(conn.queue.get(), 10)
        # Unconnected: any destination per datagram, with family/proto/flags.
        free_t, free = await loop.create_datagram_endpoint(
            UDPClient, local_addr=("127.0.0.1", 0), family=socket.AF_INET,
            proto=socket.IPPROTO_UDP, flags=socket.AI_NUMERICHOST)
        for i in range(50):
            free_t.sendto(b"n%d" % i, addr)
        got2 = [await asyncio.wait_for(free.queue.get(), 10) for _ in range(50)]
        for t in (conn_t, free_t, server_t):
            t.close()
        await conn.lost
        return got1, got2, addr

    got1, got2, addr = run(main())
    assert got1 == (b"connected", addr)
    assert sorted(d for d, _ in got2) == sorted(b"n%d" % i for i in range(50))


def test_udp_error_received_on_refused_port():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    addr = probe.getsockname()
    probe.close()

    async def main():
        loop = asyncio.get_running_loop()
        t, p = await loop.create_datagram_endpoint(UDPClient, remote_addr=addr)
        t.sendto(b"anyone?")
        exc = await asyncio.wait_for(p.errors.get(), 10)
        t.close()
        return exc

    assert isinstance(run(main()), ConnectionRefusedError)


def test_udp_reuse_port_and_sock():
    async def main():
        loop = asyncio.get_running_loop()
        a, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), reuse_port=True)
        port = a.get_extra_info("sockname")[1]
        b, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", port), reuse_port=True)
        own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        own.bind(("127.0.0.1", 0))
        c, p = await loop.create_datagram_endpoint(UDPClient, sock=own)
        assert c.get_extra_info("socket").fileno() == own.fileno()
        b.sendto(b"via sock", own.getsockname())
        got = await asyncio.wait_for(p.queue.get(), 10)
        for t in (a, b, c):
            t.close()
        return got, port

    (data, (_, from_port)), port = run(main())
    assert data == b"via sock" and from_port == port


def test_udp_broadcast_needs_allow_broadcast():
    async def main():
        loop = asyncio.get_running_loop()
        listener_t, listener = await loop.create_datagram_endpoint(UDPClient, local_addr=("0.0.0.0", 0))
        port = listener_t.get_extra_info("sockname")[1]
        plain_t, plain = await loop.create_datagram_endpoint(UDPClient, local_addr=("127.0.0.1", 0))
        plain_t.sendto(b"denied", ("127.255.255.255", port))
        refused = await asyncio.wait_for(plain.errors.get(), 10)
        bcast_t, _ = await loop.create_datagram_endpoint(
            UDPClient, local_addr=("127.0.0.1", 0), allow_broadcast=True)
        assert bcast_t.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        bcast_t.sendto(b"to everyone", ("127.255.255.255", port))
        got = await asyncio.wait_for(listener.queue.get(), 10)
        for t in (listener_t, plain_t, bcast_t):
            t.close()
        return refused, got

    refused, (data, _) = run(main())
    assert isinstance(refused, PermissionError)
    assert data == b"to everyone"


# ---------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost, made now by the openssl CLI."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True)
    return str(cert), str(key)


def contexts(certificate):
    cert, key = certificate
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=cert)
    return server, client


def test_tls_client_and_server(certificate):
    server_ctx, client_ctx = contexts(certificate)

    async def handle(reader, writer):
        data = await reader.readline()
        writer.write(b"secure " + data)
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
            tls = writer.get_extra_info("ssl_object")
            # TLS runs on the loop's own socket transport.
            assert isinstance(writer.transport._ssl_protocol._transport, SocketTransport)
            writer.write(b"hello\n")
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return line, tls.version()

    line, version = run(main())
    assert line == b"secure hello\n"
    assert version.startswith("TLS")


def test_tls_rejects_an_unknown_certificate(certificate):
    server_ctx, _ = contexts(certificate)
    strict = ssl.create_default_context()  # system CAs only

    async def main():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await asyncio.open_connection("127.0.0.1", port, ssl=strict, server_hostname="localhost")

    with pytest.raises(ssl.SSLCertVerificationError):
        run(main())


def test_start_tls_upgrades_a_plain_connection(certificate):
    server_ctx, client_ctx = contexts(certificate)

    async def handle(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.drain()
        await writer.start_tls(server_ctx)
        writer.write(b"now encrypted: " + await reader.readline())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"STARTTLS\n")
            assert await reader.readline() == b"OK\n"
            assert isinstance(writer.transport, SocketTransport)
            await writer.start_tls(client_ctx, server_hostname="localhost")
            assert writer.get_extra_info("ssl_object") is not None
            assert isinstance(writer.transport._ssl_protocol._transport, SocketTransport)
            writer.write(b"secret\n")
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return line

    assert run(main()) == b"now encrypted: secret\n"


# ---------------------------------------------------------------- DNS

def test_getaddrinfo_and_getnameinfo():
    async def main():
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo("localhost", 80, family=socket.AF_INET, type=socket.SOCK_STREAM)
        name = await loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICSERV)
        return infos, name

    infos, name = run(main())
    assert any(info[4] == ("127.0.0.1", 80) for info in infos)
    assert name[1] == "80"
