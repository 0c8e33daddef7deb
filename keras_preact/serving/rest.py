"""A local server that speaks TF Serving's REST API for an exported keras_preact SavedModel.

    python -m keras_preact.serve --export_dir serving/resnet164 --port 8501 --model_name resnet164

    curl localhost:8501/v1/models/resnet164                      # status (also /versions/N, /labels/L)
    curl localhost:8501/v1/models/resnet164/metadata             # the signatures, as TF Serving gives them
    curl -X POST localhost:8501/v1/models/resnet164:predict -d '{"instances": [<32x32x3 pixels>]}'
    curl -X POST localhost:8501/v1/models/resnet164:predict \
         -d '{"signature_name": "encoded_images", "instances": [{"b64": "<base64 JPEG>"}]}'

    curl localhost:8501/monitoring/prometheus/metrics            # requests, latency, model loads

It needs TensorFlow, FastAPI and uvicorn, not Keras. It serves the versions its policy names
(default: the highest complete version folder, as TF Serving does) and any version named by a
label, and follows new versions as they are exported (`versions.Servable`); every error is
`{"error": "..."}` with a 4xx status (5xx only for a fault of the server, logged with its request).
Each path is answered by one handler of `HANDLERS`.
"""

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import itertools
import json
import re
import time

import numpy as np

from keras_preact import choices
from keras_preact.serving import request_json
from keras_preact.serving.metrics import Metrics
from keras_preact.serving.versions import STATES, RequestError, Servable, VersionPolicy, first_line, log

# TF Serving's paths: /v1/models/NAME[/versions/N | /labels/L][/metadata | :VERB].
ROUTE = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[^/:]*))?/?"
)
METRICS_PATH = "/monitoring/prometheus/metrics"
# Pixels as JSON text: "255, " (json.dumps' separators) plus a pixel's brackets is 5.7 bytes a
# value; compact JSON ("255,") 4.7. Indented JSON (a line per value) does not fit.
BYTES_PER_PIXEL_VALUE = 6
BODY_OVERHEAD = 64 * 1024  # keys, signature name, whitespace
MAX_BATCH = 1024  # most images a request may hold (--max_batch): bounds the body limit
MAX_SECONDS = 86_400  # the longest read timeout and poll interval: a day (Python's timers overflow far above)
# Requests parsed and run at once: the parsed JSON of a full body is ≈10x its size, and TensorFlow
# already spreads one batch over every core.
PARALLEL_REQUESTS = 4
# Bodies held at once, in body limits: those parsed and run, and as many being read; other
# requests wait unread (in the kernel's buffers), so any number of uploads costs bounded memory.
BODIES_HELD = 2 * PARALLEL_REQUESTS
# A body over the limit is still read and discarded up to this many limits: clients (urllib,
# requests) send the whole body before reading the answer, and a connection closed under them
# loses the 413 to a reset.
DRAIN_LIMITS = 2
CLOSE = {"Connection": "close"}  # after a body that was not read to its end
VALUE_KINDS = {bool: "true/false", float: "a number with a fraction or exponent (or NaN/Infinity)", str: "a string",
               type(None): "null", dict: "an object", list: "a list"}


def bad_request(message):
    return RequestError(400, message)


class BodyBudget:
    """Bytes of request bodies held at once, over all requests: a request reserves its body's
    declared size before reading it, or (sent without a length) each chunk as it comes, and
    waits while the others hold the rest."""

    def __init__(self, capacity):
        self.free = capacity
        self.released = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self):
        """A Holding whose bytes return to the budget when the block ends."""
        holding = Holding(self)
        try:
            yield holding
        finally:
            async with self.released:
                self.free += holding.size
                self.released.notify_all()


class Holding:
    """What one request holds of a BodyBudget."""

    def __init__(self, budget):
        self.budget, self.size = budget, 0

    async def grow(self, size):
        async with self.budget.released:
            await self.budget.released.wait_for(lambda: self.budget.free >= size)
            self.budget.free -= size
        self.size += size


def predict(version, body, max_batch):
    """(number of images, the response JSON as a dict) for a predict request body, or a RequestError."""
    import tensorflow as tf

    request = _parse_json(body)
    signature = request.get("signature_name") or "serving_default"  # "" too, as in TF Serving
    if signature not in version.signatures:
        raise bad_request(
            f"Unknown signature_name {signature!r}; this model has {', '.join(map(repr, version.signatures))}."
        )
    layout, values = _input_values(request)
    if not isinstance(values, (list, np.ndarray)):
        raise bad_request("The images must be a list (one entry per image).")
    if not len(values):
        raise bad_request("The request holds no images.")
    if len(values) > max_batch:
        raise bad_request(f"The request holds {len(values)} images; at most {max_batch} per request.")
    spec = version.input_spec(signature)
    encoded = spec.dtype == tf.string
    images = _encoded_images(values) if encoded else _pixel_images(values, tuple(spec.shape[1:]), signature)
    try:
        outputs = version.signatures[signature](images=tf.constant(images))
    except tf.errors.InvalidArgumentError as error:  # what the signature checks: format, size; decoding
        message = _signature_error(error)
        raise bad_request(_undecodable(images, message) if encoded else message) from None
    return len(values), _format_response({name: value.numpy() for name, value in outputs.items()}, layout)


def _parse_json(body):
    try:
        request = request_json.parse(body)
    except RecursionError:
        raise bad_request("Malformed JSON: nested too deeply.") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, Python's limit on integer digits
        problem = "a number has thousands of digits" if "digits" in str(error) else first_line(error)
        raise bad_request(f"Malformed JSON: {problem}.") from None
    if not isinstance(request, dict):
        raise bad_request('The body must be a JSON object with "instances" or "inputs".')
    unknown = sorted(set(request) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise bad_request(f"Unknown key(s) {', '.join(map(repr, unknown))}; valid: 'signature_name', 'instances', 'inputs'.")
    if not isinstance(request.get("signature_name", ""), str):
        raise bad_request("signature_name must be a string.")
    if ("instances" in request) == ("inputs" in request):
        raise bad_request('The body needs exactly one of "instances" (row format) or "inputs" (columnar format).')
    return request


def _named(value, where):
    """`value` itself, or its "images" entry where it is an object naming the input."""
    if isinstance(value, dict) and set(value) != {"b64"}:
        if set(value) != {"images"}:
            raise bad_request(f'{where} given as an object needs exactly the key "images" (the input), got {sorted(value)}.')
        return value["images"]
    return value


def _input_values(request):
    """("row" or "columnar", the list of images)."""
    if "inputs" in request:
        return "columnar", _named(request["inputs"], '"inputs"')
    instances = request["instances"]
    if isinstance(instances, np.ndarray):  # a batch of pixels, parsed as one array
        return "row", instances
    if not isinstance(instances, list):
        raise bad_request('"instances" must be a list of images.')
    return "row", [_named(instance, "An instance") for instance in instances]


def _pixel_images(values, shape, signature):
    """A uint8 array of shape [batch, *shape] from the images as parsed: one array (a batch), a list
    of arrays (one per instance), or nested lists where they were no regular array of 0-255."""
    expected = ", ".join("any" if d is None else str(d) for d in (None, *shape))
    if any(isinstance(value, dict) for value in values):
        raise bad_request(
            f"{signature} takes raw pixels as JSON integers; for JPEG/PNG files as {{\"b64\": ...}} send "
            '"signature_name": "encoded_images".'
        )
    if isinstance(values, list) and values and all(isinstance(value, np.ndarray) for value in values):
        if len({value.shape for value in values}) > 1:
            raise _wrong_nesting(expected)
        values = np.stack(values)
    pixels = values if isinstance(values, np.ndarray) else _listed_pixels(values, shape, expected)
    if pixels.ndim != 1 + len(shape):
        raise _wrong_nesting(expected)
    if any(e is not None and e != s for e, s in zip(shape, pixels.shape[1:])):
        raise bad_request(f"The images have shape {list(pixels.shape)}; expected [{expected}] (batch first).")
    return pixels


def _wrong_nesting(expected):
    return bad_request(f"The images must be nested lists of shape [{expected}] (batch first).")


def _listed_pixels(values, shape, expected):
    """Nested lists that `request_json` left to Python's json as uint8 pixels, or the 400 that
    says what is wrong with them."""
    flat = values
    try:
        for _ in range(len(shape)):
            flat = list(itertools.chain.from_iterable(flat))
    except TypeError:  # a number where a list belongs
        raise _wrong_nesting(expected) from None
    kinds = set(map(type, flat)) - {int}
    if kinds:
        if list in kinds or np.ndarray in kinds:
            raise _wrong_nesting(expected)
        found = ", ".join(sorted(VALUE_KINDS.get(kind, kind.__name__) for kind in kinds))
        raise bad_request(f"Pixel values must be JSON integers from 0 to 255; found {found}.")
    try:
        pixels = np.array(values, dtype=np.int64)
    except ValueError:  # ragged
        raise _wrong_nesting(expected) from None
    except OverflowError:
        raise bad_request("Pixel values must be integers from 0 to 255 (raw uint8 pixels).") from None
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise bad_request("Pixel values must be integers from 0 to 255 (raw uint8 pixels, not normalised).")
    return pixels.astype(np.uint8)


def _encoded_images(values):
    """The bytes of each {"b64": ...} value."""
    images = []
    for index, value in enumerate(values):
        if not (isinstance(value, dict) and isinstance(value.get("b64"), str)):
            raise bad_request(f'Image {index} must be {{"b64": "<base64 of a JPEG or PNG file>"}}.')
        try:
            images.append(base64.b64decode(value["b64"], validate=True))
        except (binascii.Error, ValueError):
            raise bad_request(f"Image {index}: the b64 value is not valid base64.") from None
    return images


def _signature_error(error):
    """The useful line of a TensorFlow InvalidArgument error raised in a signature."""
    message = error.message.split("\n\t [[")[0].strip().splitlines()[-1]
    found = re.search(r"assertion failed: \[(.*)\]", message)
    return found.group(1) if found else message


def _undecodable(files, message):
    """`message`, naming the first file that TensorFlow cannot decode where it names no image: the
    signature's checks name theirs, its decoders' errors ("Invalid JPEG data ...") do not."""
    import tensorflow as tf

    if message.startswith("Image "):
        return message
    for index, data in enumerate(files):
        try:
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            return f"Image {index}: {message}"
    return message


def _format_response(outputs, layout):
    outputs = {name: np.char.decode(value.astype(bytes), "utf-8") if value.dtype == object else value
               for name, value in outputs.items()}
    if layout == "columnar":
        return {"outputs": {name: value.tolist() for name, value in outputs.items()}}
    rows = zip(*(value.tolist() for value in outputs.values()))
    return {"predictions": [dict(zip(outputs, row)) for row in rows]}


def declared_length(request):
    """The body's size from Content-Length, or None (chunked, or a value h11 would refuse)."""
    length = request.headers.get("content-length")
    return int(length) if length is not None and length.isdigit() else None


async def read_body(request, limit, timeout, holding):
    """The request body, held in `holding` (a declared length at once, else chunk by chunk), or a
    408 when it has not all arrived within `timeout` seconds, or a 413 past `limit` bytes: after
    reading and discarding up to DRAIN_LIMITS limits, at once for a Content-Length over that."""
    declared = declared_length(request)
    too_long = RequestError(
        413, f"The body has {declared:,} bytes; at most {limit:,} (set by --max_batch)." if declared is not None
        else f"The body exceeds {limit:,} bytes (set by --max_batch).", CLOSE,
    )
    if declared is not None and declared > DRAIN_LIMITS * limit:
        raise too_long
    if declared is not None and declared <= limit:  # waited for unread, before the read's clock starts
        await holding.grow(declared)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while size <= DRAIN_LIMITS * limit:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(deadline - loop.time(), 0))
            if declared is None and size + len(chunk) <= limit:
                await asyncio.wait_for(holding.grow(len(chunk)), max(deadline - loop.time(), 0))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise RequestError(408, f"The body did not arrive within {timeout:g} s.", CLOSE) from None
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise too_long
    return b"".join(chunks)


@dataclasses.dataclass
class Server:
    """What every handler reads: the versions, the limits and the counters."""

    servable: Servable
    model_name: str
    max_batch: int
    read_timeout: float
    body_limit: int
    bodies: BodyBudget
    metrics: Metrics
    limiter: object  # anyio.CapacityLimiter: requests parsed and run at once


def _versions_by_state(servable):
    counts = dict.fromkeys(STATES, 0)
    for entry in servable.status():
        counts[entry["state"]] += 1
    return counts


async def handle_status(server, request, route):
    return {"model_version_status": server.servable.status_of(server.model_name, *route.group("name", "version", "label"))}


async def handle_metadata(server, request, route):
    with server.servable.use(server.model_name, *route.group("name", "version", "label")) as version:
        return {
            "model_spec": {"name": server.model_name, "signature_name": "", "version": str(version.number)},
            "metadata": {"signature_def": {"signature_def": version.metadata}},
        }


async def handle_predict(server, request, route):
    import anyio

    with server.servable.use(server.model_name, *route.group("name", "version", "label")) as version:
        # Held from its first byte read to its answer; a declared body over the limit is drained, not held.
        async with server.bodies.hold() as holding:
            body = await read_body(request, server.body_limit, server.read_timeout, holding)
            # Parsing and inference run in worker threads, so that concurrent requests run side by side.
            request.state.images, response = await anyio.to_thread.run_sync(
                predict, version, body, server.max_batch, limiter=server.limiter
            )
        return response


async def handle_metrics(server, request, route):
    return server.metrics.text(_versions_by_state(server.servable))


# action: (the methods it answers, its handler)
HANDLERS = {
    "status": (("GET", "HEAD"), handle_status),
    "metadata": (("GET", "HEAD"), handle_metadata),
    "predict": (("POST",), handle_predict),
    "metrics": (("GET", "HEAD"), handle_metrics),
}


def route_of(path):
    """(action, the path's match) for a path of TF Serving's REST API, or a RequestError."""
    if path.rstrip("/") == METRICS_PATH:
        return "metrics", None
    route = ROUTE.fullmatch(path)
    if route is None:
        raise RequestError(
            404, f"Not found: {path}. TF Serving's paths: /v1/models/NAME[/versions/N|/labels/L][/metadata|:predict], "
            f"{METRICS_PATH}."
        )
    verb = route.group("verb")
    if verb is not None and verb.lower() != "predict":
        raise RequestError(404 if verb.lower() not in ("classify", "regress") else 400,
                           f"Unsupported method :{verb}; this model answers :predict.")
    return ("predict" if verb is not None else "metadata" if route.group("metadata") else "status"), route


async def answer(server, request):
    """The response's content for `request`, or a RequestError."""
    path = request.url.path
    action, route = route_of(path)
    request.state.action = action  # counted under it whatever the answer
    methods, handler = HANDLERS[action]
    if request.method not in methods:
        if action == "predict":
            raise RequestError(405, f"{request.method} is not allowed on :predict; use POST.", {"Allow": "POST"})
        suggestion = "" if action == "metrics" else f" (or POST to {path}:predict)"
        raise RequestError(405, f"{request.method} is not allowed on {path}; use GET{suggestion}.", {"Allow": "GET, HEAD"})
    return await handler(server, request, route)


def respond(content, status=200, headers=None):
    """JSON as TF Serving writes it: a model's NaN or infinite outputs as the tokens NaN, Infinity and
    -Infinity (Starlette's JSONResponse refuses them: a 500; Python's json and most clients read them)."""
    from fastapi.responses import Response

    if isinstance(content, str):  # Prometheus' text
        return Response(content, status, headers, media_type="text/plain; version=0.0.4")
    text = json.dumps(content, ensure_ascii=False, allow_nan=True, separators=(",", ":"))
    return Response(text, status, headers, media_type="application/json")


async def serve_request(server, request):
    """The response to any request, logged and counted; a fault of the server is a logged 500."""
    started = time.perf_counter()
    request.state.images, request.state.action = 0, "unknown"
    try:
        response = respond(await answer(server, request))
    except RequestError as problem:
        response = respond({"error": str(problem)}, problem.status, problem.headers)
    except Exception:
        log.exception("Internal error for %s %s (%s bytes)", request.method, request.url.path,
                      request.headers.get("content-length", "unknown"))
        response = respond({"error": "Internal server error; the server log has the details."}, 500)
    seconds = time.perf_counter() - started
    server.metrics.request(request.state.action, response.status_code, seconds)
    log.info("%s %s -> %d, %d images, %.1f ms", request.method, request.url.path, response.status_code,
             request.state.images, 1000 * seconds)
    return response


def create_app(export_dir, model_name, max_batch=256, read_timeout=30.0, version_labels=None, docs=False,
               version_policy="latest:1", poll_seconds=0):
    """The FastAPI application serving `export_dir` as `model_name`.

    `max_batch`: most images per request; the body limit is `max_batch` images as JSON pixels.
    `read_timeout`: seconds a request body may take to arrive. `version_labels`: {label: version}.
    `docs`: serve FastAPI's /docs and /openapi.json. `version_policy`: `latest:N`, `all` or
    `specific:V1,V2`. `poll_seconds`: how often the folder is looked at for new versions (0: never).
    """
    from fastapi import FastAPI, Request
    from starlette.exceptions import HTTPException
    import anyio

    choices.check_count("max_batch", max_batch, maximum=MAX_BATCH)
    choices.check_number("read_timeout", read_timeout, low=0.001, high=MAX_SECONDS)
    choices.check_number("poll_seconds", poll_seconds, low=0, high=MAX_SECONDS)
    metrics = Metrics()
    servable = Servable(export_dir, version_labels, VersionPolicy.parse(version_policy), on_load=metrics.load)
    body_limit = max_batch * servable.image_values() * BYTES_PER_PIXEL_VALUE + BODY_OVERHEAD
    server = Server(servable, model_name, max_batch, read_timeout, body_limit, BodyBudget(BODIES_HELD * body_limit),
                    metrics, anyio.CapacityLimiter(PARALLEL_REQUESTS))
    hidden = {"docs_url": None, "redoc_url": None, "openapi_url": None}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        servable.start_polling(poll_seconds)
        yield
        servable.stop()

    app = FastAPI(title=f"keras_preact: {model_name}", lifespan=lifespan, **({} if docs else hidden))

    @app.exception_handler(HTTPException)
    async def http_error(request, problem):  # what Starlette answers itself (an unknown method)
        log.info("%s %s -> %d", request.method, request.url.path, problem.status_code)
        return respond({"error": f"{request.method} is not allowed here."}, problem.status_code, problem.headers)

    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    async def handle(request: Request, path: str):  # noqa: ARG001 (`path` names the route's catch-all)
        return await serve_request(server, request)

    app.state.servable, app.state.body_limit = servable, body_limit
    return app
