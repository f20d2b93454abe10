"""A Python client for the pyport wire protocol (proto/PROTOCOL.md).

It is the third codec next to the C++ and the Erlang ones, built on Debian's
python3-msgpack with extension hooks for the term mapping, and the driver the
harness tests and ``tools/pyport-run`` use to talk to a real ``pyport_worker``
through its pipes, without an Erlang VM.

    with Worker(paths=["mydir"]) as w:
        w.call("math", "sqrt", [16])        # -> 4.0
        w.exec("x = 1", ns=7)
        w.eval("x + 1", ns=7)               # -> 2

Raw access for attack tests: ``send_bytes``, ``send_frame``, ``read_frame``.
"""
from __future__ import annotations

import collections
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterable, NamedTuple

import msgpack

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME_DIR = os.path.join(REPO, "python_runtime")
if RUNTIME_DIR not in sys.path:
    sys.path.insert(0, RUNTIME_DIR)
from erlang import Atom, Pid, Ref, Term  # noqa: E402  (needs the path above)

PROTOCOL_VERSION = 1

# Frame kinds.
HELLO, CALL, CAST, EVAL, EXEC, INTERRUPT, CONTROL, SHUTDOWN = 0, 1, 2, 3, 4, 8, 11, 15
CANCEL, STREAM_START, STREAM_CREDIT = 5, 6, 7
REPLY, MESSAGE = 9, 10
BATCH = 12
RESULT, ERROR, LOG = 16, 17, 18
REQUEST, NOTIFY, SCHEDULE = 19, 20, 21
STREAM_CHUNK, STREAM_END = 24, 25

# Extension types.
EXT_ATOM, EXT_TUPLE, EXT_BIGINT, EXT_BYTES, EXT_TERM = 1, 2, 3, 4, 5
# Bytes in a worker's payload file (PROTOCOL.md, "Payloads").
EXT_PAYLOAD = 7

INT_MIN, UINT_MAX = -(1 << 63), (1 << 64) - 1
DEFAULT_TIMEOUT = 60.0


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


# A timeout argument meaning "the Worker's own timeout"; None means forever.
DEFAULT: Any = _Default()

# First byte after 131 in external term format, to tell pids and references
# from other terms (erts/emulator/beam/external.h).
_PID_TAGS = {88, 103}          # NEW_PID_EXT, PID_EXT
_REF_TAGS = {90, 114, 101}     # NEWER_REFERENCE_EXT, NEW_REFERENCE_EXT, REFERENCE_EXT


class ProtocolError(Exception):
    """The worker wrote something the protocol does not allow."""


class WorkerNotFound(Exception):
    """No worker executable where we looked."""


class WorkerExited(Exception):
    """The worker's output reached end of file (it exited or was killed)."""

    def __init__(self, returncode: int | None, waiting_for: str = ""):
        self.returncode = returncode
        detail = describe_exit(returncode)
        super().__init__(f"worker {detail}" + (f" while waiting for {waiting_for}" if waiting_for else ""))


class RemoteError(Exception):
    """An ``ERROR`` frame: a Python exception in the worker, or a protocol error."""

    def __init__(self, id: int, type: str, message: str, traceback: str):
        self.id, self.type, self.message, self.traceback = id, type, message, traceback
        super().__init__(f"{type}: {message}")


def describe_exit(returncode: int | None) -> str:
    """'exited with status 3', 'killed by signal SIGSEGV (11)', ..."""
    if returncode is None:
        return "closed its output but has not exited"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {name} ({-returncode})"
    return f"exited with status {returncode}"


# ---------------------------------------------------------------- encoding

def _bigint_payload(n: int) -> bytes:
    mag = abs(n)
    return bytes([1 if n < 0 else 0]) + mag.to_bytes((mag.bit_length() + 7) // 8, "big")


def _default(obj: Any) -> Any:
    # strict_types sends every subclass here, which is what lets Atom (a str)
    # and tuple (else packed as an array) get their extension types.
    if isinstance(obj, Atom):
        return msgpack.ExtType(EXT_ATOM, obj.encode("utf-8"))
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, tuple):
        return msgpack.ExtType(EXT_TUPLE, encode(list(obj)))
    if isinstance(obj, int):
        if INT_MIN <= obj <= UINT_MAX:
            return int(obj)
        return msgpack.ExtType(EXT_BIGINT, _bigint_payload(obj))
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, Term):
        return msgpack.ExtType(EXT_TERM, obj.etf)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, (set, frozenset, list)):
        return list(obj)
    if isinstance(obj, dict):
        return dict(obj)
    raise TypeError(f"cannot convert {type(obj).__name__} to an Erlang term")


def encode(value: Any) -> bytes:
    """One value as msgpack, in the shortest forms, per the term mapping."""
    return msgpack.packb(value, default=_default, strict_types=True, use_bin_type=True)


def encode_frame(kind: int, id: int, *fields: Any) -> bytes:
    """A whole frame: length prefix and ``[Kind, Id, Fields...]``."""
    payload = encode([kind, id, *fields])
    return struct.pack(">I", len(payload)) + payload


# ---------------------------------------------------------------- decoding

class _MarkedBytes(bytes):
    """ext 4 payload: stays bytes where a plain bin would become str."""


def _plain(v: Any) -> Any:
    # A bin is str when it is valid UTF-8 (PROTOCOL.md); the hooks below run
    # this on every element of every array and map.
    t = type(v)
    if t is bytes:
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return v
    if t is _MarkedBytes:
        return bytes(v)
    return v


def _list_hook(items: list) -> list:
    return [_plain(x) for x in items]


def _pairs_hook(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        k = _plain(k)
        try:
            out[k] = _plain(v)
        except TypeError:
            raise ValueError(f"map key {k!r} has no hashable Python form") from None
    return out


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_ATOM:
        return Atom(data.decode("utf-8"))
    if code == EXT_TUPLE:
        items = decode(data)
        if type(items) is not list:
            raise ValueError("tuple ext payload is not an array")
        return tuple(items)
    if code == EXT_BIGINT:
        # An empty magnitude is a (non-shortest) zero, which decoders accept.
        if not data or data[0] not in (0, 1):
            raise ValueError(f"malformed bigint ext payload {data!r}")
        mag = int.from_bytes(data[1:], "big")
        return -mag if data[0] else mag
    if code == EXT_BYTES:
        return _MarkedBytes(data)
    if code == EXT_TERM:
        if len(data) < 2 or data[0] != 131:
            raise ValueError("term ext payload is not external term format")
        cls = Pid if data[1] in _PID_TAGS else Ref if data[1] in _REF_TAGS else Term
        return cls(bytes(data))
    if code == EXT_PAYLOAD and len(data) == 17:
        return Payload(data[0], int.from_bytes(data[1:9], "big"), int.from_bytes(data[9:], "big"))
    raise ValueError(f"unknown ext type {code}")


class Payload(NamedTuple):
    """An ext 7 placeholder: `length` bytes at `offset` of the payload file."""
    form: int
    offset: int
    length: int


def decode(data: bytes) -> Any:
    """Exactly one msgpack value (trailing bytes are an error)."""
    return _plain(msgpack.unpackb(
        data, raw=False, strict_map_key=False, ext_hook=_ext_hook,
        list_hook=_list_hook, object_pairs_hook=_pairs_hook))


# ---------------------------------------------------------------- frames

class Frame(NamedTuple):
    kind: int
    id: int
    fields: list
    raw: bytes          # the payload as it came, without the length prefix

    @property
    def name(self) -> str:
        return _KIND_NAMES.get(self.kind, f"kind {self.kind}")


_KIND_NAMES = {HELLO: "HELLO", RESULT: "RESULT", ERROR: "ERROR", LOG: "LOG",
               REQUEST: "REQUEST", NOTIFY: "NOTIFY", SCHEDULE: "SCHEDULE",
               STREAM_CHUNK: "STREAM_CHUNK", STREAM_END: "STREAM_END"}

# Field types of the frames a worker may send, after Kind and Id.
_SHAPES = {
    HELLO: (int, str, int, dict),
    RESULT: (object,),
    ERROR: (str, str, str),
    LOG: (str, str),
    REQUEST: (str, list),
    NOTIFY: (str, list),
    SCHEDULE: (str, object),
    STREAM_CHUNK: (object,),
    STREAM_END: (),
}


def parse_frame(payload: bytes) -> Frame:
    """Decodes and checks one worker-to-owner frame; ProtocolError if bad."""
    try:
        value = decode(payload)
    except Exception as e:
        raise ProtocolError(f"undecodable frame ({e}): {payload[:64]!r}") from None
    if type(value) is not list or len(value) < 2:
        raise ProtocolError(f"frame is not an array [Kind, Id, ...]: {value!r:.200}")
    kind, id = value[0], value[1]
    if type(kind) is not int or type(id) is not int or not 0 <= id <= UINT_MAX:
        raise ProtocolError(f"frame has a bad kind or id: {value!r:.200}")
    shape = _SHAPES.get(kind)
    if shape is None:
        raise ProtocolError(f"frame of unknown kind {kind}: {value!r:.200}")
    fields = value[2:]
    if len(fields) != len(shape) or not all(isinstance(f, t) for f, t in zip(fields, shape)):
        raise ProtocolError(f"{_KIND_NAMES[kind]} frame has wrong fields: {value!r:.200}")
    if kind in (HELLO, LOG, NOTIFY) and id != 0:
        raise ProtocolError(f"{_KIND_NAMES[kind]} frame with id {id}, not 0")
    return Frame(kind, id, fields, payload)


class Hello(NamedTuple):
    version: int
    python_version: str
    os_pid: int
    capabilities: dict


# ---------------------------------------------------------------- the worker

def locate_worker(explicit: str | None = None) -> str:
    """The worker executable: ``explicit``, else $PYPORT_WORKER, else
    build/pyport_worker, else erl/priv/pyport_worker in this repository."""
    named = explicit or os.environ.get("PYPORT_WORKER")
    if named:
        if not os.access(named, os.X_OK):
            raise WorkerNotFound(f"worker executable {named!r} does not exist or is not executable")
        return named
    tried = [os.path.join(REPO, "build", "pyport_worker"),
             os.path.join(REPO, "erl", "priv", "pyport_worker")]
    for path in tried:
        if os.access(path, os.X_OK):
            return path
    raise WorkerNotFound("no pyport_worker executable; build it (make build) or set "
                         "PYPORT_WORKER. Looked at: " + ", ".join(tried))


_EOF = object()


class Worker:
    """One running ``pyport_worker``, driven through its stdin and stdout.

    ``timeout`` bounds every wait (None: wait forever); the HELLO has its own
    ``hello_timeout``, so a program that is no worker cannot hang the caller.

    A reader thread takes frames off the worker's stdout as they come: LOG
    frames go to ``logs`` (and to ``on_log``, called on the reader thread);
    REQUEST and NOTIFY frames (Python asking Erlang) go to ``on_request``
    when given (called on the reader thread; it may answer with
    ``send_frame(REPLY, ...)``); every other frame waits in arrival order
    for ``wait``/``read_frame``.
    """

    def __init__(self, executable: str | None = None, *, paths: Iterable[str] = (),
                 runtime: str = RUNTIME_DIR, max_frame_size: int | None = None,
                 args: Iterable[str] = (), env: dict | None = None, cwd: str | None = None,
                 stderr: Any = None, on_log: Callable[[str, str], None] | None = None,
                 on_request: Callable[["Frame"], None] | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT, hello_timeout: float = DEFAULT_TIMEOUT,
                 env_frame: dict | None = None):
        self.executable = locate_worker(executable)
        self.argv = [self.executable, "--runtime", runtime]
        for p in paths:
            self.argv += ["--path", p]
        if max_frame_size is not None:
            self.argv += ["--max-frame-size", str(max_frame_size)]
        self.argv += list(args)
        self.timeout = timeout
        self.logs: list[tuple[str, str]] = []
        self.on_log = on_log
        self.on_request = on_request
        self._cond = threading.Condition()
        self._incoming: collections.deque = collections.deque()   # frames, errors, _EOF
        self._write_lock = threading.Lock()
        self._next_id = 1
        self.max_frame_size: int | None = None   # from the hello
        self.process = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=stderr, env=env, cwd=cwd, bufsize=0)
        self.pid = self.process.pid
        if env_frame is not None:
            # --env-stdin: the sandbox's environment, first thing on stdin.
            payload = b"\0".join(f"{k}={v}".encode() for k, v in env_frame.items())
            self.process.stdin.write(struct.pack(">I", len(payload)) + payload)
        self._reader = threading.Thread(target=self._read_loop, name=f"pyport-reader-{self.pid}",
                                        daemon=True)
        self._reader.start()
        try:
            self.hello = self._read_hello(hello_timeout)
        except BaseException:
            self.kill()
            raise

    # -- lifecycle

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            try:
                self.close()
            except Exception:
                self.kill()

    def close(self, timeout: float | None = DEFAULT) -> int:
        """Closes the worker's stdin and waits for it to exit; its exit status.
        Kills it (and raises TimeoutError) if it does not exit in time."""
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        return self.wait_exit(timeout, kill_on_timeout=True)

    def shutdown(self, timeout: float | None = DEFAULT) -> int:
        """Sends SHUTDOWN and waits for the worker to exit; its exit status."""
        self.send_frame(SHUTDOWN, 0)
        return self.wait_exit(timeout, kill_on_timeout=True)

    def kill(self) -> int:
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait()

    def wait_exit(self, timeout: float | None = DEFAULT, kill_on_timeout: bool = False) -> int:
        try:
            rc = self.process.wait(self._seconds(timeout))
        except subprocess.TimeoutExpired:
            if kill_on_timeout:
                self.kill()
            raise TimeoutError(f"worker {self.pid} did not exit") from None
        self._reader.join(5)
        if not self._reader.is_alive():
            self.process.stdout.close()
        return rc

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    # -- writing

    def new_id(self) -> int:
        with self._write_lock:
            id, self._next_id = self._next_id, self._next_id + 1
        return id

    def send_bytes(self, data: bytes) -> None:
        """Writes raw bytes (a frame or anything else) to the worker's stdin."""
        view = memoryview(data)
        with self._write_lock:
            try:
                while view:  # a raw pipe write may be partial
                    view = view[self.process.stdin.write(view):]
            except BrokenPipeError:
                raise WorkerExited(self._exit_status(), "the worker to read a frame") from None

    def send_frame(self, kind: int, id: int, *fields: Any) -> None:
        self.send_bytes(encode_frame(kind, id, *fields))

    def request(self, kind: int, *fields: Any) -> int:
        """Sends a request with a fresh id and returns the id."""
        id = self.new_id()
        self.send_frame(kind, id, *fields)
        return id

    # -- reading

    def _read_exact(self, n: int) -> bytes | None:
        chunks, got = [], 0
        while got < n:
            chunk = self.process.stdout.read(n - got)
            if not chunk:
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _read_loop(self) -> None:
        try:
            while True:
                head = self._read_exact(4)
                if head is None:
                    break
                size = struct.unpack(">I", head)[0]
                payload = self._read_exact(size)
                if payload is None:
                    self._push(ProtocolError(f"output ended inside a frame of {size} bytes"))
                    break
                try:
                    frame = parse_frame(payload)
                except ProtocolError as e:
                    self._push(e)
                    continue
                if self.max_frame_size is not None and size > self.max_frame_size:
                    self._push(ProtocolError(f"{frame.name} frame of {size} bytes exceeds the "
                                             f"worker's max_frame_size {self.max_frame_size}"))
                    continue
                if frame.kind == HELLO:
                    caps = frame.fields[3]
                    if type(caps.get("max_frame_size")) is int:
                        self.max_frame_size = caps["max_frame_size"]
                if frame.kind == LOG:
                    with self._cond:
                        self.logs.append((frame.fields[0], frame.fields[1]))
                        self._cond.notify_all()
                    if self.on_log is not None:
                        self.on_log(frame.fields[0], frame.fields[1])
                elif frame.kind in (REQUEST, NOTIFY) and self.on_request is not None:
                    self.on_request(frame)
                else:
                    self._push(frame)
        except Exception as e:  # an on_log failure or a read error: report, then stop
            self._push(e)
        self._push(_EOF)

    def _push(self, item: Any) -> None:
        with self._cond:
            self._incoming.append(item)
            self._cond.notify_all()

    def _exit_status(self) -> int | None:
        try:
            return self.process.wait(5)
        except subprocess.TimeoutExpired:
            return None

    def _seconds(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is DEFAULT else timeout

    def _deadline(self, timeout: float | None) -> float | None:
        seconds = self._seconds(timeout)
        return None if seconds is None else time.monotonic() + seconds

    def _wait_until(self, deadline: float | None, what: str) -> None:
        """One wait on the condition (held by the caller) for news."""
        if deadline is None:
            self._cond.wait()
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {what} from worker {self.pid}")
        self._cond.wait(left)

    def _take(self, match: Callable[[Frame], bool], timeout: float | None, what: str) -> Frame:
        deadline = self._deadline(timeout)
        with self._cond:
            while True:
                ended = False
                for i, item in enumerate(self._incoming):
                    if item is _EOF:
                        ended = True
                        break
                    if isinstance(item, Exception):
                        del self._incoming[i]
                        raise item
                    if match(item):
                        del self._incoming[i]
                        return item
                if ended:
                    break
                self._wait_until(deadline, what)
        raise WorkerExited(self._exit_status(), what)

    def read_frame(self, timeout: float | None = DEFAULT) -> Frame:
        """The next frame that is not LOG and was not taken by ``wait``."""
        return self._take(lambda f: True, timeout, "a frame")

    def wait(self, id: int, timeout: float | None = DEFAULT) -> Frame:
        """The answer (RESULT or ERROR) to request ``id``; other frames stay
        queued for later ``wait``/``read_frame`` calls."""
        return self._take(lambda f: f.id == id and f.kind in (RESULT, ERROR), timeout,
                          f"the answer to request {id}")

    def result(self, id: int, timeout: float | None = DEFAULT) -> Any:
        """The value of the answer to ``id``; RemoteError for an ERROR."""
        return value_of(self.wait(id, timeout))

    def wait_for_log(self, predicate: Callable[[str, str], bool],
                     timeout: float | None = DEFAULT) -> tuple[str, str]:
        """The first LOG line (level, message) for which predicate is true,
        waiting for it if needed (output is relayed asynchronously, so it may
        arrive after the answer of the call that printed it)."""
        deadline = self._deadline(timeout)
        seen = 0
        with self._cond:
            while True:
                for entry in self.logs[seen:]:
                    if predicate(*entry):
                        return entry
                seen = len(self.logs)
                if any(item is _EOF for item in self._incoming):
                    break
                self._wait_until(deadline, "matching LOG line")
        raise WorkerExited(self._exit_status(), "a LOG line")

    # -- requests

    def call(self, module: str, function: str, args: Iterable = (), kwargs: dict | None = None,
             timeout: float | None = DEFAULT) -> Any:
        return self.result(self.request(CALL, module, function, list(args), dict(kwargs or {})),
                           timeout)

    def cast(self, module: str, function: str, args: Iterable = (), kwargs: dict | None = None) -> None:
        self.request(CAST, module, function, list(args), dict(kwargs or {}))

    def eval(self, code: str, locals: dict | None = None, ns: int = 0,
             timeout: float | None = DEFAULT) -> Any:
        return self.result(self.request(EVAL, code, locals, ns), timeout)

    def exec(self, code: str, ns: int = 0, timeout: float | None = DEFAULT) -> None:
        return self.result(self.request(EXEC, code, ns), timeout)

    def control(self, op: str, arg: Any = None, timeout: float | None = DEFAULT) -> Any:
        return self.result(self.request(CONTROL, op, arg), timeout)

    def interrupt(self, id: int) -> None:
        """Asks the worker to raise KeyboardInterrupt in request ``id``."""
        self.send_frame(INTERRUPT, id)

    def stream_start(self, module: str, function: str, args: Iterable = (),
                     kwargs: dict | None = None, credit: int = 64) -> int:
        """Starts a stream of module.function(*args, **kwargs) with ``credit``
        items of credit; returns its id (see ``stream_next``)."""
        return self.request(STREAM_START, credit, [CALL, module, function, list(args),
                                                    dict(kwargs or {})])

    def stream_eval(self, code: str, locals: dict | None = None, ns: int = 0,
                    credit: int = 64) -> int:
        return self.request(STREAM_START, credit, [EVAL, code, locals, ns])

    def stream_next(self, id: int, timeout: float | None = DEFAULT) -> Frame:
        """The next frame of stream ``id``: STREAM_CHUNK, STREAM_END or ERROR."""
        return self._take(lambda f: f.id == id and f.kind in (STREAM_CHUNK, STREAM_END, ERROR),
                          timeout, f"the next item of stream {id}")

    def stream_collect(self, id: int, credit: int = 64, timeout: float | None = DEFAULT) -> list:
        """Every item of stream ``id``, granting ``credit`` more each time
        that many arrived; RemoteError if it ends with an ERROR."""
        items = []
        while True:
            frame = self.stream_next(id, timeout)
            if frame.kind == STREAM_END:
                return items
            if frame.kind == ERROR:
                value_of(frame)
            items.append(frame.fields[0])
            if len(items) % credit == 0:
                self.send_frame(STREAM_CREDIT, id, credit)

    def _read_hello(self, timeout: float) -> Hello:
        frame = self.read_frame(timeout)
        if frame.kind == ERROR and frame.id == 0 and frame.fields[0] == "StartError":
            # The worker says why it cannot start, then exits.
            message, at_fault = frame.fields[1], frame.fields[2]
            try:
                rc = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                rc = None
            raise WorkerExited(rc, f"its HELLO ({at_fault}: {message})")
        if frame.kind != HELLO:
            raise ProtocolError(f"first frame is {frame.name}, not HELLO: {frame.fields!r:.200}")
        hello = Hello(*frame.fields)
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolError(f"worker speaks protocol version {hello.version}, "
                                f"not {PROTOCOL_VERSION}")
        caps = hello.capabilities
        if (type(caps.get("max_frame_size")) is not int
                or not isinstance(caps.get("features"), list)
                or not all(isinstance(f, str) for f in caps["features"])):
            raise ProtocolError(f"HELLO capabilities need max_frame_size (uint) and features "
                                f"(array of str): {caps!r}")
        return hello


def value_of(frame: Frame) -> Any:
    """A RESULT's value, or RemoteError raised for an ERROR frame."""
    if frame.kind == RESULT:
        return frame.fields[0]
    if frame.kind == ERROR:
        raise RemoteError(frame.id, *frame.fields)
    raise ProtocolError(f"expected RESULT or ERROR, got {frame.name}")
