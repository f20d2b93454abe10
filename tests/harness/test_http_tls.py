"""TLS on HTTP pools' servers (certfile/keyfile, docs/http.md "TLS"): HTTPS
and wss:// served by the worker's own ssl.SSLContext over asyncio's
SSLProtocol on the worker's C++ transports. The certificate is made here
with openssl, self-signed for 127.0.0.1."""
import asyncio
import http.client
import json
import os
import socket
import ssl
import subprocess

import pytest
import websockets

import pyport_proto
from test_http import free_port, serve  # noqa: F401  (the fixture)


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    certfile, keyfile = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", keyfile, "-out", certfile, "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return certfile, keyfile


def client_ctx(certfile):
    ctx = ssl.create_default_context(cafile=certfile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def https_get(port, certfile, path):
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=client_ctx(certfile))
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        return r.status, body, c.sock.version(), c.sock.selected_alpn_protocol()
    finally:
        c.close()


def test_https_get_scope_scheme_and_keepalive(serve, cert):
    certfile, keyfile = cert
    s = serve("http_apps:app", certfile=certfile, keyfile=keyfile)
    status, body, version, alpn = https_get(s.port, certfile, "/scope")
    assert status == 200, body
    scope = json.loads(body)
    assert scope["scheme"] == "https"
    assert version in ("TLSv1.2", "TLSv1.3") and alpn == "http/1.1"
    # Several requests on one TLS connection (keep-alive through SSLProtocol),
    # with a body larger than one TLS record.
    c = http.client.HTTPSConnection("127.0.0.1", s.port, timeout=10,
                                    context=client_ctx(certfile))
    try:
        for n in (1, 100_000, 3):
            data = os.urandom(n)
            c.request("POST", "/echo", body=data)
            r = c.getresponse()
            assert (r.status, r.read()) == (200, data)
    finally:
        c.close()


def test_tls_1_1_refused(serve, cert):
    certfile, keyfile = cert
    s = serve("http_apps:hello", lifespan="off", certfile=certfile, keyfile=keyfile)
    # The worker's context says TLS 1.2 at least (Debian's OpenSSL security
    # level refuses 1.1 too; the context must not rely on it).
    s.worker.exec("import erlang._http, ssl")
    assert s.worker.eval("erlang._http._servers[0].ssl.minimum_version == ssl.TLSVersion.TLSv1_2")
    ctx = client_ctx(certfile)
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    assert https_get(s.port, certfile, "/")[0] == 200


def test_plain_http_to_tls_port_is_closed_cleanly(serve, cert):
    certfile, keyfile = cert
    s = serve("http_apps:hello", lifespan="off", certfile=certfile, keyfile=keyfile)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        try:
            while True:
                chunk = raw.recv(4096)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
    assert b"Hello" not in got and len(got) < 4096  # no HTTP answer; at most a TLS alert
    # The worker still serves, over TLS.
    assert https_get(s.port, certfile, "/")[:2] == (200, b"Hello, world!")
    assert s.worker.call("erlang._http", "wait_serving") is True


def test_wss_echo(serve, cert):
    certfile, keyfile = cert
    s = serve("http_ws_apps:app", certfile=certfile, keyfile=keyfile)

    async def go():
        async with websockets.connect(f"wss://127.0.0.1:{s.port}/echo",
                                      ssl=client_ctx(certfile)) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            big = os.urandom(200_000)
            await ws.send(big)
            assert await ws.recv() == big
        async with websockets.connect(f"wss://127.0.0.1:{s.port}/scope",
                                      ssl=client_ctx(certfile)) as ws:
            return json.loads(await ws.recv())

    scope = asyncio.run(asyncio.wait_for(go(), 30))
    assert scope["scheme"] == "wss"


def test_wsgi_url_scheme_https(serve, cert):
    certfile, keyfile = cert
    s = serve("http_wsgi_apps:app", interface="wsgi", certfile=certfile, keyfile=keyfile)
    status, body, _, _ = https_get(s.port, certfile, "/environ")
    assert status == 200, body
    assert json.loads(body)["wsgi.url_scheme"] == "https"


def test_client_certificates_with_verify_peer(serve, cert, tmp_path):
    certfile, keyfile = cert
    # The server's own cert doubles as the client CA and the client's cert.
    s = serve("http_apps:hello", lifespan="off", certfile=certfile, keyfile=keyfile,
              cacertfile=certfile, verify="verify_peer")
    ctx = client_ctx(certfile)
    ctx.load_cert_chain(certfile, keyfile)
    c = http.client.HTTPSConnection("127.0.0.1", s.port, timeout=10, context=ctx)
    c.request("GET", "/")
    assert c.getresponse().status == 200
    c.close()
    # Without a client certificate: refused in the handshake (TLS 1.3 may
    # report it on the first read).
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        c = http.client.HTTPSConnection("127.0.0.1", s.port, timeout=10,
                                        context=client_ctx(certfile))
        c.request("GET", "/")
        c.getresponse().read()


def start_error(spawn, port, **opts):
    w = spawn()
    with pytest.raises(pyport_proto.RemoteError) as e:
        w.exec("import erlang._http\n"
               f"erlang._http.start('http_apps:hello', '127.0.0.1:{port}', {opts!r})")
    return str(e.value)


def test_bad_key_fails_the_start_naming_it(spawn, cert, tmp_path):
    certfile, keyfile = cert
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    port = free_port()
    msg = start_error(spawn, port, certfile=certfile, keyfile=str(bad))
    assert "TLS" in msg and str(bad) in msg, msg
    msg = start_error(spawn, port, certfile=str(bad), keyfile=keyfile)
    assert f"certfile {bad}" in msg, msg
    msg = start_error(spawn, port, certfile=certfile, keyfile=str(tmp_path / "none.pem"))
    assert "none.pem" in msg, msg
    # Nothing was bound: the port is free.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


@pytest.mark.parametrize("app,opts", [("http_apps:hello", {"lifespan": "off"}),
                                      ("http_wsgi_apps:app", {"interface": "wsgi"})])
def test_connection_close_ends_the_tls_connection(serve, cert, app, opts):
    """Connection: close: the response, then close_notify and EOF."""
    certfile, keyfile = cert
    s = serve(app, certfile=certfile, keyfile=keyfile, **opts)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
        with client_ctx(certfile).wrap_socket(raw, server_hostname="127.0.0.1") as t:
            t.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = b""
            while True:
                chunk = t.recv(65536)
                if not chunk:
                    break
                got += chunk
    assert got.startswith(b"HTTP/1.1 ") and got.endswith(b"\r\n\r\n" + got.split(b"\r\n\r\n", 1)[1]), got


def test_file_wrapper_over_tls_is_read_and_encrypted(serve, cert, tmp_path):
    """wsgi.file_wrapper (loop.sendfile) over TLS: no os.sendfile (the bytes
    must be encrypted), the file whole and exact."""
    certfile, keyfile = cert
    data = os.urandom(3 * 1024 * 1024 + 17)
    f = tmp_path / "blob"
    f.write_bytes(data)
    s = serve("http_sendfile_apps:app", interface="wsgi", certfile=certfile, keyfile=keyfile)
    status, body, _, _ = https_get(s.port, certfile, f"/file?path={f}")
    assert status == 200 and body == data
    assert https_get(s.port, certfile, "/sent")[1] == b"0 0"  # os.sendfile never called
