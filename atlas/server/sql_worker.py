"""User SQL of the web atlas in worker processes, so one query cannot take the server's memory or time.

A DuckDB memory limit bounds what DuckDB's buffer manager holds, not everything a query makes: a single huge
value is built and converted to Arrow outside it and briefly took the server past 1 GB. So the /sql page, its JSON
and CSV twins and an edit's SQL concept list run their query in a worker: a child process
(`python -m atlas.server.sql_worker`) with its own read-only reader of the atlas (the same sandboxed views, time
limit, row and byte caps, DuckDB memory limit), its address space limited (RLIMIT_AS), and watched by the server:
past its deadline (the query's time limit and a grace) or past WORKER_RSS of resident memory it is killed and the
request gets one line. Rows come back as Arrow IPC batches over a pipe while they are made, so a CSV export still
streams. Workers stay warm between queries (starting one takes about a second): one is started with the server,
more on demand up to `size`; a killed one is replaced when next needed.

The pipe carries frames: a kind byte, the payload's length (8 bytes, little-endian) and the payload: `R` the
worker is ready, `S` a result's Arrow schema, `B` a record batch, `D` done (JSON: truncated), `E` an error (JSON:
the AtlasError's class name and its one line).
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from atlas import errors as atlas_errors
from atlas.errors import AtlasError, UnavailableError
from atlas.server.errors import WorkerDied
from atlas.store import errors as store_errors
from atlas.store.errors import QueryMemoryError, QueryTimeoutError, SqlError
from atlas.store.limits import MAX_RESULT_BYTES, MAX_ROWS, SQL_MEMORY_LIMIT, TIMEOUT
from atlas.store.views import QueryResult, ResultStream, check_limits

ADDRESS_HEADROOM = 1 << 30
"""Address space a worker may add to what it has once its reader is open and warm (RLIMIT_AS): DuckDB's threads and
allocator reserve a lot they never touch (about 2 GB with two threads), so the real bound on memory is WORKER_RSS;
this one stops a runaway allocation between two looks at the RSS."""
WORKER_RSS = 1 << 30
"""Resident memory a worker may reach; the server kills it past this."""
GRACE_SECONDS = 2.0
"""How long after a query's time limit the server waits for the worker's own one-line answer before killing it."""
START_SECONDS = 60.0
"""How long a new worker may take to open the atlas."""
POLL_SECONDS = 0.02
_HEADER = struct.Struct("<cQ")


def _error(kind: str, message: str) -> AtlasError:
    """The AtlasError of class `kind` (a name from atlas.store.errors or atlas.errors) carrying `message`."""
    cls = getattr(store_errors, kind, None) or getattr(atlas_errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, AtlasError)):
        cls = SqlError
    err = cls.__new__(cls)
    Exception.__init__(err, message)  # the subclasses' own __init__ build the message this already is
    return err


class _Worker:
    """One child process and its pipe."""

    def __init__(self, root: Path, threads: int | None) -> None:
        command = [sys.executable, "-m", "atlas.server.sql_worker", str(root), str(threads or 0)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        self._buffer = b""
        self.ready = False

    def send(self, request: dict) -> None:
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()

    def frame(self, deadline: float, timeout: float | None) -> tuple[bytes, bytes]:
        """The next frame (kind, payload); kills the worker and raises past `deadline` (QueryTimeoutError of
        `timeout`, or WorkerDied when `timeout` is None: starting) or past WORKER_RSS (QueryMemoryError)."""
        head = self._read(_HEADER.size, deadline, timeout)
        kind, size = _HEADER.unpack(head)
        return kind, self._read(size, deadline, timeout)

    def _read(self, n: int, deadline: float, timeout: float | None) -> bytes:
        fd = self.proc.stdout.fileno()
        while len(self._buffer) < n:
            if time.monotonic() > deadline:
                self.kill()
                raise QueryTimeoutError(timeout) if timeout is not None else \
                    WorkerDied(f"the SQL worker did not start within {START_SECONDS:g} s: try again")
            if _rss(self.proc.pid) > WORKER_RSS:
                self.kill()
                raise QueryMemoryError(f"{WORKER_RSS >> 20} MiB")
            if select.select([fd], [], [], POLL_SECONDS)[0]:
                chunk = os.read(fd, max(n - len(self._buffer), 1 << 16))
                if not chunk:
                    self.kill()
                    raise WorkerDied(f"the SQL worker stopped (exit code {self.proc.returncode}): "
                                     + ("it could not open the atlas" if timeout is None else
                                        "it ran out of memory or crashed; filter on block, t and latent or image_id, "
                                        "or aggregate less at once"))
                self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.ready = False

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


def _address_space() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


class SqlWorkers:
    """A pool of warm SQL workers over one atlas (see the module docstring)."""

    def __init__(self, root: str | Path, threads: int | None = None, size: int = 2) -> None:
        self.root, self.threads, self.size = Path(root), threads, size
        self._idle: list[_Worker] = [_Worker(self.root, threads)]
        self._count = 1
        self._cond = threading.Condition()
        self._closed = False

    def _acquire(self, wait: float) -> _Worker:
        deadline = time.monotonic() + wait
        with self._cond:
            while not self._idle and self._count >= self.size:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise UnavailableError(f"all {self.size} SQL workers are busy: try again in a moment")
                self._cond.wait(left)
            if self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    return worker
                worker.kill()
            else:
                self._count += 1
        try:
            return _Worker(self.root, self.threads)
        except OSError as err:
            self._gone()
            raise UnavailableError(f"cannot start an SQL worker ({err.strerror or err})") from None

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            if worker.alive and not self._closed:
                self._idle.append(worker)
            else:
                self._count -= 1
            self._cond.notify()

    def _gone(self) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify()

    def stream(self, query: str, timeout: float = TIMEOUT, max_rows: int | None = MAX_ROWS,
               max_bytes: int = MAX_RESULT_BYTES) -> WorkerStream:
        """User SQL run by a worker, as Arrow batches read while they come (like atlas.store.views.SqlStream: its
        errors before the first row raise here, later ones while iterating); use it in a `with` block."""
        check_limits(timeout, max_rows, max_bytes)
        worker = self._acquire(timeout)
        try:
            if not worker.ready:
                kind, _ = worker.frame(time.monotonic() + START_SECONDS, None)
                worker.ready = kind == b"R"
            deadline = time.monotonic() + timeout + GRACE_SECONDS
            worker.send({"q": query, "timeout": timeout, "max_rows": max_rows, "max_bytes": max_bytes})
            kind, payload = worker.frame(deadline, timeout)
            if kind == b"E":
                found = json.loads(payload)
                raise _error(found["type"], found["message"])
            schema = pa.ipc.read_schema(pa.py_buffer(payload))
        except BaseException:
            self._release(worker)
            raise
        return WorkerStream(self, worker, schema, deadline, timeout)

    def sql(self, query: str, timeout: float = TIMEOUT, max_rows: int | None = MAX_ROWS,
            max_bytes: int = MAX_RESULT_BYTES) -> QueryResult:
        """User SQL run by a worker, whole (like Atlas.sql)."""
        return QueryResult.read(lambda: self.stream(query, timeout, max_rows, max_bytes))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for worker in idle:
            worker.kill()


class WorkerStream(ResultStream):
    """The batches of one query a worker runs; iterating to the end hands the worker back, closing earlier kills it
    (it is still sending)."""

    def __init__(self, pool: SqlWorkers, worker: _Worker, schema: pa.Schema, deadline: float, timeout: float) -> None:
        self._pool, self._worker, self._deadline, self._timeout = pool, worker, deadline, timeout
        self.schema = schema
        self.truncated = False
        self._done = False

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            while not self._done:
                kind, payload = self._worker.frame(self._deadline, self._timeout)
                if kind == b"B":
                    yield pa.ipc.read_record_batch(pa.py_buffer(payload), self.schema)
                    continue
                self._done = True
                found = json.loads(payload)
                if kind == b"E":
                    raise _error(found["type"], found["message"])
                self.truncated = bool(found["truncated"])
        finally:
            self.close()

    def close(self) -> None:
        if self._worker is None:
            return
        worker, self._worker = self._worker, None
        if not self._done:
            worker.kill()
        self._pool._release(worker)


def _send(out: object, kind: bytes, payload: bytes | pa.Buffer) -> None:
    out.write(_HEADER.pack(kind, len(payload)))
    out.write(payload)
    out.flush()


def serve(root: str, threads: int) -> None:
    """The worker's loop: one JSON request per line on stdin, its frames on stdout."""
    import resource

    from atlas.store import open_atlas

    out = sys.stdout.buffer
    with open_atlas(root, threads=threads or None, memory_limit=SQL_MEMORY_LIMIT) as atlas:
        atlas.sql("SELECT count(*) FROM images")  # warm: DuckDB's threads and the snapshot's tables are in place
        limit = _address_space() + ADDRESS_HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        _send(out, b"R", b"")
        for line in sys.stdin.buffer:
            request = json.loads(line)
            try:
                with atlas.sql_stream(request["q"], timeout=request["timeout"], max_rows=request["max_rows"],
                                      max_bytes=request["max_bytes"]) as result:
                    _send(out, b"S", result.schema.serialize())
                    for batch in result:
                        _send(out, b"B", batch.serialize())
                    done = {"truncated": result.truncated}
                _send(out, b"D", json.dumps(done).encode())
            except AtlasError as err:
                _send(out, b"E", json.dumps({"type": type(err).__name__, "message": err.message}).encode())
            except MemoryError:
                _send(out, b"E", json.dumps({"type": "QueryMemoryError", "message": QueryMemoryError(
                    f"{ADDRESS_HEADROOM >> 20} MiB of address space").message}).encode())
            except Exception as err:  # noqa: BLE001 - a bug: the server answers it in one line, the worker goes on
                first = (str(err).splitlines() or [""])[0][:200]
                _send(out, b"E", json.dumps({"type": "SqlError", "message": f"internal error of the SQL worker "
                                             f"({type(err).__name__}: {first})"}).encode())


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
