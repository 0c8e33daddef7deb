"""The local TF-Serving-compatible server, over real HTTP on the loopback interface.

The server runs TensorFlow alone whatever KERAS_BACKEND says, so these tests run on the TensorFlow
backend only; the exports they serve are tested on every backend in test_export.py.
"""

import argparse
import base64
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest
from helpers import numpy, randomize_batch_norms

import keras_preact
from keras_preact import choices

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the server runs TensorFlow alone, whatever the Keras backend"
)

MODEL = "preact"
MAX_BATCH = 16
READ_TIMEOUT = 2
BODY_LIMIT = MAX_BATCH * 32 * 32 * 3 * 6 + 64 * 1024  # 6 bytes a JSON pixel value, and 64 KiB
SAMPLE = os.path.join(os.path.dirname(__file__), "data", "cifar10-sample", "test")
JPEGS = sorted(os.path.join(SAMPLE, c, f) for c in sorted(os.listdir(SAMPLE)) for f in sorted(os.listdir(os.path.join(SAMPLE, c))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(base, process, log_path):
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/v1/models/{MODEL}", timeout=2)
            return
        except OSError:
            assert process.poll() is None, open(log_path).read()
            time.sleep(0.3)
    raise TimeoutError(open(log_path).read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Versions 1 and 2 (different weights), a version 3 without saved_model.pb and an interrupted
    export's partial folder: the server must serve 2, and 1 under the label "stable"."""
    export_dir = str(tmp_path_factory.mktemp("serving"))
    models = {}
    for version in (1, 2):
        models[version] = keras_preact.PreActResNet(8, block="basic")
        randomize_batch_norms(models[version], seed=version)
        keras_preact.export_saved_model(models[version], export_dir, version=version)
    os.makedirs(os.path.join(export_dir, "3", "variables"))
    os.makedirs(os.path.join(export_dir, ".4.partial-abc"))
    port = free_port()
    log_path = os.path.join(export_dir, "server.log")
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_preact.serve", f"--export_dir={export_dir}", f"--port={port}",
         f"--model_name={MODEL}", f"--max_batch={MAX_BATCH}", f"--read_timeout={READ_TIMEOUT}", "--version_labels=stable=1"],
        stdout=log, stderr=subprocess.STDOUT, env=ENV,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base, process, log_path)
    yield {"base": base, "port": port, "models": models, "log": log_path, "process": process}
    process.terminate()
    process.wait(timeout=30)
    log.close()


def call(server, path, body=None, method=None, headers=None):
    """(status, parsed JSON) of one HTTP request."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    request = urllib.request.Request(server["base"] + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def raw_exchange(server, data, wait=30):
    """What the server sends back (until it closes or `wait` s pass) for raw bytes from a client."""
    with socket.create_connection(("127.0.0.1", server["port"])) as connection:
        connection.sendall(data)
        connection.settimeout(wait)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except socket.timeout:
            received += b"<still open>"
        return received


def pillow_decoded(paths):
    """The pixels of image files as training decodes them (Pillow)."""
    from keras_preact.training.sources import _decode_file

    return np.stack([_decode_file(path) for path in paths])


@contextlib.contextmanager
def local_server(app):
    """{"base": URL} of `app` served by uvicorn in a thread of this process, over real HTTP."""
    import uvicorn

    port = free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    try:
        while not uvicorn_server.started:
            time.sleep(0.05)
        yield {"base": f"http://127.0.0.1:{port}"}
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=30)


def expected(server, images, version=2):
    """The Keras model's probabilities on uint8 `images`."""
    return numpy(server["models"][version](keras_preact.preprocess_input(images, "cifar10")))


def images(count, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(count, 32, 32, 3)).astype(np.uint8)


def b64(data):
    return {"b64": base64.b64encode(data).decode()}


def png(pixels):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_status_versions_and_labels(server):
    available = {"state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert call(server, f"/v1/models/{MODEL}") == (
        200, {"model_version_status": [{"version": "2", **available}, {"version": "1", **available}]}
    )
    assert call(server, f"/v1/models/{MODEL}/versions/1") == (200, {"model_version_status": [{"version": "1", **available}]})
    assert call(server, f"/v1/models/{MODEL}/labels/stable") == (200, {"model_version_status": [{"version": "1", **available}]})
    log = open(server["log"]).read()
    assert "Skipping" in log and f"{os.sep}3: no saved_model.pb" in log
    assert ".4.partial-abc: an export that did not finish" in log


def test_predict_on_latest_version_and_label(server):
    batch = images(3, 0)
    for path, version in [(":predict", 2), (":PREDICT", 2), ("/versions/2:Predict", 2), ("/versions/1:predict", 1),
                          ("/labels/stable:predict", 1)]:
        status, body = call(server, f"/v1/models/{MODEL}{path}", {"instances": batch.tolist()})
        assert status == 200, body
        probabilities = expected(server, batch, version)
        assert [p["classes"] for p in body["predictions"]] == probabilities.argmax(axis=1).tolist()
        np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], probabilities, atol=1e-5)


def test_row_and_columnar_formats(server):
    batch = images(2, 1)
    probabilities = expected(server, batch)
    for signature in ("", "serving_default"):  # "" is serving_default, as in TF Serving
        status, body = call(server, f"/v1/models/{MODEL}:predict", {"signature_name": signature, "instances": batch.tolist()})
        assert status == 200, body
        np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], probabilities, atol=1e-5)
    named = call(server, f"/v1/models/{MODEL}:predict", {"instances": [{"images": image.tolist()} for image in batch]})[1]
    np.testing.assert_allclose([p["probabilities"] for p in named["predictions"]], probabilities, atol=1e-5)
    for inputs in (batch.tolist(), {"images": batch.tolist()}):
        status, body = call(server, f"/v1/models/{MODEL}:predict", {"inputs": inputs})
        assert status == 200
        assert body["outputs"]["classes"] == probabilities.argmax(axis=1).tolist()
        np.testing.assert_allclose(body["outputs"]["probabilities"], probabilities, atol=1e-5)


def test_base64_jpegs_equal_the_keras_model_on_the_training_pipelines_pixels(server):
    files = [open(path, "rb").read() for path in JPEGS[:MAX_BATCH]]
    probabilities = expected(server, pillow_decoded(JPEGS[:MAX_BATCH]))
    names = [choices.CIFAR10_CLASSES[i] for i in probabilities.argmax(axis=1)]
    status, body = call(server, f"/v1/models/{MODEL}:predict", {"signature_name": "encoded_images", "instances": [b64(f) for f in files]})
    assert status == 200, body
    assert [p["class_names"] for p in body["predictions"]] == names
    assert [p["classes"] for p in body["predictions"]] == probabilities.argmax(axis=1).tolist()
    np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], probabilities, atol=1e-5)
    # The same as named instances and in the columnar format.
    named = {"signature_name": "encoded_images", "instances": [{"images": b64(f)} for f in files[:2]]}
    assert [p["class_names"] for p in call(server, f"/v1/models/{MODEL}:predict", named)[1]["predictions"]] == names[:2]
    columnar = call(server, f"/v1/models/{MODEL}:predict", {"signature_name": "encoded_images", "inputs": {"images": [b64(f) for f in files[:2]]}})
    assert columnar[1]["outputs"]["class_names"] == names[:2]


def test_metadata_in_tf_servings_form(server):
    status, body = call(server, f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": MODEL, "signature_name": "", "version": "2"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    default, encoded = signatures["serving_default"], signatures["encoded_images"]
    assert default["method_name"] == encoded["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert default["inputs"]["images"]["tensor_shape"] == {
        "dim": [{"size": size, "name": ""} for size in ("-1", "32", "32", "3")], "unknown_rank": False
    }
    assert encoded["inputs"]["images"]["dtype"] == "DT_STRING"
    assert {name: output["dtype"] for name, output in encoded["outputs"].items()} == {
        "probabilities": "DT_FLOAT", "classes": "DT_INT64", "class_names": "DT_STRING"
    }
    assert call(server, f"/v1/models/{MODEL}/versions/1/metadata")[1]["model_spec"]["version"] == "1"
    assert call(server, f"/v1/models/{MODEL}/labels/stable/metadata")[1]["model_spec"]["version"] == "1"


PIXELS_OK = images(1, 0).tolist()
ENCODED = "encoded_images"
JPEG = open(JPEGS[0], "rb").read()


def nested(depth):
    return b'{"instances": ' + b"[" * depth + b"]" * depth + b"}"


# (method, path, body, status, part of the error message)
BAD_REQUESTS = [
    # the body as JSON
    ("POST", ":predict", b"{not json", 400, "Malformed JSON"),
    ("POST", ":predict", b'{"instances": "\xff"}', 400, "Malformed JSON: 'utf-8' codec can't decode"),
    ("POST", ":predict", nested(5000), 400, "Malformed JSON: nested too deeply"),
    ("POST", ":predict", nested(100_000), 400, "Malformed JSON: nested too deeply"),
    ("POST", ":predict", b'{"instances": [[[[' + b"9" * 5000 + b"]]]]}", 400, "a number has thousands of digits"),
    ("POST", ":predict", b"[1, 2]", 400, 'must be a JSON object with "instances" or "inputs"'),
    ("POST", ":predict", {"images": []}, 400, "Unknown key(s) 'images'"),
    ("POST", ":predict", {}, 400, 'exactly one of "instances" (row format) or "inputs"'),
    ("POST", ":predict", {"instances": PIXELS_OK, "inputs": PIXELS_OK}, 400, 'exactly one of "instances"'),
    ("POST", ":predict", {"instances": PIXELS_OK, "signature_name": "train"}, 400, "Unknown signature_name 'train'"),
    ("POST", ":predict", {"instances": PIXELS_OK, "signature_name": 3}, 400, "signature_name must be a string"),
    # pixels: strict JSON integers 0-255 of the right shape
    ("POST", ":predict", {"instances": [[[[0, 0, 0]]]]}, 400, "The images have shape [1, 1, 1, 3]; expected [any, 32, 32, 3]"),
    ("POST", ":predict", {"instances": [[0] * 5]}, 400, "nested lists of shape [any, 32, 32, 3]"),
    ("POST", ":predict", {"instances": [[[[1, 2, 3]]], [[[1]]]]}, 400, "nested lists of shape"),
    ("POST", ":predict", {"instances": [[[[[1]] * 3] * 32] * 32]}, 400, "nested lists of shape"),
    ("POST", ":predict", {"instances": (images(1, 2).astype(int) + 300).tolist()}, 400, "integers from 0 to 255"),
    ("POST", ":predict", {"instances": (images(1, 2).astype(int) - 256).tolist()}, 400, "integers from 0 to 255"),
    ("POST", ":predict", b'{"instances": [[[[' + b"9" * 4000 + b"]]]]}", 400, "integers from 0 to 255"),
    ("POST", ":predict", {"instances": [[[["12"] * 3] * 32] * 32]}, 400, "JSON integers from 0 to 255; found a string"),
    ("POST", ":predict", {"instances": [[[[True] * 3] * 32] * 32]}, 400, "found true/false"),
    ("POST", ":predict", {"instances": [[[[None] * 3] * 32] * 32]}, 400, "found null"),
    ("POST", ":predict", {"instances": [[[[12.5] * 3] * 32] * 32]}, 400, "found a number with a fraction"),
    ("POST", ":predict", {"instances": [[[[12.0] * 3] * 32] * 32]}, 400, "found a number with a fraction"),
    ("POST", ":predict", b'{"instances": [[[[NaN, 1, 2]]]]}', 400, "found a number with a fraction or exponent (or NaN"),
    ("POST", ":predict", {"instances": images(MAX_BATCH + 1, 3).tolist()}, 400, f"holds {MAX_BATCH + 1} images; at most {MAX_BATCH}"),
    ("POST", ":predict", {"instances": []}, 400, "The request holds no images"),
    ("POST", ":predict", {"instances": {"images": PIXELS_OK}}, 400, '"instances" must be a list'),
    ("POST", ":predict", {"instances": [{"pixels": [1]}]}, 400, 'needs exactly the key "images"'),
    ("POST", ":predict", {"instances": [b64(JPEG)]}, 400, 'send "signature_name": "encoded_images"'),
    # encoded images
    ("POST", ":predict", {"signature_name": ENCODED, "instances": [{"b64": "@@@"}]}, 400, "Image 0: the b64 value is not valid base64"),
    ("POST", ":predict", {"signature_name": ENCODED, "instances": [{"b64": "é"}]}, 400, "not valid base64"),
    ("POST", ":predict", {"signature_name": ENCODED, "instances": [{"b64": 12}]}, 400, 'Image 0 must be {"b64"'),
    ("POST", ":predict", {"signature_name": ENCODED, "instances": PIXELS_OK}, 400, 'Image 0 must be {"b64"'),
    ("POST", ":predict", {"signature_name": ENCODED, "instances": [b64(JPEG), b64(b"hello")]}, 400, "Image 1 is not a JPEG or PNG file"),
    ("POST", ":predict", {"signature_name": ENCODED, "instances": [b64(png(np.zeros((30, 40, 3), np.uint8)))]}, 400,
     "Image 0 is 40x30 pixels (width x height); this model takes exactly 32x32"),
    ("POST", ":predict", {"signature_name": ENCODED, "instances": [b64(JPEG[:100])]}, 400, "Image 0: Invalid JPEG data"),
    ("POST", ":predict", {"signature_name": ENCODED, "instances": [b64(JPEG)] * 3 + [b64(JPEG[:300])]}, 400,
     "Image 3: Invalid JPEG data"),
    ("POST", ":predict", {"signature_name": ENCODED, "instances": [b64(JPEG), b64(png(images(1, 0)[0])[:200])]}, 400,
     "Image 1: "),
    ("POST", ":predict", {"signature_name": ENCODED, "instances": [b64(JPEG)] * (MAX_BATCH + 1)}, 400, "at most 16 per request"),
    # paths and methods
    ("GET", ":predict", None, 405, "GET is not allowed on :predict; use POST"),
    ("PUT", "", b"{}", 405, "PUT is not allowed"),
    ("DELETE", "/metadata", None, 405, "DELETE is not allowed"),
    ("POST", ":classify", {"instances": PIXELS_OK}, 400, "Unsupported method :classify; this model answers :predict"),
    ("POST", ":explode", {"instances": PIXELS_OK}, 404, "Unsupported method :explode"),
    ("POST", "/versions/7:predict", {"instances": PIXELS_OK}, 404, "Servable not found for request: Specific(preact, 7)"),
    ("GET", "/versions/3", None, 404, "served versions: 1, 2"),
    ("GET", "/versions/x", None, 404, "Servable not found"),
    ("GET", "/labels/canary", None, 404, "Unrecognized servable version label: canary. Labels: 'stable'"),
    ("GET", "/../other", None, 404, "Not found"),
    ("GET", "/docs", None, 404, "Not found: /docs"),
    ("GET", "/openapi.json", None, 404, "Not found: /openapi.json"),
    ("GET", "/redoc", None, 404, "Not found"),
    # the body's size: --max_batch images as JSON pixels at most (read and discarded up to twice that,
    # so that urllib, which sends the whole body first, gets the answer rather than a reset connection)
    ("POST", ":predict", b" " * (BODY_LIMIT + 1), 413, f"has {BODY_LIMIT + 1:,} bytes; at most {BODY_LIMIT:,} (set by --max_batch)"),
    ("POST", ":predict", b" " * (2 * BODY_LIMIT), 413, f"at most {BODY_LIMIT:,} (set by --max_batch)"),
]


@pytest.mark.parametrize("method, where, body, status, message", BAD_REQUESTS)
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server, method, where, body, status, message):
    path = f"/v1/models/{MODEL}{where}" if not where.startswith("/docs") and where not in ("/openapi.json", "/redoc") else where
    answer_status, answer = call(server, path, body, method=method)
    assert (answer_status, message in answer.get("error", "")) == (status, True), answer
    assert set(answer) == {"error"}
    assert call(server, f"/v1/models/{MODEL}:predict", {"instances": PIXELS_OK})[0] == 200


def test_unknown_model_and_unusual_methods(server):
    assert call(server, "/v1/models/other:predict", {"instances": PIXELS_OK}) == (
        404, {"error": "Servable not found for request: Latest(other); this server serves 'preact'."}
    )
    assert call(server, "/v1/models/other")[0] == 404
    status, answer = call(server, f"/v1/models/{MODEL}", method="FOO")
    assert status == 405 and set(answer) == {"error"}


def test_oversized_streams_stalled_uploads_and_stalled_headers_are_cut_off(server):
    request = f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\n".encode()
    # Too long, said up front: refused before reading.
    answer = raw_exchange(server, request + b"Content-Length: 99999999999\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b'"error":"The body has 99,999,999,999 bytes' in answer
    # Too long, streamed without a length: cut at the limit.
    chunk = b" " * (BODY_LIMIT // 2 + 1)
    chunked = b"Transfer-Encoding: chunked\r\n\r\n" + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 2 + b"0\r\n\r\n"
    answer = raw_exchange(server, request + chunked)
    assert answer.startswith(b"HTTP/1.1 413") and f"exceeds {BODY_LIMIT:,} bytes".encode() in answer
    # A body that stops coming: 408 after --read_timeout, and the connection is closed.
    started = time.time()
    answer = raw_exchange(server, request + b'Content-Length: 1000\r\n\r\n{"instances": [')
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in answer and b"<still open>" not in answer
    assert READ_TIMEOUT <= time.time() - started < READ_TIMEOUT + 5
    # Headers that never end, and a connection that says nothing: closed after one timeout.
    for data in (request, b""):
        started = time.time()
        assert raw_exchange(server, data) == b""
        assert READ_TIMEOUT - 0.1 < time.time() - started < READ_TIMEOUT + 1.5
    # The same on a kept-alive connection, counted from the previous answer.
    with socket.create_connection(("127.0.0.1", server["port"])) as connection:
        connection.sendall(f"GET /v1/models/{MODEL} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        connection.settimeout(30)
        answer = b""
        while not answer.endswith(b"}]}"):
            answer += connection.recv(65536)
        answered = time.time()
        connection.sendall(b"GET /v1/models/")
        assert connection.recv(65536) == b""
        assert READ_TIMEOUT - 0.1 < time.time() - answered < READ_TIMEOUT + 1.5
    assert call(server, f"/v1/models/{MODEL}:predict", {"instances": PIXELS_OK})[0] == 200


def test_unparsable_http_gets_json_too(server):
    for data in (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".encode(),
                 b"GARBAGE\r\n\r\n"):
        answer = raw_exchange(server, data)
        assert answer.startswith(b"HTTP/1.1 400") and b'{"error": "Invalid HTTP request received.' in answer, answer
    assert call(server, f"/v1/models/{MODEL}")[0] == 200


def test_many_stalled_uploads_are_all_closed(server):
    connections = []
    for _ in range(50):
        connection = socket.create_connection(("127.0.0.1", server["port"]))
        connection.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[".encode())
        connections.append(connection)
    time.sleep(READ_TIMEOUT + 3)
    for connection in connections:
        connection.settimeout(5)
        answer = connection.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        connection.close()
    assert call(server, f"/v1/models/{MODEL}:predict", {"instances": PIXELS_OK})[0] == 200


def test_concurrent_clients_get_their_own_answers(server):
    clients, requests_each = 8, 12
    results, failures = {}, []

    def client(index):
        for request in range(requests_each):
            batch = images(1 + (index + request) % 4, seed=1000 * index + request)
            if request % 3 == 2:  # every third request as PNG files
                body = {"signature_name": ENCODED, "instances": [b64(png(image)) for image in batch]}
            else:
                body = {"instances": batch.tolist()}
            status, answer = call(server, f"/v1/models/{MODEL}:predict", body)
            if status != 200:
                failures.append((index, request, status, answer))
                continue
            results[(index, request)] = (batch, answer)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures
    assert len(results) == clients * requests_each  # nothing lost
    for batch, answer in results.values():  # nothing mixed up
        probabilities = expected(server, batch)
        assert [p["classes"] for p in answer["predictions"]] == probabilities.argmax(axis=1).tolist()
        np.testing.assert_allclose([p["probabilities"] for p in answer["predictions"]], probabilities, atol=1e-5)


def test_one_log_line_per_request(server):
    before = open(server["log"]).read().count(":predict ->")
    call(server, f"/v1/models/{MODEL}:predict", {"instances": images(2, 5).tolist()})
    call(server, f"/v1/models/{MODEL}:predict", {"instances": "x"})
    time.sleep(0.3)
    lines = [line for line in open(server["log"]).read().splitlines() if ":predict ->" in line]
    assert len(lines) == before + 2
    assert f"POST /v1/models/{MODEL}:predict -> 200, 2 images" in lines[-2]
    assert f"POST /v1/models/{MODEL}:predict -> 400, 0 images" in lines[-1]
    assert "Traceback" not in open(server["log"]).read()


def test_a_server_fault_is_a_logged_json_500(server, monkeypatch, caplog):
    """A fault inside the server (here: inference raising) is answered 500 {"error"} and logged with
    its request, and the server keeps serving."""
    from keras_preact.serving import rest

    with local_server(rest.create_app(os.path.dirname(server["log"]), MODEL, max_batch=4)) as local:
        faults = iter([RuntimeError("device on fire")])

        def faulty(*args):
            raise next(faults)

        with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="keras_preact.serve"):
            patch.setattr(rest, "predict", faulty)
            status, answer = call(local, f"/v1/models/{MODEL}:predict", {"instances": PIXELS_OK})
        assert (status, answer) == (500, {"error": "Internal server error; the server log has the details."})
        fault = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert fault and f"Internal error for POST /v1/models/{MODEL}:predict" in fault[0].getMessage()
        assert "device on fire" in fault[0].exc_text
        assert any(":predict -> 500" in r.getMessage() for r in caplog.records)
        assert call(local, f"/v1/models/{MODEL}:predict", {"instances": PIXELS_OK})[0] == 200


def test_nan_outputs_are_answered_as_tf_serving_writes_them(tmp_path):
    """A model whose outputs are NaN is not a fault of the server: 200, with TF Serving's NaN tokens."""
    from keras_preact.serving import rest

    model = keras_preact.PreActResNet(8, block="basic")
    kernel = model.get_layer("predictions").kernel
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    keras_preact.export_saved_model(model, str(tmp_path))
    with local_server(rest.create_app(str(tmp_path), MODEL)) as local:
        request = urllib.request.Request(f"{local['base']}/v1/models/{MODEL}:predict", method="POST",
                                         data=json.dumps({"instances": PIXELS_OK}).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    assert status == 200 and '"probabilities":[NaN,NaN,' in text
    assert np.isnan(json.loads(text)["predictions"][0]["probabilities"]).all()


def test_a_full_batch_of_json_pixels_fits_the_body_limit(server):
    """The worst case of json.dumps' default separators: every value 255."""
    body = json.dumps({"instances": np.full((MAX_BATCH, 32, 32, 3), 255).tolist()}).encode()
    assert len(body) <= BODY_LIMIT
    status, answer = call(server, f"/v1/models/{MODEL}:predict", body)
    assert status == 200 and len(answer["predictions"]) == MAX_BATCH


def test_bodies_held_at_once_are_bounded(server):
    """Eight uploads at the body limit that stall hold all the memory for bodies: the next request
    waits unread until they time out (408), then is answered."""
    from keras_preact.serving.rest import BODIES_HELD

    stalled = []
    for _ in range(BODIES_HELD):
        connection = socket.create_connection(("127.0.0.1", server["port"]))
        connection.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY_LIMIT}\r\n\r\n[".encode())
        stalled.append(connection)
    time.sleep(0.5)
    started = time.time()
    assert call(server, f"/v1/models/{MODEL}:predict", {"instances": PIXELS_OK})[0] == 200
    assert time.time() - started > READ_TIMEOUT - 1
    for connection in stalled:
        connection.settimeout(5)
        assert connection.recv(4096).startswith(b"HTTP/1.1 408")
        connection.close()


def test_docs_pages_only_when_asked(server):
    from keras_preact.serving.rest import create_app

    export_dir = os.path.dirname(server["log"])
    assert {route.path for route in create_app(export_dir, MODEL, docs=True).routes} >= {"/docs", "/openapi.json"}
    assert not {route.path for route in create_app(export_dir, MODEL).routes} & {"/docs", "/openapi.json", "/redoc"}


def start(*flags, export_dir=None):
    """(exit status, stderr) of the serve command with `flags`, which must fail at start, in a
    fresh process."""
    arguments = [f"--export_dir={export_dir}"] if export_dir else []
    result = subprocess.run(
        [sys.executable, "-m", "keras_preact.serve", "--model_name=m", *arguments, *flags],
        capture_output=True, text=True, timeout=300, env=ENV,
    )
    return result.returncode, result.stderr


def start_here(capsys, *flags, export_dir):
    """The same in this process: `serve.main` stops before uvicorn runs (faster than a process each)."""
    from keras_preact import serve

    with pytest.raises(SystemExit) as stopped:
        serve.main(["--model_name=m", f"--export_dir={export_dir}", *flags])
    return stopped.value.code, capsys.readouterr().err


def test_every_flag_is_checked_at_start(server, tmp_path, capsys):
    export_dir = os.path.dirname(server["log"])
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "incomplete" / "1").mkdir(parents=True)
    (tmp_path / "corrupt" / "1" / "variables").mkdir(parents=True)
    (tmp_path / "corrupt" / "1" / "saved_model.pb").write_bytes(b"\x00garbage")
    (tmp_path / "corrupt" / "1" / "variables" / "variables.index").write_bytes(b"")
    cases = [
        (["--max_batch=0"], export_dir, "--max_batch must be a positive integer of at most 1024, got 0"),
        (["--max_batch=-1"], export_dir, "--max_batch must be a positive integer of at most 1024, got -1"),
        (["--max_batch=1025"], export_dir, "--max_batch must be a positive integer of at most 1024, got 1025"),
        (["--port=99999"], export_dir, "--port must be from 1 to 65535, got 99999"),
        (["--port=0"], export_dir, "--port must be from 1 to 65535"),
        (["--read_timeout=0"], export_dir, "--read_timeout must be in [0.001"),
        (["--read_timeout=nan"], export_dir, "--read_timeout must be a finite number"),
        (["--version_labels=stable"], export_dir, "--version_labels takes LABEL=VERSION pairs"),
        (["--version_labels=a=1,a=2"], export_dir, "--version_labels names 'a' twice"),
        (["--model_name=a/b"], export_dir, "--model_name must be a non-empty name without '/'"),
        ([f"--port={server['port']}"], export_dir, f"Cannot listen on 127.0.0.1:{server['port']}: Address already in use"),
        (["--host=no.such.host.invalid"], export_dir, "Cannot listen on no.such.host.invalid"),
        ([], str(tmp_path / "missing"), "does not exist"),
        ([], str(tmp_path / "file"), "is a file"),
        ([], str(tmp_path / "empty"), "has no complete numbered version folder"),
        ([], str(tmp_path / "incomplete"), "(found only: 1: no saved_model.pb)"),
        ([], str(tmp_path / "corrupt"), "1 cannot be loaded as a SavedModel"),
        (["--version_labels=stable=3"], export_dir, "Label 'stable' names version 3, which is not a complete version"),
        (["--version_policy=newest"], export_dir, "version_policy must be latest:N, all or specific:V1,V2,...; got 'newest'"),
        (["--version_policy=specific:7"], export_dir, "has none of the versions 7 that version_policy names"),
        (["--file_system_poll_wait_seconds=-1"], export_dir, "--file_system_poll_wait_seconds must be in [0.1"),
        (["--file_system_poll_wait_seconds=0.001"], export_dir, "--file_system_poll_wait_seconds must be in [0.1, 86400]"),
        (["--read_timeout=1e300"], export_dir, "--read_timeout must be in [0.001, 86400], got 1e+300"),
        (["--file_system_poll_wait_seconds=inf"], export_dir,
         "--file_system_poll_wait_seconds must be a finite number, got 'inf' (valid: [0.1, 86400])"),
        (["--file_system_poll_wait_seconds=1e10"], export_dir, "--file_system_poll_wait_seconds must be in [0.1, 86400]"),
        (["--version_policy=specific:99999999999999999999"], export_dir, "names a version above 9223372036854775807"),
        (["--port=http"], export_dir, "--port must be from 1 to 65535, got 'http'"),
        (["--port=8_501"], export_dir, "--port must be from 1 to 65535, got '8_501'"),
        (["--port=\uff18\uff15\uff10\uff11"], export_dir, "--port must be from 1 to 65535, got '\uff18\uff15\uff10\uff11'"),
        (["--max_batch=lots"], export_dir, "--max_batch must be a positive integer of at most 1024, got 'lots'"),
        (["--read_timeout=5s"], export_dir, "--read_timeout must be a finite number, got '5s' (valid: [0.001, 86400])"),
    ]
    for flags, where, message in cases:
        if "--port" not in " ".join(flags):
            flags = [*flags, f"--port={free_port()}"]
        status, stderr = start_here(capsys, *flags, export_dir=where)
        assert status == 1 and stderr.startswith("error: ") and stderr.count("\n") == 1, (flags, stderr)
        assert message in stderr, (flags, stderr)


def test_start_errors_in_a_fresh_process_are_one_line(tmp_path):
    for flags, message in [(["--max_batch=0"], "--max_batch must be a positive integer"),
                           ([f"--port={free_port()}"], "has no complete numbered version folder")]:
        status, stderr = start(*flags, export_dir=str(tmp_path))
        lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("WARNING", "I0000"))]
        assert status == 1 and "Traceback" not in stderr, stderr
        assert [line for line in lines if line.startswith("error: ")] == [lines[-1]] and message in lines[-1], lines


def test_the_client_example_sends_the_test_folders_jpegs(server, tmp_path):
    client = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "client.py")

    def run_client(*flags):
        return subprocess.run([sys.executable, client, f"--server={server['base']}", f"--model_name={MODEL}", *flags],
                              capture_output=True, text=True, timeout=300)

    # A copy of the sample with what Jupyter leaves behind, which the client must skip.
    folder = tmp_path / "test"
    shutil.copytree(SAMPLE, folder)
    (folder / "cat" / ".ipynb_checkpoints").mkdir()
    (folder / "cat" / ".ipynb_checkpoints" / "0000-checkpoint.jpg").write_bytes(b"not an image")
    (folder / "dog" / "._0000.jpg").write_bytes(b"macOS metadata")
    result = run_client(f"--images={folder}", "--batch=7", "--show=100")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    # The classes interleaved: the first file of each, then the second, ...
    order = [os.path.join(SAMPLE, c, f) for f in sorted(os.listdir(os.path.join(SAMPLE, "cat"))) for c in choices.CIFAR10_CLASSES]
    assert [line.split(": ")[0] for line in lines[:-1]] == [p.replace(SAMPLE, str(folder)) for p in order]
    probabilities = expected(server, pillow_decoded(order))
    assert [line.split(": ")[1].split(" (")[0] for line in lines[:-1]] == [choices.CIFAR10_CLASSES[i] for i in probabilities.argmax(1)]
    accuracy = np.mean(probabilities.argmax(1) == [choices.CIFAR10_CLASSES.index(p.split(os.sep)[-2]) for p in order])
    assert lines[-1].startswith(f"{len(order)} images in") and f"accuracy {accuracy:.2%} on {len(order)} labelled" in lines[-1]
    # --limit samples every class.
    limited = run_client(f"--images={SAMPLE}", "--limit=10", "--show=10").stdout.strip().splitlines()
    assert sorted(line.split(os.sep)[-2] for line in limited[:-1]) == sorted(choices.CIFAR10_CLASSES)
    too_many = run_client(f"--images={SAMPLE}", "--batch=17")
    assert too_many.returncode == 1 and too_many.stderr == "error: HTTP 400: The request holds 17 images; at most 16 per request.\n"
    readme = os.path.join(os.path.dirname(client), "..", "README.md")
    not_an_image = run_client(f"--images={readme}")
    assert not_an_image.returncode == 1 and not_an_image.stderr == f"error: {readme} is not a .jpg/.jpeg/.png file.\n"


def test_pixel_arrays_are_parsed_by_numpy_and_anything_else_by_json():
    from keras_preact.serving import request_json

    batch = images(2, 7)
    parsed = request_json.parse(json.dumps({"instances": batch.tolist(), "signature_name": "[1, 2]"}).encode())
    assert parsed["signature_name"] == "[1, 2]" and parsed["instances"].dtype == np.uint8
    np.testing.assert_array_equal(parsed["instances"], batch)
    assert request_json.parse(b"[[],[]]").shape == (2, 0)
    # Not one regular array of 0-255: Python's values, whose checks name the problem.
    for text, value in [(b"[[1],[2,3]]", [[1], [2, 3]]), (b"[[1],2]", [[1], 2]), (b"[256]", [256]), (b"[1.5]", [1.5])]:
        assert request_json.parse(text) == value
    for text in (b"[1 2]", b"[01]", b"[1,,2]", b"[,1]", b"[1,]", b"[1][2]"):
        with pytest.raises(ValueError):
            request_json.parse(text)


def test_huge_version_numbers_are_404_not_500(server):
    for path in (f"/v1/models/{MODEL}/versions/{'9' * 5000}", f"/v1/models/{MODEL}/versions/{'9' * 5000}:predict"):
        status, answer = call(server, path, {"instances": PIXELS_OK} if path.endswith("predict") else None)
        assert status == 404 and "...(5000 characters)); served versions: 1, 2." in answer["error"], answer


def test_slow_chunked_uploads_do_not_hold_the_body_limit(server):
    """Sixteen uploads without a length trickle a byte at a time: they hold what has come, so a good
    request is answered at once (TF Serving's case of slowloris bodies)."""
    trickling = []
    for _ in range(16):
        connection = socket.create_connection(("127.0.0.1", server["port"]))
        connection.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        trickling.append(connection)
    try:
        for _ in range(3):
            for connection in trickling:
                connection.sendall(b"1\r\n[\r\n")
            time.sleep(0.1)
        started = time.time()
        assert call(server, f"/v1/models/{MODEL}:predict", {"instances": PIXELS_OK})[0] == 200
        answered = time.time() - started
    finally:
        for connection in trickling:
            connection.close()
    assert answered < READ_TIMEOUT - 0.5  # not after the uploads' time-out (generous: a busy CI)


def test_prometheus_metrics(server):
    call(server, f"/v1/models/{MODEL}:predict", {"instances": PIXELS_OK})
    call(server, f"/v1/models/{MODEL}/versions/7")
    request = urllib.request.Request(server["base"] + "/monitoring/prometheus/metrics")
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert int(samples['keras_preact_requests_total{route="predict",code="200"}']) >= 1
    assert int(samples['keras_preact_requests_total{route="status",code="404"}']) >= 1
    assert samples['keras_preact_request_duration_seconds_count{route="predict"}'] == samples[
        'keras_preact_request_duration_seconds_bucket{route="predict",le="+Inf"}']
    assert samples['keras_preact_model_loads_total{outcome="success"}'] == "2"
    assert samples['keras_preact_model_versions{state="AVAILABLE"}'] == "2"
    assert "# TYPE keras_preact_request_duration_seconds histogram" in text


def test_a_new_version_is_served_under_load_without_a_lost_request(tmp_path):
    """Version 2 exported while 8 clients send requests: every request is answered 200, version 2
    answers within the poll interval plus its load time, and version 1 is unloaded (latest:1)."""
    from keras_preact.serving import rest

    models = {}
    for version in (1, 2):
        models[version] = keras_preact.PreActResNet(8, block="basic")
        randomize_batch_norms(models[version], seed=version)
    keras_preact.export_saved_model(models[1], str(tmp_path), version=1)
    batch = images(2, 11)
    answers = {v: expected({"models": models}, batch, v) for v in (1, 2)}
    with local_server(rest.create_app(str(tmp_path), MODEL, max_batch=4, poll_seconds=0.5)) as local:
        results, stop = [], threading.Event()

        def client():
            while not stop.is_set():
                status, body = call(local, f"/v1/models/{MODEL}:predict", {"instances": batch.tolist()})
                probabilities = np.array([p["probabilities"] for p in body.get("predictions", [])])
                version = next((v for v in (1, 2) if probabilities.shape == (2, 10) and np.allclose(
                    probabilities, answers[v], atol=1e-5)), None)
                results.append((time.time(), status, version))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        keras_preact.export_saved_model(models[2], str(tmp_path), version=2)
        exported = time.time()
        deadline = exported + 60
        while time.time() < deadline and not any(v == 2 and t > exported for t, _, v in results[-8:]):
            time.sleep(0.2)
        time.sleep(1)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        status = call(local, f"/v1/models/{MODEL}")[1]["model_version_status"]
    assert [(s, v) for _, s, v in results if s != 200 or v is None] == []  # none lost, none wrong
    first_v2 = min(t for t, _, v in results if v == 2)
    assert first_v2 - exported < 30  # poll (0.5 s) + load (a few s); generous for a busy CI
    assert all(v == 2 for t, _, v in results if t > first_v2 + 5)
    assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE"), ("1", "END")]


def odd_image_files():
    """{kind: file} of 4x4 images that are not 8-bit RGB, as real data sets hold them."""
    import io
    import struct
    import zlib

    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)

    def saved(image, kind, **options):
        buffer = io.BytesIO()
        image.save(buffer, kind, **options)
        return buffer.getvalue()

    def png16(values, colour):  # Pillow writes no 16-bit RGB PNG: the chunks by hand
        rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
        chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        header = struct.pack(">IIBBBBB", 4, 4, 16, colour, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")

    return {
        "grayscale png": saved(Image.fromarray(rgb[..., 0]), "PNG"),
        "grayscale jpeg": saved(Image.fromarray(rgb[..., 0]), "JPEG"),
        "grayscale+alpha png": saved(Image.fromarray(rgb[..., :2].copy(), "LA"), "PNG"),
        "rgba png": saved(Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"), "PNG"),
        "palette png": saved(Image.fromarray(rgb).quantize(8), "PNG"),
        "palette png with transparency": saved(Image.fromarray(rgb).quantize(8), "PNG", transparency=2),
        "cmyk jpeg": saved(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "16-bit grayscale png": png16(rng.integers(0, 65536, (4, 4)), 0),
        "16-bit rgb png": png16(rng.integers(0, 65536, (4, 12)), 2),
    }


@pytest.mark.parametrize("kind", list(odd_image_files()))
def test_training_decodes_each_kind_of_file_as_serving_does(tmp_path, kind):
    """Training's decoder (Pillow) and the SavedModel's (TensorFlow's decode_png/decode_jpeg with 3
    channels, what the encoded_images signature runs) give the same RGB pixels."""
    import io

    import tensorflow as tf
    from PIL import Image

    from keras_preact.serving.decoding import decode_rgb

    data = odd_image_files()[kind]
    served = (tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE") if data[:3] == b"\xff\xd8\xff"
              else tf.io.decode_png(data, channels=3)).numpy()
    with Image.open(io.BytesIO(data)) as image:
        np.testing.assert_array_equal(decode_rgb(image), served)
    assert served.std() > 0  # a real image, not a blank one that any decoder would match


def test_help_lists_every_flag_with_its_default(capsys):
    from keras_preact import export, serve

    for command in (serve, export):
        with pytest.raises(SystemExit):
            command.main(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        for action in command._parser()._actions:
            flag = action.option_strings[-1]
            assert flag in text, flag
            assert action.help and (action.default in (None, False, argparse.SUPPRESS) or f"(default: {action.default})" in text), flag


def test_a_version_that_fails_to_load_keeps_the_served_one_and_is_retried_once_its_files_change(tmp_path):
    """Version 2 copied without its variables (a `cp -r` seen half-way) fails to load: version 1
    stays served; once the copy completes version 2 loads; once it is removed version 1 is back."""
    from keras_preact.serving.versions import Servable

    export_dir = str(tmp_path)
    keras_preact.export_saved_model(keras_preact.PreActResNet(8, block="basic"), export_dir, version=1)
    servable = Servable(export_dir)
    os.mkdir(tmp_path / "2")
    shutil.copy(tmp_path / "1" / "saved_model.pb", tmp_path / "2")
    servable._sync()
    assert servable.available() == [1]
    assert servable.status(2)[0]["state"] == "END" and servable.status(2)[0]["status"]["error_message"]
    servable._sync()  # unchanged files: no second try
    assert servable.available() == [1]
    shutil.copytree(tmp_path / "1" / "variables", tmp_path / "2" / "variables")
    servable._sync()
    assert servable.available() == [2]
    shutil.rmtree(tmp_path / "2")
    servable._sync()
    assert servable.available() == [1]


def test_status_lists_every_version_when_none_is_available(tmp_path):
    """Version 1 removed and version 2 failing to load: the model is still known, so its status is
    200 with each version's state (TF Serving's answer); 404 is for another model's name."""
    from keras_preact.serving import rest

    keras_preact.export_saved_model(keras_preact.PreActResNet(8, block="basic"), str(tmp_path), version=1)
    app = rest.create_app(str(tmp_path), MODEL)
    with local_server(app) as local:
        os.mkdir(tmp_path / "2")
        shutil.copy(tmp_path / "1" / "saved_model.pb", tmp_path / "2")  # no variables: fails to load
        shutil.rmtree(tmp_path / "1")
        app.state.servable._sync()
        status, answer = call(local, f"/v1/models/{MODEL}")
        assert status == 200, answer
        assert [(s["version"], s["state"], s["status"]["error_code"]) for s in answer["model_version_status"]] == [
            ("2", "END", "UNKNOWN"), ("1", "END", "OK")]
        assert "cannot be loaded as a SavedModel" in answer["model_version_status"][0]["status"]["error_message"]
        status, answer = call(local, f"/v1/models/{MODEL}/versions/2")
        assert status == 200 and [s["version"] for s in answer["model_version_status"]] == ["2"]
        assert call(local, f"/v1/models/{MODEL}/versions/3") == (
            404, {"error": f"Servable not found for request: Specific({MODEL}, 3); served versions: none."})
        assert call(local, "/v1/models/other")[0] == 404
        status, answer = call(local, f"/v1/models/{MODEL}:predict", {"instances": PIXELS_OK})
        assert status == 404 and "no version is available now" in answer["error"]


def test_versions_are_parsed_as_int64_with_leading_zeros(server):
    for path in ("/versions/002", f"/versions/{'0' * 5000}2"):
        assert call(server, f"/v1/models/{MODEL}{path}")[1]["model_version_status"][0]["version"] == "2"
    status, answer = call(server, f"/v1/models/{MODEL}/versions/0001:predict", {"instances": images(1, 3).tolist()})
    assert status == 200
    np.testing.assert_allclose([p["probabilities"] for p in answer["predictions"]], expected(server, images(1, 3), 1), atol=1e-5)
    for version in ("+2", "2.0", "٢", str(2**63 + 2)):  # not an int64 in decimal digits
        assert call(server, f"/v1/models/{MODEL}/versions/{urllib.parse.quote(version)}")[0] == 404, version


def test_one_bound_for_versions_wherever_they_come_from():
    from keras_preact.serving.layout import MAX_VERSION, check_version, parse_version
    from keras_preact.serving.versions import VersionPolicy

    assert VersionPolicy.parse(f"specific:{MAX_VERSION},007,7").numbers == (7, MAX_VERSION)  # 19 digits
    assert parse_version(str(MAX_VERSION)) == check_version("version", MAX_VERSION) == MAX_VERSION
    with pytest.raises(ValueError, match=f"names a version above {MAX_VERSION}, the largest TF Serving reads"):
        VersionPolicy.parse(f"specific:1,{MAX_VERSION + 1}")
    with pytest.raises(ValueError, match=f"is above {MAX_VERSION}"):
        check_version("version", MAX_VERSION + 1)
    assert parse_version(str(MAX_VERSION + 1)) is None


def test_numbered_folders_that_are_no_version_are_named_not_served(tmp_path):
    """A folder above int64's largest, or with leading zeros, is no version an export writes: skipped with its reason."""
    from keras_preact.serving.layout import MAX_VERSION, NOT_A_VERSION, next_version, servable_versions

    for name in ("1", "007", str(MAX_VERSION + 1), "9" * 250):
        os.makedirs(tmp_path / name)
    complete, skipped = servable_versions(str(tmp_path))
    assert complete == [] and [reason for _, reason in skipped].count(NOT_A_VERSION) == 3
    assert ("1", "no saved_model.pb") in skipped and next_version(str(tmp_path)) == 2


def test_the_logged_url_brackets_an_ipv6_host(server, monkeypatch, caplog):
    import uvicorn

    from keras_preact import command_line, runtime, serve

    # main() up to uvicorn, in this process: no socket, no change to this process's logging or allocator.
    monkeypatch.setattr(serve, "_bind", lambda host, port: socket.socket())
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: sockets[0].close())
    monkeypatch.setattr(command_line, "set_log_levels", lambda *args: None)
    monkeypatch.setattr(runtime, "return_freed_memory", lambda: None)
    with caplog.at_level(logging.INFO, logger="keras_preact.serve"):
        serve.main(["--model_name=m", f"--export_dir={os.path.dirname(server['log'])}", "--host=::1", "--port=8501"])
    assert any(" on http://[::1]:8501 (" in record.getMessage() for record in caplog.records), caplog.text
    assert serve.address("127.0.0.1", 8501) == "127.0.0.1:8501"


def test_a_partial_folder_being_written_is_told_from_an_abandoned_one(tmp_path, monkeypatch, caplog):
    """An export's partial folder is logged as being written while its writer lives, and as one that
    did not finish once the writer is gone; each once."""
    from keras_preact.serving import layout, saved_model
    from keras_preact.serving.versions import Servable

    keras_preact.export_saved_model(keras_preact.PreActResNet(8, block="basic"), str(tmp_path), version=1)
    servable = Servable(str(tmp_path))
    partial = tmp_path / ".2.partial-0123"
    partial.mkdir()
    with caplog.at_level(logging.INFO, logger="keras_preact.serve"):
        with layout.writer_lock(str(partial)):  # as an export holds it
            servable._sync()
            servable._sync()
        servable._sync()  # the writer is gone (its lock with it)
        servable._sync()
    lines = [(r.levelname, r.getMessage().split(os.sep)[-1]) for r in caplog.records if "Skipping" in r.getMessage()]
    assert lines == [("INFO", f"{partial.name}: {layout.BEING_WRITTEN}"), ("WARNING", f"{partial.name}: {layout.ABANDONED}")]
    assert os.listdir(partial) == []  # the lock's file goes with its writer

    seen = []  # what a server sees in the middle of a real export
    real_wrap = saved_model._wrap
    monkeypatch.setattr(saved_model, "_wrap", lambda *args: (real_wrap(*args), seen.append(layout.servable_versions(str(tmp_path)))))
    keras_preact.export_saved_model(keras_preact.PreActResNet(8, block="basic"), str(tmp_path), version=3)
    [(complete, skipped)] = seen
    assert complete == [1] and sorted(reason for _, reason in skipped) == sorted([layout.ABANDONED, layout.BEING_WRITTEN])
    assert layout.WRITER_LOCK not in os.listdir(tmp_path / "3")
