"""`hql-ray serve` from start to stop: Ray (a local one, started here, or a cluster's at `address`), Serve's
HTTP proxy on host:port, the application; then waiting until Ctrl-C or SIGTERM, which stop the application
and the Ray this process started within seconds, with one last line saying so."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass

from hql_ray.serving.settings import APP_NAME, ServeSettings
from hql_ray.settings.errors import InputError


class Stopped(Exception):
    """Raised in the main thread by SIGINT / SIGTERM: the user asked the server to stop."""

    def __init__(self, signum: int):
        self.signame = signal.Signals(signum).name
        super().__init__(self.signame)


@dataclass
class Endpoint:
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None  # a Ray cluster (ray://..., auto, host:port); None: a local Ray started here

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def stop_on_signals() -> None:
    """SIGINT and SIGTERM raise `Stopped` in the main thread (installed again after Ray's start: it sets its own)."""
    def handler(signum, _frame):
        raise Stopped(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def check_port(endpoint: Endpoint) -> None:
    """A local server needs its port free: say so before starting Ray rather than leave Serve retrying."""
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((endpoint.host, endpoint.port))
        except OSError as err:
            raise InputError(f"cannot listen on {endpoint.host}:{endpoint.port}: {err.strerror} (--host, --port)") from None


def start(settings: ServeSettings, endpoint: Endpoint, verbose: bool = False, auto_gpus: bool = False) -> None:
    """Ray (unless this process is connected already), Serve's proxy and the application, ready to answer.
    `auto_gpus`: on a local Ray with GPUs, give each replica one (or an equal share)."""
    import ray
    from ray import serve

    from hql_ray.serving.app import build_app

    if not verbose:  # Serve's INFO lines in this process (the workers' logs are not shown either)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    if not ray.is_initialized():
        kwargs = {"address": endpoint.address} if endpoint.address else {"address": "local", "include_dashboard": verbose}
        ray.init(log_to_driver=verbose, **kwargs)
        stop_on_signals()
    gpus = ray.cluster_resources().get("GPU", 0)
    if auto_gpus and not endpoint.address and gpus:
        settings.gpus_per_replica = 1.0 if gpus >= settings.replicas else gpus / settings.replicas
    serve.start(http_options={"host": endpoint.host, "port": endpoint.port})
    serve.run(build_app(settings.to_dict()), name=APP_NAME, route_prefix="/")


@dataclass
class Owned:
    """What this process has to undo when it stops: the local Ray it started, its connection, its application."""

    ray: bool = False  # a local Ray started here (shutting it down takes Serve and the application with it)
    connection: bool = False  # a connection opened here (to a cluster)
    application: bool = False  # deployed (or being deployed) by this process


def stop(owned: Owned) -> None:
    """Undo what `owned` says, and nothing else (a Ray this process was already connected to stays)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    if owned.ray:
        ray.shutdown()
        return
    if owned.application:
        try:
            serve.delete(APP_NAME)
        except Exception:  # noqa: BLE001 - stopped before it was deployed: nothing to delete
            pass
    if owned.connection:
        ray.shutdown()


def serve_until_stopped(settings: ServeSettings, endpoint: Endpoint, verbose: bool = False, say=None,
                        auto_gpus: bool = False) -> int:
    """Serve until Ctrl-C or SIGTERM; 0 after such a stop. `say(line)` prints a status line (stderr).
    The signal handlers are this process's again on return."""
    import ray

    say = say or (lambda line: print(f"hql-ray serve: {line}", file=sys.stderr, flush=True))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    fresh = not ray.is_initialized()
    owned = Owned(ray=fresh and endpoint.address is None, connection=fresh and endpoint.address is not None)
    stop_on_signals()
    try:
        if endpoint.address is None:
            check_port(endpoint)
        where = "a local Ray" if endpoint.address is None else f"the Ray at {endpoint.address}"
        say(f"starting {len(settings.languages)} language(s) of {settings.run_dir} on {where}")
        owned.application = True
        start(settings, endpoint, verbose, auto_gpus)
        mode = (f"at most {settings.max_adapters} adapter(s) per replica, routed by language"
                if settings.multiplexed(len(settings.languages)) else "one base per replica, every language on it")
        say(f"serving {', '.join(settings.languages)} at {endpoint.url} ({settings.replicas} replica(s), {mode}): "
            "POST /generate, GET /languages, GET /health; Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except Stopped as stopped:
        began = time.monotonic()
        quiet_stop(owned)
        what = "the application and the local Ray it ran on" if owned.ray else "the application"
        say(f"stopped ({stopped.signame}): shut down {what} in {time.monotonic() - began:.1f} s")
        return 0
    except BaseException:
        quiet_stop(owned)
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def quiet_stop(owned: Owned) -> None:
    """`stop`, with Ctrl-C and SIGTERM ignored meanwhile: a second Ctrl-C must not cut the shutdown short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop(owned)
