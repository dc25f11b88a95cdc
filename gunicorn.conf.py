"""gunicorn settings for `make run` and production (`gunicorn wsgi:app` reads this file).

The block producer runs as one child process of the gunicorn master, so a node
has exactly one whatever the number of workers.

Chat (Socket.IO over WebSocket) holds one gthread thread per open socket, so
GUNICORN_THREADS bounds open chats plus requests per worker. Several workers (or
servers) relay chat events through SOCKETIO_MESSAGE_QUEUE (Redis); clients use the
WebSocket transport only, so no sticky sessions are needed.
"""

import os
import subprocess
import sys

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
    cmd = [sys.executable, "-m", "flask", "--app", "wsgi", "medledger", "producer"]
    _producer.append(subprocess.Popen(cmd))  # noqa: S603 (fixed argv, no shell)
    server.log.info("started block producer (pid %s)", _producer[-1].pid)


def on_exit(server):
    for process in _producer:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def post_worker_init(worker):
    # The clinical vocabularies and the HPO graph take seconds to load: load them before the worker takes requests,
    # so that no request waits for them and "answering" means ready (a consortium being founded
    # starts its slots once every node answers).
    from core.clinical import load_vocabulary
    from core.matching import HpoGraph

    load_vocabulary()
    HpoGraph.load()
