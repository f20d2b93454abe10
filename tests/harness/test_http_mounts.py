"""`mounts` (docs/http.md "Mounts"): several apps on one HTTP server,
longest prefix first, root_path/SCRIPT_NAME set, lifespan per ASGI mount."""
import json
import os
import socket

import pytest

from test_http import free_port, Server

# The mounted apps are the Erlang suite's (pyport_http_ext_SUITE): one copy.
APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "erl", "test",
                    "pyport_http_ext_SUITE_data")


@pytest.fixture
def serve_mounts(spawn):
    def start(mounts, app="", **opts):
        w = spawn()
        port = free_port()
        opts["mounts"] = mounts
        w.exec(f"import sys\nsys.path.insert(0, {os.path.realpath(APPS)!r})\n"
               "import erlang._http\n"
               f"erlang._http.start({app!r}, '127.0.0.1:{port}', {opts!r})")
        assert w.call("erlang._http", "wait_serving") is True
        return Server(w, port)
    return start


MOUNTS = [["/api", "http_mount_apps:api", ""],
          ["/api/admin", "http_mount_apps:admin", ""],
          ["/legacy", "http_mount_apps:wsgi", "wsgi"]]


def test_longest_prefix_wins_and_root_path_is_the_prefix(serve_mounts):
    s = serve_mounts(MOUNTS)
    status, _, body = s.get("/api/admin/users")
    assert status == 200
    assert json.loads(body) == {**json.loads(body), "app": "admin", "path": "/api/admin/users",
                                "root_path": "/api/admin"}
    status, _, body = s.get("/api/users?x=1")
    seen = json.loads(body)
    assert (seen["app"], seen["path"], seen["root_path"]) == ("api", "/api/users", "/api")
    # Whole segments only: /apix is not under /api.
    status, _, body = s.get("/apix")
    assert status == 404
    status, _, body = s.get("/api")
    assert json.loads(body)["app"] == "api"


def test_wsgi_mount_gets_script_name_and_path_info(serve_mounts):
    s = serve_mounts(MOUNTS)
    status, _, body = s.get("/legacy/a/b")
    assert status == 200
    assert json.loads(body) == {"app": "wsgi", "SCRIPT_NAME": "/legacy", "PATH_INFO": "/a/b"}
    status, _, body = s.get("/legacy")
    assert json.loads(body)["PATH_INFO"] == ""


def test_no_match_is_404_and_app_is_the_root_mount(serve_mounts):
    s = serve_mounts(MOUNTS)
    assert s.get("/other")[0] == 404
    s2 = serve_mounts(MOUNTS, app="http_mount_apps:root")
    status, _, body = s2.get("/other")
    seen = json.loads(body)
    assert (status, seen["app"], seen["root_path"]) == (200, "root", "")


def test_lifespan_runs_for_every_asgi_mount_with_its_own_state(serve_mounts):
    s = serve_mounts(MOUNTS + [["/", "http_mount_apps:root", ""]])
    assert s.worker.call("http_mount_apps", "lifespan_started") == ["admin", "api", "root"]
    assert json.loads(s.get("/api/x")[2])["state"] == "api"
    assert json.loads(s.get("/api/admin/x")[2])["state"] == "admin"
    assert json.loads(s.get("/x")[2])["state"] == "root"
