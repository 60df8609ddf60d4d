"""A Ray Serve config file for a served run (`hql-ray serve RUN --write-config serve.yaml`), in Ray's own
format: `serve run serve.yaml` runs it here, `serve deploy serve.yaml` on a cluster (its dashboard address).
The application is `app.build_app` with the settings as its `args`; each cluster node must see the run
folder at the same absolute path (shared storage), or load a pushed model by its Hub id, and have hql-ray
installed."""

from __future__ import annotations

from pathlib import Path

import yaml

from hql_ray.serving.catalog import replica_reference
from hql_ray.serving.settings import APP_NAME, IMPORT_PATH, ServeSettings

HEADER = """\
# Ray Serve config for hql-ray: every language of {run} behind one endpoint.
#   here:       serve run {name}
#   a cluster:  serve deploy {name} --address http://<head>:8265   (then: serve status)
# It listens on {host}:{port}; it has no authentication of its own: expose it only behind your gateway.
# args are hql_ray.serving.settings.ServeSettings (replicas, max_batch, max_adapters, limits, ...).
"""


def serve_config(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> dict:
    args = settings.to_dict()
    args["run_dir"] = replica_reference(settings.run_dir)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH, "args": args}],
    }


def write_config(path: str | Path, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = serve_config(settings, host, port)
    header = HEADER.format(run=config["applications"][0]["args"]["run_dir"], name=path.name, host=host, port=port)
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
