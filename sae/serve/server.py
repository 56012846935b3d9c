"""Starting the live server: load the run once, build the app, run uvicorn (in the foreground, or on a thread)."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from activations.source import TextSource
from sae.serve.app import LOOPBACK_NAMES
from sae.serve.inspector import Inspector, reference_sentences
from sae.serve.limits import Limits

__all__ = ["ThreadedServer", "allowed_hosts", "is_loopback", "load_inspector", "run_server"]


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address to bind) is the loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The names the `Host` header may carry: the loopback names, the bound host unless it is a wildcard address,
    and `extra` (the names others reach this machine by, when it binds beyond the loopback)."""
    names = list(LOOPBACK_NAMES)
    if host not in ("0.0.0.0", "::", ""):
        names.append(host)
    for name in extra:
        if not name or "*" in name or "/" in name:
            raise ValueError(f"--allow-host takes a host name or address, got {name!r}")
        names.append(name)
    return list(dict.fromkeys(n.lower() for n in names))


def load_inspector(
    path: str,
    model: str = "",
    hook: str = "",
    device: str = "cpu",
    limits: Limits | None = None,
    text: TextSource | None = None,
    references: int = 300,
) -> tuple[Inspector, Path | None]:
    """The dictionary at `path` (a run folder, a folder in any layout, or a release / Hub id), its model, and
    (encoders) `references` passages of `text` (default: the embedded corpus) as neighbours; plus the run's browser
    folder when it has one."""
    from activations import load_model
    from sae.pretrained import load_pretrained

    sae = load_pretrained(path, hook or None, device=device)
    name = model or sae.cfg.model_name
    if not name:
        raise ValueError(f"the dictionary at {path} records no model_name: pass --model")
    adapter = load_model(name, device=device)
    sentences: list[str] = []
    if not adapter.is_causal and references > 0:
        sentences = reference_sentences(adapter, (text or TextSource()).texts(), references)
    browser = Path(path) / "browser"
    return Inspector(adapter, sae, limits or Limits(), sentences), browser if (browser / "index.html").is_file() else None


def _uvicorn(app: Any, host: str, port: int):
    import uvicorn

    # one process, one event loop: the model lives in this process's worker; uvicorn's own access log is off (ours
    # is one line per request, refusals included)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, workers=1)
    return uvicorn.Server(config)


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve `app` until interrupted; warns when `host` is not the loopback interface."""
    if not is_loopback(host):
        warnings.warn(
            f"binding {host}: the model and every run file the browser serves are reachable from other machines",
            stacklevel=2,
        )
    log = logging.getLogger("sae.serve")
    log.setLevel(logging.INFO)
    if not any(getattr(h, "_sae_serve", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        handler._sae_serve = True  # type: ignore[attr-defined]  # marks ours, so a second call adds none
        log.addHandler(handler)
    _uvicorn(app, host, port).run()


class ThreadedServer:
    """`app` served on a thread (port 0: a free one), for tests and the load benchmark: `with ThreadedServer(app) as s`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = _uvicorn(app, host, port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.host = host

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
