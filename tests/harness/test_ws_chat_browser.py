"""examples/ws_chat end to end in a real browser: two pages of one headless
Chromium (Debian's `chromium`), their WebSockets on two different workers
of the example's 2-worker HTTP pool, a message typed in each page shows in
the other's DOM (WebSocket -> worker -> pub/sub -> other worker -> page).

Chromium is driven over the DevTools protocol with python3-websockets (no
Selenium/Playwright: they are not in Debian)."""
import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import websockets

from test_http_websocket import REPO, start_node

CHAT = os.path.join(REPO, "examples", "ws_chat")
MAX_PAGES = 12  # pages opened at most to find one served by the other worker


def chromium_binary():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def chat_node():
    """The example's pool (chat:app, 2 workers, sys.config's options) on a free port."""
    with open(os.path.join(CHAT, "sys.config")) as f:
        config = f.read()
    assert "workers => 2" in config and '"chat:app"' in config
    yield from start_node("chat:app", CHAT, "workers => 2", "")


@pytest.fixture
def browser():
    """A headless Chromium with a throw-away profile; killed and removed after."""
    exe = chromium_binary()
    if exe is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium; tools/install-deps does)")
    tmp = tempfile.mkdtemp(prefix="pyport-chromium-")
    profile = os.path.join(tmp, "profile")
    # --no-sandbox: Chromium's sandbox refuses to run as root and needs user
    # namespaces a container may not give; the browser loads only our page.
    args = [exe, "--headless=new", "--no-sandbox", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
            "--disable-gpu", "--disable-extensions", "--disable-background-networking",
            "--disable-dev-shm-usage", "about:blank"]
    # Its log goes to a file: a pipe nobody reads could fill and stall it.
    log_path = os.path.join(tmp, "chromium.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    try:
        # With port 0 Chromium writes the port it chose and the browser
        # target's path into DevToolsActivePort.
        active = os.path.join(profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with open(active) as f:
                    lines = f.read().split()
            except FileNotFoundError:
                pass
            if len(lines) == 2:
                break
            time.sleep(0.1)
        if len(lines) != 2:
            with open(log_path, "rb") as f:
                tail = f.read()[-2000:].decode(errors="replace")
            raise AssertionError(f"chromium gave no DevTools endpoint within 30 s "
                                 f"(exit status {proc.poll()}): {tail}")
        yield f"ws://127.0.0.1:{lines[0]}{lines[1]}"
    finally:
        # The whole process group: Chromium's zygote, renderers, GPU process.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


class DevTools:
    """A minimal DevTools-protocol client: one command at a time, events skipped."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method, session=None, **params):
        n = next(self.ids)
        msg = {"id": n, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == n:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    async def open_page(self, url):
        target = (await self.call("Target.createTarget", url="about:blank"))["targetId"]
        session = (await self.call("Target.attachToTarget", targetId=target,
                                   flatten=True))["sessionId"]
        await self.call("Page.enable", session)
        await self.call("Page.navigate", session, url=url)
        return Page(self, target, session)


class Page:
    def __init__(self, devtools, target, session):
        self.devtools, self.target, self.session = devtools, target, session

    async def eval(self, expression):
        result = await self.devtools.call("Runtime.evaluate", self.session,
                                          expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def log(self):
        """The page's chat log: the lines its WebSocket's messages made."""
        return await self.eval(
            "Array.from(document.querySelectorAll('#log li'), li => li.textContent)") or []

    async def wait_log(self, pred, what, seconds=15.0):
        deadline = time.monotonic() + seconds
        while True:
            lines = await self.log()
            found = [line for line in lines if pred(line)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"page never showed {what} in {seconds} s; its log: {lines}")
            await asyncio.sleep(0.1)

    async def worker(self):
        """The OS pid of the worker serving this page's WebSocket (its welcome)."""
        line = await self.wait_log(lambda l: l.startswith("joined worker "), "its welcome")
        return int(line.split()[-1])

    async def say(self, text):
        """Types text and clicks Send, as a user would."""
        await self.eval(f"document.getElementById('msg').value = {json.dumps(text)};"
                        "document.querySelector('#f button').click(); true")

    async def close(self):
        await self.devtools.call("Target.closeTarget", targetId=self.target)


# browser first: where chromium is absent the test skips before starting a node.
def test_two_browser_pages_chat_through_two_workers(browser, chat_node):
    port = chat_node
    url = f"http://127.0.0.1:{port}/#browser"

    async def go():
        async with websockets.connect(browser, max_size=None, open_timeout=20) as ws:
            cdp = DevTools(ws)
            a = await cdp.open_page(url)
            worker_a = await a.worker()
            # SO_REUSEPORT hashes connections over the workers' sockets:
            # open pages until one's WebSocket lands on the other worker.
            b, tried = None, []
            for _ in range(MAX_PAGES):
                page = await cdp.open_page(url)
                w = await page.worker()
                tried.append(w)
                if w != worker_a:
                    b, worker_b = page, w
                    break
                await page.close()
            assert b is not None, f"{MAX_PAGES} pages all on worker {worker_a}: {tried}"
            assert worker_a != worker_b

            await a.say("hello from page A")
            got = await b.wait_log(lambda l: l.endswith(": hello from page A"), "A's message")
            assert got == f"worker {worker_a}: hello from page A"

            await b.say("and hello from page B")
            got = await a.wait_log(lambda l: l.endswith(": and hello from page B"),
                                   "B's message")
            assert got == f"worker {worker_b}: and hello from page B"
            # The sender's own page shows its message too (its worker is subscribed).
            await a.wait_log(lambda l: l.endswith(": hello from page A"), "its own message")
            # The input was read and cleared by the page's own submit handler.
            assert await a.eval("document.getElementById('msg').value") == ""

    asyncio.run(asyncio.wait_for(go(), 60))
