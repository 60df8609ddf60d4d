"""hql-ray serve: a served run over real HTTP on loopback (Ray Serve on the session's Ray), against
`hql-ray generate`'s outputs for the same graphs; bad requests; multiplexed replicas; the replica's models
without Ray (mixed batches, attach/detach, merged and text2amr runs, a pushed model); the Serve config file;
the command's errors. Slow: 500 requests from 16 clients, the memory of 12 languages vs 1, merged and text2amr runs over
HTTP, a killed replica, the command stopped by SIGTERM and Ctrl-C, Ray's `serve run` of the config file."""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_runs import FOUR, GRAPHS, SENTENCES, make_run  # noqa: E402

from hql_ray.cli import main  # noqa: E402
from hql_ray.outputs.generate import generate_sentences, load_generator  # noqa: E402

MORE = GRAPHS + ["(b / boy :mod (t / tall))", "(d / dog :ARG0-of (b / bark-01))"]
LIMITS = {"max_items": 8, "max_input_chars": 400, "max_new_tokens": 16, "max_beams": 3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(url: str, body=None, raw: bytes | None = None, timeout: float = 120.0) -> tuple[int, object]:
    """(status, decoded JSON) of a GET (no body) or a POST on loopback."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text or b"null")
        except ValueError:  # Serve's proxy itself (no such route yet, while the application deploys)
            return err.code, text.decode(errors="replace")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    return {"main": make_run(root, FOUR), "merged": make_run(root, FOUR[:2], name="merged", mode="lora",
                                                             export_mode="merged"),
            "parse": make_run(root, FOUR[:2], name="parse", direction="text2amr")}


@pytest.fixture(scope="module")
def expected(runs) -> dict:
    """`hql-ray generate`'s outputs (its own code path: load_generator + generate_sentences) per language."""
    out = {}
    for name, inputs in (("main", MORE), ("merged", GRAPHS), ("parse", SENTENCES)):
        for code in (c for c, _ in (FOUR if name == "main" else FOUR[:2])):
            out[name, code] = generate_sentences(runs[name], code, inputs, generator=load_generator(runs[name], code))
    assert len({tuple(v) for (name, _), v in out.items() if name == "main"}) == 4  # every language its own outputs
    return out


def test_models_of_a_replica_without_ray(runs, expected):
    """The replica's models (no Ray): one base, adapters attached and detached (the last one kept until the
    next comes: PEFT cannot drop its last adapter), a batch mixing every attached language."""
    from hql_ray.serving.catalog import Catalog
    from hql_ray.serving.engine import LanguageModels
    from hql_ray.serving.requests import Item

    catalog = Catalog(runs["main"], device="cpu")
    models = LanguageModels(catalog)
    for code in catalog.codes:
        models.attach(code)
    one_adapter = models.held["adapter_bytes"] // 4
    assert models.held["models"] == 1 and models.attached == catalog.codes
    items = [Item(code, catalog.source(code, g), 8) for g in MORE for code in catalog.codes]
    assert [o.text for o in models.generate(items)] == [expected["main", c][i] for i in range(len(MORE)) for c in catalog.codes]
    for code in catalog.codes:
        models.detach(code)
    assert models.attached == [] and models.stale == "spa_Latn"  # kept (and invisible) until the next one
    models.attach("nld_Latn")
    assert models.stale is None and list(models.peft.peft_config) == ["nld_Latn"]
    assert models.held["adapter_bytes"] == one_adapter
    out = models.generate([Item("nld_Latn", catalog.source("nld_Latn", g), 8) for g in MORE])
    assert [o.text for o in out] == expected["main", "nld_Latn"]
    with pytest.raises(RuntimeError, match="deu_Latn not attached"):
        models.generate([Item("deu_Latn", catalog.source("deu_Latn", MORE[0]), 8)])


@pytest.fixture(scope="module")
def server(ray_session, runs):
    """Serve on 127.0.0.1:<free port>: the four-language run at /, and multiplexed (2 adapters per replica)
    at /mux. Yields the base URL."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    apps = {"main": ("/", {"run_dir": str(runs["main"])}),
            "mux": ("/mux", {"run_dir": str(runs["main"]), "max_adapters": 2})}
    run_apps(apps)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


COMMON = {"cpus_per_replica": 0, "max_batch": 8, "batch_wait_ms": 50, "limits": LIMITS}


def run_apps(apps: dict[str, tuple[str, dict]]) -> None:
    """Applications {name: (route prefix, args)} on the running Serve, started side by side, all running on return."""
    from ray import serve

    from hql_ray.serving.app import build_app

    serve.run_many([serve.RunTarget(build_app({**COMMON, **args}), name=name, route_prefix=prefix)
                    for name, (prefix, args) in apps.items()])


@pytest.fixture(scope="module")
def whole_and_parse(server, runs) -> str:
    """Beside `server`'s: the merged run at /merged, the text2amr run at /parse."""
    run_apps({"merged": ("/merged", {"run_dir": str(runs["merged"])}), "parse": ("/parse", {"run_dir": str(runs["parse"])})})
    return server



def _served(url: str, items: list[dict]) -> list[str]:
    status, body = call(f"{url}/generate", items)
    assert status == 200, body
    return [out["text"] for out in body]


def test_every_language_equals_generate_with_languages_mixed_concurrently(server, expected):
    """Single items of all four languages from 8 clients at once, and lists mixing them: the outputs of
    `hql-ray generate`, and the replica's batches did mix languages (one shared base)."""
    work = [(code, i) for i in range(len(MORE)) for code, _ in FOUR]
    with ThreadPoolExecutor(8) as pool:
        singles = list(pool.map(lambda w: call(f"{server}/generate", {"language": w[0], "amr": MORE[w[1]]}), work))
        lists = list(pool.map(lambda code: _served(server, [{"language": c, "amr": g} for g in MORE[:4]
                                                            for c in (code, "deu_Latn")]), [c for c, _ in FOUR]))
    for (code, i), (status, body) in zip(work, singles):
        assert status == 200 and body == {"language": code, "text": expected["main", code][i], "clipped": False}
    for (code, _), outputs in zip(FOUR, lists):
        assert outputs == [x for i in range(4) for x in (expected["main", code][i], expected["main", "deu_Latn"][i])]
    status, health = call(f"{server}/health")
    assert status == 200 and health["status"] == "ok" and not health["multiplexed"]
    replica = health["replica"]
    assert replica["attached"] == [c for c, _ in FOUR] and replica["models"] == 1  # one base, four adapters on it
    assert replica["batches"]["most_languages"] >= 2 and replica["batches"]["largest"] > 1


def test_languages_and_the_python_handle(server, runs, expected):
    from ray import serve

    from hql_ray.serving.requests import RequestError

    status, info = call(f"{server}/languages")
    assert status == 200 and (info["direction"], info["input"], info["output"]) == ("amr2text", "amr", "text")
    assert [(x["code"], x["name"], x["prompt"], x["export"]) for x in info["languages"]] == \
        [(code, name, f"Translate to {name}: {{amr}}", "adapter") for code, name in FOUR]
    handle = serve.get_app_handle("main")
    got = handle.generate.remote([{"language": "Italian", "amr": MORE[0]}, {"language": "nld_Latn", "amr": MORE[1]}]).result()
    assert [x["text"] for x in got] == [expected["main", "ita_Latn"][0], expected["main", "nld_Latn"][1]]
    assert handle.languages.remote().result() == info
    with pytest.raises(RequestError, match="unknown language 'xx'"):
        handle.generate.remote({"language": "xx", "amr": MORE[0]}).result()


def test_options_per_request(server, runs):
    import torch

    from hql_ray.scoring.evaluation import generate

    gen = load_generator(runs["main"], "spa_Latn")
    short = generate_sentences(runs["main"], "spa_Latn", MORE, generator=gen, max_new_tokens=3)
    assert _served(server, [{"language": "spa_Latn", "amr": g, "max_new_tokens": 3} for g in MORE]) == short
    with torch.no_grad():
        beams = generate(gen.model, gen.tokenizer, [gen.source(g) for g in MORE], max_new_tokens=8, num_beams=3,
                         max_source_length=gen.max_source_length).outputs
    mixed = [{"language": "spa_Latn", "amr": g, "num_beams": 3} for g in MORE] + [{"language": "ita_Latn", "amr": MORE[0]}]
    assert _served(server, mixed)[:-1] == [" ".join(b.split()) for b in beams]


BAD = [  # (body, status, what the message says)
    ({"language": "xx_Latn", "amr": GRAPHS[0]}, 422,
     "unknown language 'xx_Latn'; served languages: deu_Latn (German), nld_Latn (Dutch), ita_Latn (Italian), spa_Latn (Spanish)"),
    ({"language": "deu_Latn", "amr": "(x / thing :ARG0)"}, 422, "malformed AMR: role :ARG0 of node x has no target"),
    ({"language": "deu_Latn", "amr": "(w / want-01 :ARG0 (g / girl)"}, 422, "(character 30)"),
    ({"language": "deu_Latn", "amr": "   "}, 422, "empty AMR"),
    ({"language": "deu_Latn", "amr": "(a / and " + ":op1 (b / boy) " * 40 + ")"}, 413, "more than the limit of 400"),
    ([{"language": "deu_Latn", "amr": GRAPHS[0]}] * 9, 413, "9 items in one request, more than the limit of 8"),
    ([], 400, "empty list"),
    ([{"language": "deu_Latn", "amr": GRAPHS[0]}, {"language": "deu_Latn", "amr": "(a / b"}], 422, "item 1: malformed AMR"),
    ({"language": "deu_Latn", "graph": GRAPHS[0]}, 400, "unknown field(s) 'graph'"),
    ({"language": "deu_Latn"}, 400, '"amr" is missing'),
    ({"language": 3, "amr": GRAPHS[0]}, 400, '"language" is a int, not a string'),
    ({"language": "deu_Latn", "amr": GRAPHS[0], "max_new_tokens": 17}, 400, '"max_new_tokens" must be an integer from 1 to 16'),
    ({"language": "deu_Latn", "amr": GRAPHS[0], "num_beams": 0}, 400, '"num_beams" must be an integer from 1 to 3'),
    ("just a string", 400, "expected a JSON object or a list of objects, got str"),
]


def test_bad_requests_get_4xx_and_the_server_goes_on(server, expected):
    for body, status, message in BAD:
        got_status, got = call(f"{server}/generate", body)
        assert (got_status, message in got["error"]) == (status, True), (body, got)
    status, got = call(f"{server}/generate", raw=b'{"language": "deu_Latn", "amr": "(a / b)"')
    assert status == 400 and got["error"].startswith("request body is not valid JSON: Expecting ',' delimiter")
    status, got = call(f"{server}/generate", raw=b"x" * 40_000)
    assert status == 413 and "larger than the limit" in got["error"]
    assert _served(server, [{"language": "deu_Latn", "amr": g} for g in MORE]) == expected["main", "deu_Latn"]
    assert call(f"{server}/health")[1]["status"] == "ok"


def test_multiplexed_replicas_hold_at_most_their_limit(server, expected):
    """max_adapters=2 of four languages: routed by language, adapters swapped in and out (LRU), same outputs."""
    order = [code for _ in range(2) for code, _ in FOUR]  # every language twice: evictions on the way
    for code in order:
        assert _served(f"{server}/mux", [{"language": code, "amr": g} for g in MORE]) == expected["main", code]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda w: call(f"{server}/mux/generate", {"language": w[0], "amr": MORE[w[1]]})[1]["text"],
                            [(code, i) for code, _ in FOUR for i in range(len(MORE))]))
    assert got == [expected["main", code][i] for code, _ in FOUR for i in range(len(MORE))]
    health = call(f"{server}/mux/health")[1]
    assert health["multiplexed"] and len(health["replica"]["attached"]) <= 2
    assert health["replica"]["batches"]["most_languages"] == 1  # a multiplexed batch holds one language


def test_merged_exports_and_text2amr_runs_without_ray(runs, expected):
    """A replica's models for whole-model exports (one model per language) and for a text2amr run."""
    from hql_ray.serving.catalog import Catalog
    from hql_ray.serving.engine import LanguageModels
    from hql_ray.serving.requests import Item

    for name, inputs in (("merged", GRAPHS), ("parse", SENTENCES)):
        catalog = Catalog(runs[name], device="cpu")
        models = LanguageModels(catalog)
        for code in catalog.codes:
            models.attach(code)
        assert catalog.whole_models == (name == "merged") and models.held["models"] == (2 if name == "merged" else 1)
        items = [Item(code, catalog.source(code, x), 8) for x in inputs for code in catalog.codes]
        assert [o.text for o in models.generate(items)] == \
            [expected[name, c][i] for i in range(len(inputs)) for c in catalog.codes]


def test_a_pushed_model_is_served_as_its_run(runs, expected, tmp_path):
    """What `hql-ray push` lays out (one repository with a folder per language, or one per language, the tiny
    base shipped beside) serves the run's outputs; a Serve config keeps a Hub id as written."""
    from hql_ray.serving.catalog import Catalog, replica_reference
    from hql_ray.serving.config_file import serve_config
    from hql_ray.serving.engine import LanguageModels
    from hql_ray.serving.requests import Item
    from hql_ray.serving.settings import ServeSettings

    for single in (["--single-repo"], []):
        assert main(["push", str(runs["main"]), "--repo-prefix", "t/demo", "--dry-run", "-o", str(tmp_path), "-q",
                     *single]) == 0
    for folder, languages in ((tmp_path / "t" / "demo", ()), (tmp_path / "t" / "demo-ita_Latn", ("Italian",))):
        catalog = Catalog(folder, languages, device="cpu")
        assert catalog.codes == (sorted(c for c, _ in FOUR) if not languages else ["ita_Latn"])  # folder order
        assert not catalog.whole_models and catalog.tree_note is None
        models = LanguageModels(catalog)
        for code in catalog.codes:
            models.attach(code)
        items = [Item(code, catalog.source(code, g), 8) for g in MORE for code in catalog.codes]
        assert [o.text for o in models.generate(items)] == \
            [expected["main", c][i] for i in range(len(MORE)) for c in catalog.codes]
    assert replica_reference("hf://t/demo") == "hf://t/demo"
    assert serve_config(ServeSettings(run_dir="hf://t/demo"))["applications"][0]["args"]["run_dir"] == "hf://t/demo"
    assert replica_reference(tmp_path / "t" / "demo") == str((tmp_path / "t" / "demo").resolve())


@pytest.mark.slow
def test_merged_exports_and_text2amr_runs_over_http(whole_and_parse, expected):
    server = whole_and_parse
    for code, _ in FOUR[:2]:
        assert _served(f"{server}/merged", [{"language": code, "amr": g} for g in GRAPHS]) == expected["merged", code]
        status, body = call(f"{server}/parse/generate", [{"language": code, "text": s} for s in SENTENCES])
        assert status == 200 and [x["amr"] for x in body] == expected["parse", code]
    info = call(f"{server}/merged/languages")[1]
    assert {x["export"] for x in info["languages"]} == {"model"}
    info = call(f"{server}/parse/languages")[1]
    assert (info["direction"], info["input"], info["output"]) == ("text2amr", "text", "amr")
    status, body = call(f"{server}/parse/generate", {"language": "deu_Latn", "amr": GRAPHS[0]})
    assert status == 400 and "unknown field(s) 'amr'; expected language, text" in body["error"]
    assert call(f"{server}/parse/generate", {"language": "deu_Latn", "text": " "})[0] == 422  # empty sentence


def test_serve_config_file_is_rays_format(runs, tmp_path, capsys):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from hql_ray.serving.settings import ServeSettings

    path = tmp_path / "serve.yaml"
    rc = main(["serve", str(runs["main"]), "--languages", "German", "ita_Latn", "--port", "8123", "--max-adapters", "1",
               "--write-config", str(path)])
    assert rc == 0 and "serve deploy" in capsys.readouterr().err
    config = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(config)  # what `serve deploy` / `serve run` read
    assert (schema.http_options.host, schema.http_options.port) == ("127.0.0.1", 8123)
    app = schema.applications[0]
    assert app.import_path == "hql_ray.serving.app:build_app" and app.route_prefix == "/"
    settings = ServeSettings.from_dict(app.args)
    assert settings.languages == ["deu_Latn", "ita_Latn"] and settings.max_adapters == 1
    assert settings.run_dir == str(runs["main"].resolve())
    # `serve run CONFIG run_dir=...` style string arguments
    again = ServeSettings.from_dict({"run_dir": "r", "languages": "deu_Latn, ita_Latn", "max_batch": "4",
                                     "batch_wait_ms": "2.5", "limits": {"max_items": "3"}})
    assert (again.languages, again.max_batch, again.batch_wait_ms, again.limits.max_items) == (["deu_Latn", "ita_Latn"], 4, 2.5, 3)


def test_command_refuses_bad_runs_languages_and_ports_before_starting(runs, tmp_path, capsys):
    import signal

    import ray

    connected, handler = ray.is_initialized(), signal.getsignal(signal.SIGINT)
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "run folder does not exist" in capsys.readouterr().err
    assert main(["serve", str(runs["main"]), "--languages", "fra_Latn"]) == 2
    assert "unknown language 'fra_Latn'" in capsys.readouterr().err
    assert main(["serve", str(runs["main"]), "--max-batch", "0"]) == 2
    assert "max_batch must be >= 1" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", str(runs["main"]), "--port", str(busy.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    # a Ray this process was connected to stays (the module's server lives on it), Ctrl-C is this process's again
    assert ray.is_initialized() == connected and signal.getsignal(signal.SIGINT) is handler


@pytest.mark.slow
def test_500_requests_from_16_clients(server, expected):
    """Loopback only, 16 clients at once, every language, single items and small lists: no error, the
    outputs of `hql-ray generate`, and the server healthy after."""
    work = [(i % 4, i % len(MORE), 1 + (i % 3 == 0)) for i in range(500)]  # (language, graph, items)

    def one(w):
        lang, graph, n = w
        code = FOUR[lang][0]
        items = [{"language": code, "amr": MORE[(graph + k) % len(MORE)]} for k in range(n)]
        status, body = call(f"{server}/generate", items if n > 1 else items[0])
        texts = [x["text"] for x in body] if n > 1 else [body["text"]]
        return status, texts == [expected["main", code][(graph + k) % len(MORE)] for k in range(n)]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, work))
    assert [r for r in results if r != (200, True)] == []
    status, health = call(f"{server}/health")
    assert status == 200 and health["status"] == "ok"
    assert health["replica"]["batches"]["largest"] > 1


@pytest.mark.slow
def test_one_base_per_replica_whatever_the_number_of_languages(server, tmp_path_factory):
    """Resident memory of a replica serving 12 languages vs 1 of the same run, over a base of ~150 MB (fp32):
    the 11 more adapters cost their own bytes (a few MB each), not another base."""
    from ray import serve

    from hql_ray.serving.app import build_app
    from serve_runs import TWELVE, random_base

    root = tmp_path_factory.mktemp("memory")
    base = random_base(root / "base", d_model=512, layers=4, d_ff=2048)
    run = make_run(root, TWELVE, name="twelve", base=base, mode="lora")
    apps = {"one": ["deu_Latn"], "twelve": [c for c, _ in TWELVE]}
    try:  # beside the module's applications, on the same Serve
        serve.run_many([serve.RunTarget(build_app({"run_dir": str(run), "cpus_per_replica": 0, "languages": codes}),
                                        name=name, route_prefix=f"/{name}") for name, codes in apps.items()])
        stats = {}
        for name, codes in apps.items():
            handle = serve.get_app_handle(name)
            handle.generate.remote([{"language": c, "amr": GRAPHS[0]} for c in codes[:8]]).result()  # warm
            handle.generate.remote([{"language": c, "amr": GRAPHS[1]} for c in codes[8:]] or
                                   [{"language": codes[0], "amr": GRAPHS[1]}]).result()
            stats[name] = handle.health.remote().result()["replica"]
    finally:
        for name in apps:
            serve.delete(name)
    one, twelve = stats["one"], stats["twelve"]
    growth = twelve["rss_bytes"] - one["rss_bytes"]
    print(f"\nreplica RSS: 1 language {one['rss_bytes'] / 1e6:.0f} MB, 12 languages {twelve['rss_bytes'] / 1e6:.0f} MB "
          f"(+{growth / 1e6:.0f} MB); base parameters {one['base_bytes'] / 1e6:.0f} MB; adapters "
          f"{one['adapter_bytes'] / 1e6:.1f} / {twelve['adapter_bytes'] / 1e6:.1f} MB")
    assert one["base_bytes"] == twelve["base_bytes"] > 100e6 and one["models"] == twelve["models"] == 1
    assert twelve["adapter_bytes"] == 12 * one["adapter_bytes"]
    assert growth < twelve["adapter_bytes"] - one["adapter_bytes"] + 0.25 * one["base_bytes"]


def _serve_command(run: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "hql_ray", "serve", str(run), "--port", str(port), "--languages", "deu_Latn", "ita_Latn"]


def _env() -> dict:
    import os

    repo = str(Path(__file__).resolve().parents[1])
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},  # their own Ray, never the tests'
            "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _wait_healthy(url: str, alive, timeout_s: float = 400.0) -> None:
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline and alive():
        try:
            if call(f"{url}/health", timeout=10)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} never became healthy")


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _stopped_line(log: str, signame: str) -> None:
    last = log.strip().splitlines()[-1]
    assert last.startswith(f"hql-ray serve: stopped ({signame}): shut down the application and the local Ray "
                           "it ran on in "), log[-2000:]


@pytest.mark.slow
def test_command_stops_on_sigterm_with_its_ray(runs, tmp_path, expected):
    """`hql-ray serve` as a user runs it; `kill -TERM`: the server, its Ray and every process it started are
    gone within seconds, with a last line saying so."""
    import signal
    import subprocess
    import time

    import psutil

    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(_serve_command(runs["main"], port), stderr=err, stdout=err, env=_env(),
                                start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", lambda: proc.poll() is None)
        assert _served(f"http://127.0.0.1:{port}", [{"language": "ita_Latn", "amr": MORE[2]}]) == [expected["main", "ita_Latn"][2]]
        started = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in started)
        began = time.time()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        print(f"\nSIGTERM -> exit in {time.time() - began:.1f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
    _stopped_line(log.read_text(), "SIGTERM")
    assert _refused(port)
    psutil.wait_procs(started, timeout=10)
    assert [p.pid for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []


@pytest.mark.slow
def test_command_stops_on_ctrl_c_in_a_terminal(runs, tmp_path):
    """Ctrl-C typed in a terminal (tmux send-keys C-c; a background job would ignore SIGINT)."""
    import shlex
    import shutil
    import subprocess
    import time

    if shutil.which("tmux") is None:
        pytest.skip("no tmux to type Ctrl-C into")
    port, log, rc = free_port(), tmp_path / "serve.log", tmp_path / "rc"
    session = f"hql-serve-{port}"
    line = f"{shlex.join(_serve_command(runs['main'], port))} 2> {log}; echo $? > {rc}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "40", "bash", "-c", line],
                   env=_env(), check=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", lambda: not rc.exists())
        began = time.time()
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        while not rc.exists() and time.time() - began < 30:
            time.sleep(0.2)
        print(f"\nCtrl-C -> exit in {time.time() - began:.1f} s")
        assert rc.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    _stopped_line(log.read_text(), "SIGINT")
    assert _refused(port)


@pytest.mark.slow
def test_a_killed_replica_is_restarted_and_nothing_else_changes(server, expected):
    import os
    import signal
    import time

    before = call(f"{server}/mux/health")[1]["replica"]["pid"]
    os.kill(before, signal.SIGKILL)
    deadline, after = time.time() + 300, None
    while time.time() < deadline:
        status, health = call(f"{server}/mux/health")
        if status == 200 and health["replica"]["pid"] != before:
            after = health["replica"]["pid"]
            break
        time.sleep(1)
    assert after is not None, "the killed replica did not come back"
    assert _served(f"{server}/mux", [{"language": "nld_Latn", "amr": g} for g in MORE]) == expected["main", "nld_Latn"]
    assert _served(server, [{"language": "ita_Latn", "amr": g} for g in MORE]) == expected["main", "ita_Latn"]


@pytest.mark.slow
def test_serve_run_accepts_the_config_file(runs, tmp_path, expected):
    """Ray's own `serve run CONFIG` (what a cluster's `serve deploy` reads too) serves the written file."""
    import shutil
    import signal
    import subprocess

    serve_cli = shutil.which("serve") or str(Path(sys.executable).with_name("serve"))
    port, config, log = free_port(), tmp_path / "serve.yaml", tmp_path / "serve.log"
    assert main(["serve", str(runs["main"]), "--languages", "spa_Latn", "--port", str(port), "--cpus-per-replica", "0",
                 "--write-config", str(config)]) == 0
    with open(log, "w") as err:
        proc = subprocess.Popen([serve_cli, "run", str(config)], stdout=err, stderr=err, env=_env(), start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", lambda: proc.poll() is None)
        url = f"http://127.0.0.1:{port}"
        assert _served(url, [{"language": "Spanish", "amr": g} for g in MORE]) == expected["main", "spa_Latn"]
        assert call(f"{url}/generate", {"language": "deu_Latn", "amr": MORE[0]})[0] == 422  # only Spanish served
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert _refused(port)
