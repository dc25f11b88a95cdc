"""The embedded FTP archive of `make run`: a pyftpdlib server on 127.0.0.1 with generated
credentials and its files under instance/archive/. Production points ARCHIVE_FTP_URL at a
real FTP/FTPS server instead."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

DEFAULT_PORT = 2121


def credentials(instance: Path, port: int = DEFAULT_PORT) -> dict[str, Any]:
    """The embedded server's user, password and port, generated once (file mode 0600)."""
    path = instance / "embedded-ftp.json"
    data = {"user": "medledger", "password": secrets.token_urlsafe(18), "port": port}
    instance.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return json.loads(path.read_text())
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    return data


def url(instance: Path) -> str:
    found = credentials(instance)
    return f"ftp://{found['user']}:{found['password']}@127.0.0.1:{found['port']}/archive"


def serve(instance: Path) -> None:
    """Run the embedded server until interrupted."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    found = credentials(instance)
    root = instance / "ftp"
    (root / "archive").mkdir(parents=True, exist_ok=True)
    authorizer = DummyAuthorizer()
    authorizer.add_user(found["user"], found["password"], str(root), perm="elradfmwMT")
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer, "banner": "MedLedger archive"})
    handler.passive_ports = range(found["port"] + 100, found["port"] + 200)
    server = FTPServer(("127.0.0.1", found["port"]), handler)
    server.serve_forever(handle_exit=True)
