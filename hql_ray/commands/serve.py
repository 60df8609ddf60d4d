"""`hql-ray serve RUN`: every language of a finished run behind one HTTP endpoint, on Ray Serve.

    hql-ray serve runs/demo                                   # http://127.0.0.1:8000, Ctrl-C to stop
    curl -s localhost:8000/generate -d '{"language": "deu_Latn", "amr": "(w / want-01 :ARG0 (g / girl))"}'
    hql-ray serve runs/demo --write-config serve.yaml         # for `serve run` / `serve deploy` (clusters)

One base model per replica with every language's adapter on it; requests of any languages are batched
together (PEFT mixed-adapter batches). See docs/serving.md.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve every language of a finished run over HTTP (Ray Serve, one shared base model)",
        description="Serve RUN_DIR's exported languages on Ray Serve: POST /generate with "
        '{"language": CODE, "amr": GRAPH} (or a list of them), GET /languages, GET /health. Listens on '
        "127.0.0.1 unless --host says otherwise; it has no authentication: expose it only behind a gateway.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (manifest.json, final/<code>/), or a model "
                   "`hql-ray push` laid out: its folder or its Hub id (hf://OWNER/NAME)")
    p.add_argument("--languages", nargs="+", metavar="LANG", help="codes or names to serve (default: every exported one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--address", help="an existing Ray cluster (auto, HOST:PORT, ray://...); default: a local Ray")
    p.add_argument("--replicas", type=int, default=1, help="model replicas, each holding one base (default 1)")
    p.add_argument("--max-batch", type=int, default=16, help="items per generation batch, languages mixed (default 16)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch waits to fill (default 10)")
    p.add_argument("--max-adapters", type=int, default=0,
                   help="adapters per replica when they do not all fit: requests are then routed by language "
                        "(default 0: every language on every replica)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs (and torch threads) per replica")
    p.add_argument("--gpus-per-replica", type=float,
                   help="GPUs per replica (default: 1 where a local Ray has GPUs, else 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... inside a replica (default: cuda if it sees one)")
    limits = p.add_argument_group("request limits (beyond them: a 4xx answer)")
    limits.add_argument("--max-items", type=int, default=64, help="items per request (default 64)")
    limits.add_argument("--max-input-chars", type=int, default=10_000, help="characters per input (default 10000)")
    limits.add_argument("--max-new-tokens", type=int, default=512, help="largest max_new_tokens a request may ask")
    limits.add_argument("--max-beams", type=int, default=8, help="largest num_beams a request may ask (default 8)")
    p.add_argument("--write-config", metavar="FILE", help="write a Ray Serve config file (serve run / serve deploy) and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="show Ray's and Serve's logs (and start the dashboard)")
    p.set_defaults(run=run)


def settings_from(args: argparse.Namespace):
    from hql_ray.serving.settings import RequestLimits, ServeSettings

    return ServeSettings(
        run_dir=args.run_dir, languages=list(args.languages or []), replicas=args.replicas, max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms, max_adapters=args.max_adapters, cpus_per_replica=args.cpus_per_replica,
        gpus_per_replica=args.gpus_per_replica or 0.0, device=args.device,
        limits=RequestLimits(max_items=args.max_items, max_input_chars=args.max_input_chars,
                             max_new_tokens=args.max_new_tokens, max_beams=args.max_beams)).check()


def run(args: argparse.Namespace) -> int:

    from hql_ray.serving.catalog import Catalog, replica_reference
    from hql_ray.settings.errors import ConfigError

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1-65535, got {args.port}")
    settings = settings_from(args)
    catalog = Catalog(settings.run_dir, settings.languages, device="cpu")  # a bad run or language: one line, exit 2
    settings.run_dir, settings.languages = replica_reference(settings.run_dir), catalog.codes
    if catalog.tree_note:
        print(f"hql-ray serve: note: {catalog.tree_note}", file=sys.stderr)
    if args.write_config:
        from hql_ray.serving.config_file import write_config

        path = write_config(args.write_config, settings, args.host, args.port)
        print(f"hql-ray serve: wrote {path}: `serve run {path}` here, `serve deploy {path}` on a cluster",
              file=sys.stderr)
        return 0
    from hql_ray.serving.runtime import Endpoint, serve_until_stopped

    return serve_until_stopped(settings, Endpoint(args.host, args.port, args.address), verbose=args.verbose,
                               auto_gpus=args.gpus_per_replica is None)
