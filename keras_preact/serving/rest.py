"""A local server that speaks TF Serving's REST API for an exported keras_preact SavedModel.

    python -m keras_preact.serve --export_dir serving/resnet164 --port 8501 --model_name resnet164

    curl localhost:8501/v1/models/resnet164
    curl -X POST localhost:8501/v1/models/resnet164:predict -d '{"instances": [<32x32x3 pixels>]}'

It needs TensorFlow, FastAPI and uvicorn, not Keras: the model is the SavedModel's
`serving_default` signature, loaded from the highest version folder as TF Serving does.
"""

import json
import logging
import os
import time

import numpy as np

from keras_preact.serving.layout import versions

log = logging.getLogger("keras_preact.serve")


class BadRequest(ValueError):
    """A request the server answers with HTTP 400."""


class Servable:
    """The latest version of an exported model, callable on uint8 image batches."""

    def __init__(self, export_dir):
        import tensorflow as tf

        found = versions(export_dir)
        if not found:
            raise FileNotFoundError(
                f"{export_dir} has no numbered version folder (e.g. {export_dir}/1/saved_model.pb). "
                "Export one with keras_preact.export_saved_model or `python -m keras_preact.export`."
            )
        self.version = found[-1]
        loaded = tf.saved_model.load(os.path.join(export_dir, str(self.version)))
        if "serving_default" not in loaded.signatures:
            raise ValueError(f"{export_dir}/{self.version} has no serving_default signature.")
        self.signature = loaded.signatures["serving_default"]
        self._tf = tf
        spec = self.signature.structured_input_signature[1]["images"]
        self.image_shape = tuple(spec.shape[1:])  # (H, W, 3); H and W may be None

    def predict(self, images):
        outputs = self.signature(images=self._tf.constant(images, self._tf.uint8))
        return {name: value.numpy() for name, value in outputs.items()}


def parse_images(body, image_shape, max_batch):
    """The uint8 batch and the request's format ("row" or "columnar") from a predict request body."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRequest(f"Malformed JSON: {error}.") from None
    if not isinstance(request, dict):
        raise BadRequest('The body must be a JSON object with "instances" or "inputs".')
    signature = request.get("signature_name", "serving_default")
    if signature != "serving_default":
        raise BadRequest(f'Unknown signature_name {signature!r}: this model has "serving_default" only.')
    if ("instances" in request) == ("inputs" in request):
        raise BadRequest('The body needs exactly one of "instances" (row format) or "inputs" (columnar format).')
    if "instances" in request:
        layout, rows = "row", request["instances"]
        if not isinstance(rows, list):
            raise BadRequest('"instances" must be a list of images.')
        rows = [row["images"] if isinstance(row, dict) and "images" in row else row for row in rows]
        if any(isinstance(row, dict) for row in rows):
            raise BadRequest('An instance given as an object needs the key "images".')
    else:
        layout, rows = "columnar", request["inputs"]
        if isinstance(rows, dict):
            if "images" not in rows:
                raise BadRequest('"inputs" given as an object needs the key "images".')
            rows = rows["images"]
    try:
        pixels = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError):
        raise BadRequest(
            f"The images must be numbers in nested lists of shape [batch, {', '.join(map(str, image_shape))}]."
        ) from None
    expected = (None, *image_shape)
    if pixels.ndim != 4 or any(e is not None and e != s for e, s in zip(expected, pixels.shape)):
        shape = ", ".join("any" if e is None else str(e) for e in expected)
        raise BadRequest(f"The images have shape {list(pixels.shape)}; expected [{shape}] (batch first).")
    if len(pixels) == 0:
        raise BadRequest("The request holds no images.")
    if len(pixels) > max_batch:
        raise BadRequest(f"The request holds {len(pixels)} images; at most {max_batch} per request.")
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255 or (pixels != np.round(pixels)).any():
        raise BadRequest("Pixel values must be integers from 0 to 255 (raw uint8 pixels, not normalised).")
    return pixels.astype(np.uint8), layout


def format_response(outputs, layout):
    probabilities = outputs["probabilities"].tolist()
    classes = outputs["classes"].tolist()
    if layout == "row":
        return {"predictions": [{"probabilities": p, "classes": c} for p, c in zip(probabilities, classes)]}
    return {"outputs": {"probabilities": probabilities, "classes": classes}}


def create_app(export_dir, model_name, max_batch=256):
    """The FastAPI application serving `export_dir` as `model_name`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    servable = Servable(export_dir)
    app = FastAPI(title=f"keras_preact: {model_name}")

    def error(status, message):
        return JSONResponse({"error": message}, status_code=status)

    def not_found(name):
        return error(404, f"Servable not found for request: Latest({name}); this server serves {model_name!r}.")

    @app.middleware("http")
    async def log_request(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        images = getattr(request.state, "images", 0)
        log.info(
            "%s %s -> %d, %d images, %.1f ms",
            request.method, request.url.path, response.status_code, images, 1000 * (time.perf_counter() - started),
        )
        return response

    @app.get("/v1/models/{name}")
    def status(name: str):
        if name != model_name:
            return not_found(name)
        return {
            "model_version_status": [
                {"version": str(servable.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }

    def answer(target, body, state):
        name, _, verb = target.rpartition(":")
        if verb != "predict":
            return error(404, f"Unknown method {target!r}: use POST /v1/models/{model_name}:predict.")
        if name != model_name:
            return not_found(name)
        try:
            images, layout = parse_images(body, servable.image_shape, max_batch)
        except BadRequest as bad:
            return error(400, str(bad))
        state.images = len(images)
        return format_response(servable.predict(images), layout)

    @app.post("/v1/models/{target}")
    async def predict(target: str, request: Request):
        body = await request.body()
        # Parsing and inference run in the thread pool, so concurrent requests run side by side.
        return await run_in_threadpool(answer, target, body, request.state)

    app.state.servable = servable
    return app
