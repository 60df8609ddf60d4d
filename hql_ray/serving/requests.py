"""A POST /generate body → typed items, or a `RequestError` with the HTTP status and a message.

    {"language": "deu_Latn", "amr": "(w / want-01 :ARG0 (g / girl))", "max_new_tokens": 32, "num_beams": 1}

or a list of such objects (text2amr runs: "text" instead of "amr"). One object in, one object out; a list
in, a list out, in the same order. Nothing here imports Ray or torch: the gateway refuses bad requests
before anything is queued for a model replica."""

from __future__ import annotations

import json
from dataclasses import dataclass

from hql_ray.serving.catalog import Catalog
from hql_ray.serving.settings import RequestLimits
from hql_ray.settings.errors import HQLError, InputError

OPTIONS = ("max_new_tokens", "num_beams")


class RequestError(HQLError):
    """A request the server refuses: `status` is its HTTP status (4xx), the message says why."""

    def __init__(self, message: str, status: int = 400):
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class Item:
    """One input, ready for a model replica: the language, the model input and its generation options."""

    language: str  # FLORES code
    source: str  # the model input (prompt + linearized graph)
    max_new_tokens: int
    num_beams: int = 1


@dataclass
class Output:
    """One generated output; `clipped`: the input was cut to the run's max source length (as in training)."""

    language: str
    text: str
    clipped: bool


@dataclass
class ParsedRequest:
    items: list[Item]
    single: bool  # one object was sent (not a list): one object is returned


def load_body(body: bytes | str, limits: RequestLimits):
    """The JSON of a request body; 413 when larger than the limits allow, 400 when not JSON."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(f"request body of {len(body)} bytes is larger than the limit of "
                           f"{limits.max_body_bytes} bytes (max_items x max_input_chars)", status=413)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(f"request body is not valid JSON: {err}") from None


def parse_request(payload, catalog: Catalog, limits: RequestLimits, default_max_new_tokens: int) -> ParsedRequest:
    """The items of a decoded body (an object or a list of objects), each checked (`parse_item`)."""
    single = isinstance(payload, dict)
    items = [payload] if single else payload
    if not isinstance(items, list):
        raise RequestError(f"expected a JSON object or a list of objects, got {type(payload).__name__}")
    if not items:
        raise RequestError("empty list: send at least one item")
    if len(items) > limits.max_items:
        raise RequestError(f"{len(items)} items in one request, more than the limit of {limits.max_items}", status=413)
    parsed = []
    for index, item in enumerate(items):
        try:
            parsed.append(parse_item(item, catalog, limits, default_max_new_tokens))
        except RequestError as err:
            if single:
                raise
            raise RequestError(f"item {index}: {err.message}", err.status) from None
    return ParsedRequest(parsed, single)


def parse_item(item, catalog: Catalog, limits: RequestLimits, default_max_new_tokens: int) -> Item:
    key = catalog.input_key
    if not isinstance(item, dict):
        raise RequestError(f'expected an object like {{"language": ..., "{key}": ...}}, got {type(item).__name__}')
    unknown = sorted(set(item) - {"language", key, *OPTIONS})
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(map(repr, unknown))}; expected language, {key}, "
                           f"{', '.join(OPTIONS)}")
    for name in ("language", key):
        if not isinstance(item.get(name), str):
            what = "missing" if name not in item else f"a {type(item[name]).__name__}, not a string"
            raise RequestError(f'"{name}" is {what}')
    text = item[key]
    if len(text) > limits.max_input_chars:
        raise RequestError(f'"{key}" has {len(text)} characters, more than the limit of {limits.max_input_chars}',
                           status=413)
    try:
        code = catalog.resolve(item["language"])
        source = catalog.source(code, text)
    except InputError as err:
        raise RequestError(str(err), status=422) from None  # unknown language, malformed or empty input
    return Item(code, source, option(item, "max_new_tokens", default_max_new_tokens, limits.max_new_tokens),
                option(item, "num_beams", 1, limits.max_beams))


def option(item: dict, name: str, default: int, limit: int) -> int:
    """A request's generation option, 1..limit; absent: the default (the run's own, as `generate` uses)."""
    if name not in item:
        return default
    value = item[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise RequestError(f'"{name}" must be an integer from 1 to {limit}, got {value!r}')
    return value


def render(parsed: ParsedRequest, outputs: list[Output], output_key: str):
    """The response body: one object per item ({"language", <output_key>, "clipped"}), a list for a list."""
    objects = [{"language": out.language, output_key: out.text, "clipped": out.clipped} for out in outputs]
    return objects[0] if parsed.single else objects
