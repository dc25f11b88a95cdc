"""gunicorn settings for `make run` and production (`gunicorn wsgi:app` reads this file).

The block producer (with the archiver) runs as one child process of the gunicorn master, so a
node has exactly one whatever the number of workers. The master starts it before any worker
serves and refuses to start when it cannot (no node key, no database: a node that cannot seal
blocks must not accept records), restarts it when it dies, and stops it on the way out; the
producer watches the master's pid and exits when the master is gone, SIGKILL included.

Chat (Socket.IO over WebSocket) holds one gthread thread per open socket, so
GUNICORN_THREADS bounds open chats plus requests per worker. Several workers (or
servers) relay chat events through SOCKETIO_MESSAGE_QUEUE (Redis); clients use the
WebSocket transport only, so no sticky sessions are needed.
"""

import os
import select
import subprocess
import sys
import threading
import time

bind = os.environ.get("GUNICORN_BIND", f"127.0.0.1:{os.environ.get('PORT', '5000')}")
# Without a message queue, live chat events reach only sockets of the same worker: one worker.
workers = int(os.environ.get("WEB_CONCURRENCY") or (2 if os.environ.get("SOCKETIO_MESSAGE_QUEUE") else 1))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = 60
accesslog = "-"
# The path without its query string: symptom and diagnosis searches carry what a patient typed.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(D)sus'
# One control socket per server, beside its instance data: several nodes run on one machine.
control_socket = os.path.join(os.environ.get("MEDLEDGER_INSTANCE", "instance"), "gunicorn.ctl")

_producer: list[subprocess.Popen] = []


def when_ready(server):
    if workers > 1 and not os.environ.get("SOCKETIO_MESSAGE_QUEUE"):
        server.log.warning(
            "%d workers without SOCKETIO_MESSAGE_QUEUE: chat messages reach only clients of the same worker "
            "(stored ones still arrive on reconnect); set a Redis URL or WEB_CONCURRENCY=1",
            workers,
        )
    if os.environ.get("EMBEDDED_FTP") == "1":
        cmd = [sys.executable, "-m", "flask", "--app", "wsgi", "medledger", "archive", "serve-embedded"]
        _producer.append(subprocess.Popen(cmd))  # noqa: S603 (fixed argv, no shell)
        server.log.info("started the embedded FTP archive (pid %s)", _producer[-1].pid)
    if os.environ.get("MEDLEDGER_PRODUCER", "1") != "1":
        return
    producer = Producer(server.log)
    why = producer.start()
    if why is not None:
        server.log.error("refusing to start: the block producer cannot start: %s", why)
        _stop(_producer)
        raise RuntimeError(f"refusing to start: the block producer cannot start: {why}")
    server.log.info("started block producer (pid %s)", producer.pid)
    _supervised.append(producer)
    producer.supervise()


def on_exit(server):
    _stopping.set()
    _stop(_producer + [p.process for p in _supervised if p.process is not None])


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


PRODUCER_START_TIMEOUT = float(os.environ.get("PRODUCER_START_TIMEOUT", "120"))
RESTART_MAX_DELAY = 60.0  # seconds between restarts of a producer that keeps dying
HEALTHY_RUN = 60.0  # a producer that ran this long starts the delays afresh when it dies
_stopping = threading.Event()
_supervised: list["Producer"] = []


class Producer:
    """`flask medledger producer` as a child of this master: started with the master's pid (it
    exits when the master is gone) and a pipe on which it says `ready` or `error <why>`;
    restarted with growing delays (1 s, 2 s, ... 60 s) whenever it exits while the master runs."""

    def __init__(self, log):
        self.log = log
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _spawn(self, ready_fd: int | None = None) -> None:
        cmd = [sys.executable, "-m", "flask", "--app", "wsgi", "medledger", "producer", "--parent", str(os.getpid())]
        if ready_fd is not None:
            cmd += ["--ready-fd", str(ready_fd)]
        with self.lock:
            if not _stopping.is_set():
                self.process = subprocess.Popen(cmd, pass_fds=() if ready_fd is None else (ready_fd,))  # noqa: S603

    def start(self) -> str | None:
        """Start it and wait until it is ready: None, or why it is not (it is stopped then)."""
        read, write = os.pipe()
        try:
            self._spawn(write)
        finally:
            os.close(write)  # only the producer holds the write end: its exit ends the pipe
        said = b""
        with os.fdopen(read, "rb", buffering=0) as pipe:
            deadline = time.monotonic() + PRODUCER_START_TIMEOUT
            while not said.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([pipe], [], [], left)[0]:
                    _stop([self.process])
                    return (
                        f"it did not say it was ready within {PRODUCER_START_TIMEOUT:g} s (PRODUCER_START_TIMEOUT); "
                        "is another producer of this node running?"
                    )
                chunk = pipe.read(4096)
                if not chunk:
                    break
                said += chunk
        text = said.decode(errors="replace").strip()
        if text == "ready":
            return None
        _stop([self.process])
        if text.startswith("error "):
            return text.removeprefix("error ")
        return f"it exited with code {self.process.returncode} before it was ready; see its output above"

    def supervise(self) -> None:
        threading.Thread(target=self._restart_when_dead, daemon=True, name="producer-supervisor").start()

    def _restart_when_dead(self) -> None:
        failures = 0
        while True:
            started, process = time.monotonic(), self.process
            code = process.wait()
            if _stopping.is_set():
                return
            failures = 0 if time.monotonic() - started >= HEALTHY_RUN else failures
            delay = min(2.0**failures, RESTART_MAX_DELAY)
            failures += 1
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            self.log.error("the block producer (pid %s) exited (%s); restarting it in %g s", process.pid, how, delay)
            if _stopping.wait(delay):
                return
            self._spawn()
            self.log.info("restarted the block producer (pid %s)", self.pid)


def post_worker_init(worker):
    # The clinical vocabularies and the HPO graph take seconds to load: load them before the worker takes requests,
    # so that no request waits for them and "answering" means ready (a consortium being founded
    # starts its slots once every node answers).
    from core.clinical import load_vocabulary
    from core.matching import HpoGraph

    load_vocabulary()
    HpoGraph.load()
