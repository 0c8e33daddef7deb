"""A local server that speaks TF Serving's REST API for an exported keras_preact SavedModel.

    python -m keras_preact.serve --export_dir serving/resnet164 --port 8501 --model_name resnet164

    curl localhost:8501/v1/models/resnet164                      # status (also /versions/N, /labels/L)
    curl localhost:8501/v1/models/resnet164/metadata             # the signatures, as TF Serving gives them
    curl -X POST localhost:8501/v1/models/resnet164:predict -d '{"instances": [<32x32x3 pixels>]}'
    curl -X POST localhost:8501/v1/models/resnet164:predict \
         -d '{"signature_name": "encoded_images", "instances": [{"b64": "<base64 JPEG>"}]}'

It needs TensorFlow, FastAPI and uvicorn, not Keras. It serves the highest complete version folder
(as TF Serving does) and any version named by a label; every error is `{"error": "..."}` with a
4xx status (5xx only for a fault of the server, logged with its request).
"""

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import os
import re
import time

import numpy as np

from keras_preact import choices
from keras_preact.serving.layout import VERSION, servable_versions

log = logging.getLogger("keras_preact.serve")

# TF Serving's paths: /v1/models/NAME[/versions/N | /labels/L][/metadata | :VERB].
ROUTE = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[^/:]*))?/?"
)
# Pixels as JSON text: "255, " (json.dumps' separators) plus a pixel's brackets is 5.7 bytes a
# value; compact JSON ("255,") 4.7. Indented JSON (a line per value) does not fit.
BYTES_PER_PIXEL_VALUE = 6
BODY_OVERHEAD = 64 * 1024  # keys, signature name, whitespace
MAX_BATCH = 1024  # most images a request may hold (--max_batch): bounds the body limit
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


class RequestError(Exception):
    """A request the server answers with `status` and `{"error": message}`."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.headers = headers


def bad_request(message):
    return RequestError(400, message)


class BodyBudget:
    """Bytes of request bodies held at once, over all requests: a request reserves its body's size
    before reading it, and waits while the others hold the rest."""

    def __init__(self, capacity):
        self.free = capacity
        self.released = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def reserve(self, size):
        async with self.released:
            await self.released.wait_for(lambda: self.free >= size)
            self.free -= size
        try:
            yield
        finally:
            async with self.released:
                self.free += size
                self.released.notify_all()


class Version:
    """One loaded version folder: its signatures that take one `images` tensor."""

    def __init__(self, path, number):
        import tensorflow as tf

        self.number = number
        try:
            loaded = tf.saved_model.load(path)
        except Exception as error:  # a corrupt file can raise anything from protobuf to OSError
            raise ValueError(f"{path} cannot be loaded as a SavedModel: {_first_line(error)}") from None
        self._loaded = loaded  # keeps the signatures' variables alive
        self.signatures = {}
        for name, function in loaded.signatures.items():
            inputs = function.structured_input_signature[1]
            if set(inputs) == {"images"} and inputs["images"].dtype in (tf.uint8, tf.string):
                self.signatures[name] = function
        if "serving_default" not in self.signatures:
            raise ValueError(f"{path} has no serving_default signature taking uint8 `images`: is it a keras_preact export?")
        self.metadata = _signature_metadata(path)

    def input_spec(self, signature):
        return self.signatures[signature].structured_input_signature[1]["images"]


def _signature_metadata(path):
    """The signatures of `path` in TF Serving's metadata JSON (SignatureDefMap, proto field names)."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    signatures = saved_model.meta_graphs[0].signature_def
    return {
        name: json_format.MessageToDict(
            signatures[name], always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        )
        for name in signatures
    }


class Servable:
    """The versions of an exported model that the server answers for: the highest complete one,
    and those named by `labels` ({label: version})."""

    def __init__(self, export_dir, labels=None):
        labels = dict(labels or {})
        if not os.path.isdir(export_dir):
            problem = "is a file" if os.path.exists(export_dir) else "does not exist"
            raise FileNotFoundError(f"export_dir {export_dir} {problem}: pass the folder that holds the version folders.")
        complete, skipped = servable_versions(export_dir)
        for name, reason in skipped:
            log.warning("Skipping %s: %s", os.path.join(export_dir, name), reason)
        if not complete:
            found = f" (found only: {', '.join(f'{n}: {r}' for n, r in skipped)})" if skipped else ""
            raise FileNotFoundError(
                f"{export_dir} has no complete numbered version folder (e.g. {export_dir}/1/saved_model.pb){found}. "
                "Export one with keras_preact.export_saved_model or `python -m keras_preact.export`."
            )
        for label, number in labels.items():
            if number not in complete:
                raise ValueError(
                    f"Label {label!r} names version {number}, which is not a complete version of {export_dir} "
                    f"(complete: {', '.join(map(str, complete))})."
                )
        self.latest = complete[-1]
        self.labels = labels
        self.versions = {
            number: Version(os.path.join(export_dir, str(number)), number)
            for number in sorted({self.latest, *labels.values()})
        }

    def image_values(self):
        """The most pixel values one image of any served version takes (224x224x3 where any size goes)."""
        sizes = []
        for version in self.versions.values():
            shape = version.input_spec("serving_default").shape[1:]
            sizes.append(int(np.prod([d if d is not None else 224 for d in shape])))
        return max(sizes)

    def resolve(self, model_name, name, version, label):
        """The Version a path names, or a 404."""
        if name != model_name:
            raise RequestError(404, f"Servable not found for request: Latest({name}); this server serves {model_name!r}.")
        if label is not None:
            if label not in self.labels:
                known = ", ".join(map(repr, self.labels)) or "none (start the server with --version_labels)"
                raise RequestError(404, f"Unrecognized servable version label: {label}. Labels: {known}.")
            return self.versions[self.labels[label]]
        if version is None:
            return self.versions[self.latest]
        if not VERSION.fullmatch(version) or int(version) not in self.versions:
            served = ", ".join(map(str, self.versions))
            raise RequestError(404, f"Servable not found for request: Specific({name}, {version}); served versions: {served}.")
        return self.versions[int(version)]


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
    if not isinstance(values, list):
        raise bad_request("The images must be a list (one entry per image).")
    if not values:
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
        request = json.loads(body)
    except RecursionError:
        raise bad_request("Malformed JSON: nested too deeply.") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, Python's limit on integer digits
        problem = "a number has thousands of digits" if "digits" in str(error) else _first_line(error)
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
    if not isinstance(instances, list):
        raise bad_request('"instances" must be a list of images.')
    return "row", [_named(instance, "An instance") for instance in instances]


def _pixel_images(values, shape, signature):
    """A uint8 array from nested lists of JSON integers 0-255, of shape [batch, *shape]."""
    expected = ", ".join("any" if d is None else str(d) for d in (None, *shape))
    if any(isinstance(value, dict) for value in values):
        raise bad_request(
            f"{signature} takes raw pixels as JSON integers; for JPEG/PNG files as {{\"b64\": ...}} send "
            '"signature_name": "encoded_images".'
        )
    flat = values
    try:
        for _ in range(len(shape)):
            flat = list(itertools.chain.from_iterable(flat))
    except TypeError:  # a number where a list belongs
        raise bad_request(f"The images must be nested lists of shape [{expected}] (batch first).") from None
    kinds = set(map(type, flat)) - {int}
    if kinds:
        if list in kinds:
            raise bad_request(f"The images must be nested lists of shape [{expected}] (batch first).")
        found = ", ".join(sorted(VALUE_KINDS.get(kind, kind.__name__) for kind in kinds))
        raise bad_request(f"Pixel values must be JSON integers from 0 to 255; found {found}.")
    try:
        pixels = np.array(values, dtype=np.int64)
    except ValueError:  # ragged
        raise bad_request(f"The images must be nested lists of shape [{expected}] (batch first).") from None
    except OverflowError:
        raise bad_request("Pixel values must be integers from 0 to 255 (raw uint8 pixels).") from None
    if pixels.ndim != 1 + len(shape) or any(e is not None and e != s for e, s in zip(shape, pixels.shape[1:])):
        raise bad_request(f"The images have shape {list(pixels.shape)}; expected [{expected}] (batch first).")
    if pixels.min() < 0 or pixels.max() > 255:
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


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def declared_length(request):
    """The body's size from Content-Length, or None (chunked, or a value h11 would refuse)."""
    length = request.headers.get("content-length")
    return int(length) if length is not None and length.isdigit() else None


async def read_body(request, limit, timeout):
    """The request body, or a 408 when it has not all arrived within `timeout` seconds, or a 413
    past `limit` bytes: after reading and discarding up to DRAIN_LIMITS limits, at once for a
    Content-Length over that."""
    declared = declared_length(request)
    too_long = RequestError(
        413, f"The body has {declared:,} bytes; at most {limit:,} (set by --max_batch)." if declared is not None
        else f"The body exceeds {limit:,} bytes (set by --max_batch).", CLOSE,
    )
    if declared is not None and declared > DRAIN_LIMITS * limit:
        raise too_long
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while size <= DRAIN_LIMITS * limit:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(deadline - loop.time(), 0))
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


def create_app(export_dir, model_name, max_batch=256, read_timeout=30.0, version_labels=None, docs=False):
    """The FastAPI application serving `export_dir` as `model_name`.

    `max_batch`: most images per request; the body limit is `max_batch` images as JSON pixels.
    `read_timeout`: seconds a request body may take to arrive. `version_labels`: {label: version}.
    `docs`: serve FastAPI's /docs and /openapi.json.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    import anyio
    from starlette.exceptions import HTTPException

    choices.check_count("max_batch", max_batch, maximum=MAX_BATCH)
    servable = Servable(export_dir, version_labels)
    limiter = anyio.CapacityLimiter(PARALLEL_REQUESTS)
    body_limit = max_batch * servable.image_values() * BYTES_PER_PIXEL_VALUE + BODY_OVERHEAD
    bodies = BodyBudget(BODIES_HELD * body_limit)
    hidden = {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title=f"keras_preact: {model_name}", **({} if docs else hidden))

    def respond(content, status=200, headers=None):
        # As TF Serving writes it: a model's NaN or infinite outputs as the tokens NaN, Infinity and
        # -Infinity (Starlette's JSONResponse refuses them: a 500; Python's json and most clients read them).
        text = json.dumps(content, ensure_ascii=False, allow_nan=True, separators=(",", ":"))
        return Response(text, status, headers, media_type="application/json")

    def error(status, message, headers=None):
        return respond({"error": message}, status, headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, problem):  # what Starlette answers itself (an unknown method)
        log.info("%s %s -> %d", request.method, request.url.path, problem.status_code)
        return error(problem.status_code, f"{request.method} is not allowed here.", problem.headers)

    def status(version):
        return {"version": str(version.number), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}

    async def answer(request, path):
        route = ROUTE.fullmatch(path)
        if route is None:
            raise RequestError(404, f"Not found: {path}. TF Serving's paths: /v1/models/NAME[/versions/N|/labels/L][/metadata|:predict].")
        name, number, label = route.group("name", "version", "label")
        verb = route.group("verb")
        if verb is not None:
            if verb.lower() != "predict":
                raise RequestError(404 if verb.lower() not in ("classify", "regress") else 400,
                                   f"Unsupported method :{verb}; this model answers :predict.")
            if request.method != "POST":
                raise RequestError(405, f"{request.method} is not allowed on :predict; use POST.", {"Allow": "POST"})
            version = servable.resolve(model_name, name, number, label)
            declared = declared_length(request)
            # Held from its first byte read to its answer; a declared body over the limit is drained, not held.
            async with bodies.reserve(body_limit if declared is None else declared if declared <= body_limit else 0):
                body = await read_body(request, body_limit, read_timeout)
                # Parsing and inference run in worker threads, so that concurrent requests run side by side.
                request.state.images, response = await anyio.to_thread.run_sync(predict, version, body, max_batch, limiter=limiter)
            return response
        if request.method not in ("GET", "HEAD"):
            raise RequestError(
                405, f"{request.method} is not allowed on {path}; use GET (or POST to {path}:predict).", {"Allow": "GET, HEAD"}
            )
        if number is None and label is None and route.group("metadata") is None:
            servable.resolve(model_name, name, None, None)
            return {"model_version_status": [status(v) for v in reversed(servable.versions.values())]}
        version = servable.resolve(model_name, name, number, label)
        if route.group("metadata"):
            return {
                "model_spec": {"name": model_name, "signature_name": "", "version": str(version.number)},
                "metadata": {"signature_def": {"signature_def": version.metadata}},
            }
        return {"model_version_status": [status(version)]}

    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    async def handle(request: Request, path: str):  # noqa: ARG001 (`path` names the route's catch-all)
        started = time.perf_counter()
        request.state.images = 0
        try:
            response = respond(await answer(request, request.url.path))
        except RequestError as problem:
            response = error(problem.status, str(problem), problem.headers)
        except Exception:
            log.exception("Internal error for %s %s (%s bytes)", request.method, request.url.path,
                          request.headers.get("content-length", "unknown"))
            response = error(500, "Internal server error; the server log has the details.")
        log.info(
            "%s %s -> %d, %d images, %.1f ms", request.method, request.url.path, response.status_code,
            request.state.images, 1000 * (time.perf_counter() - started),
        )
        return response

    app.state.servable = servable
    app.state.body_limit = body_limit
    return app
