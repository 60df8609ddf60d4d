"""The Ray Serve application: a FastAPI gateway (`Gateway`: parses and checks requests, fans a request's
items out) in front of model replicas (`LanguageModel`: one base each, the languages' adapters on it).

Items from any number of requests meet in a replica's `@serve.batch` queue and run as one mixed-language
batch. When adapters do not all fit (`max_adapters` below the number of languages), each replica holds at
most that many (`@serve.multiplexed`, least recently used out) and the gateway routes every item by its
language (`multiplexed_model_id`), so a batch then holds one language. `build_app` is the application
builder that `hql-ray serve` runs and that a Serve config file names (`serve run` / `serve deploy`)."""


import asyncio
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from hql_ray.serving.catalog import Catalog
from hql_ray.serving.engine import LanguageModels
from hql_ray.serving.requests import Item, Output, RequestError, load_body, parse_request, render
from hql_ray.serving.settings import ServeSettings

HEALTH_TIMEOUT_S = 30.0
api = FastAPI(title="hql-ray", description="AMR-to-text (or text-to-AMR) for every language of a finished run")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read no further than `limit` + 1 bytes (`load_body` then refuses it with a 413)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {declared} bytes is larger than the limit of {limit} bytes "
                           "(max_items x max_input_chars)", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


class Attached:
    """What `@serve.multiplexed` caches for a language: its eviction (least recently used) detaches the
    adapter. Serve awaits the instance's `__del__` on eviction; it is an instance attribute, so the
    garbage collector, which only looks at the class, never calls it."""

    def __init__(self, replica: "LanguageModel", code: str):
        self.replica, self.code = replica, code
        self.__del__ = self.release

    async def release(self) -> None:
        await self.replica.detach(self.code)


@serve.deployment(name="LanguageModel")
class LanguageModel:
    """A model replica: one base, the served languages' adapters (all, or a bounded LRU set), one batch at a time."""

    def __init__(self, settings: dict):
        import torch

        self.settings = ServeSettings.from_dict(settings)
        if self.settings.cpus_per_replica >= 1:
            torch.set_num_threads(int(self.settings.cpus_per_replica))
        self.catalog = Catalog(self.settings.run_dir, self.settings.languages, device=self.settings.device)
        self.models = LanguageModels(self.catalog)
        self.lock = asyncio.Lock()  # one model call at a time: generating, attaching, detaching
        self.batches = {"count": 0, "items": 0, "largest": 0, "most_languages": 0}
        self.batched.set_max_batch_size(self.settings.max_batch)
        self.batched.set_batch_wait_timeout_s(self.settings.batch_wait_ms / 1000.0)
        if self.settings.multiplexed(len(self.catalog.codes)):
            async def attach(code: str) -> Attached:
                async with self.lock:
                    await asyncio.to_thread(self.models.attach, code)
                return Attached(self, code)

            self.adapter = serve.multiplexed(max_num_models_per_replica=self.settings.max_adapters)(attach)
        else:
            self.adapter = None
            for code in self.catalog.codes:
                self.models.attach(code)

    async def generate(self, item: Item) -> Output:
        return await self.batched(item)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)  # both set from the settings in __init__
    async def batched(self, items: list[Item]) -> list[Output]:
        code = serve.get_multiplexed_model_id()  # multiplexed: the batch's one language; else ""
        self.count(items)
        if code:
            await self.adapter(code)
        async with self.lock:
            # evicted by another language's load between the two lines above: attached for this batch only
            temporary = bool(code) and code not in self.models.attached
            if temporary:
                await asyncio.to_thread(self.models.attach, code)
            try:
                return await asyncio.to_thread(self.models.generate, items)
            finally:
                if temporary:
                    await asyncio.to_thread(self.models.detach, code)

    def count(self, items: list[Item]) -> None:
        seen = self.batches
        seen.update(count=seen["count"] + 1, items=seen["items"] + len(items), largest=max(seen["largest"], len(items)),
                    most_languages=max(seen["most_languages"], len({item.language for item in items})))

    async def detach(self, code: str) -> None:
        async with self.lock:
            await asyncio.to_thread(self.models.detach, code)

    async def stats(self) -> dict:
        """This replica: its process, resident memory, attached languages, batches and parameter bytes. It
        answers at once, also while a batch generates (in a thread): health checks never wait for the model."""
        import psutil

        return {"pid": os.getpid(), "rss_bytes": psutil.Process().memory_info().rss, "attached": self.models.attached,
                "batches": dict(self.batches), **self.models.held}


@serve.deployment(name="Gateway")
@serve.ingress(api)
class Gateway:
    """HTTP and the Python handle: checks each request against the run, then one model call per item."""

    def __init__(self, model, settings: dict):
        self.model = model
        self.settings = ServeSettings.from_dict(settings)
        self.catalog = Catalog(self.settings.run_dir, self.settings.languages, device="cpu")
        self.multiplexed = self.settings.multiplexed(len(self.catalog.codes))

    # ---- the Python handle: serve.get_app_handle("hql-ray").generate.remote({...}).result()
    async def generate(self, payload):
        """A decoded request (one object or a list) → one object or a list; `RequestError` if refused."""
        parsed = parse_request(payload, self.catalog, self.settings.limits, self.catalog.max_new_tokens)
        calls = [(self.model.options(multiplexed_model_id=item.language) if self.multiplexed else self.model)
                 .generate.remote(item) for item in parsed.items]
        return render(parsed, list(await asyncio.gather(*calls)), self.catalog.output_key)

    async def languages(self) -> dict:
        return {"run": str(self.catalog.run_dir), "direction": self.catalog.direction,
                "input": self.catalog.input_key, "output": self.catalog.output_key,
                "languages": [info.to_dict() for info in self.catalog.describe()]}

    async def health(self) -> dict:
        """A model replica answers (its stats), or TimeoutError."""
        replica = await asyncio.wait_for(self.model.stats.remote(), HEALTH_TIMEOUT_S)
        return {"status": "ok", "languages": len(self.catalog.codes), "multiplexed": self.multiplexed,
                "replica": replica}

    # ---- HTTP
    @api.post("/generate")
    async def http_generate(self, request: Request) -> JSONResponse:
        try:
            payload = load_body(await read_body(request, self.settings.limits.max_body_bytes),
                                self.settings.limits)
            return JSONResponse(await self.generate(payload))
        except RequestError as err:
            return JSONResponse({"error": err.message}, status_code=err.status)

    @api.get("/languages")
    async def http_languages(self) -> JSONResponse:
        return JSONResponse(await self.languages())

    @api.get("/health")
    async def http_health(self) -> JSONResponse:
        try:
            return JSONResponse(await self.health())
        except Exception as err:  # noqa: BLE001 - reported to the caller as the reason it is unhealthy
            return JSONResponse({"status": "unavailable", "error": f"{type(err).__name__}: {err}"}, status_code=503)


def build_app(args: dict):
    """The application for `serve.run`, or for a Serve config file's `import_path` with its `args`."""
    settings = ServeSettings.from_dict(args)
    settings.languages = Catalog(settings.run_dir, settings.languages, device="cpu").codes  # checked once, here
    model = LanguageModel.options(
        num_replicas=settings.replicas,
        ray_actor_options={"num_cpus": settings.cpus_per_replica, "num_gpus": settings.gpus_per_replica},
        max_ongoing_requests=max(4 * settings.max_batch, 64),  # room for a full batch to form, and the next
    ).bind(settings.to_dict())
    return Gateway.options(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0}).bind(model, settings.to_dict())
