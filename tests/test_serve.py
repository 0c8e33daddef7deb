"""The local TF-Serving-compatible server, over real HTTP on the loopback interface."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

import keras_preact
from keras_preact.serving.rest import BadRequest, parse_images

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

MODEL = "preact"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    export_dir = str(tmp_path_factory.mktemp("serving"))
    keras_preact.export_saved_model(keras_preact.PreActResNet(8, block="basic"), export_dir, version=2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = os.path.join(export_dir, "server.log")
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_preact.serve", f"--export_dir={export_dir}", f"--port={port}",
         f"--model_name={MODEL}", "--max_batch=16"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/v1/models/{MODEL}", timeout=2)
            break
        except OSError:
            assert process.poll() is None, open(log_path).read()
            time.sleep(0.3)
    signature = tf.saved_model.load(os.path.join(export_dir, "2")).signatures["serving_default"]
    yield {"base": base, "signature": signature, "log": log_path}
    process.terminate()
    process.wait(timeout=30)
    log.close()


def call(server, path, body=None, method=None):
    """(status, parsed JSON) of one HTTP request."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    request = urllib.request.Request(server["base"] + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def expected(server, images):
    out = server["signature"](images=tf.constant(images, tf.uint8))
    return out["probabilities"].numpy(), out["classes"].numpy()


def images(count, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(count, 32, 32, 3)).astype(np.uint8)


def test_status(server):
    status, body = call(server, f"/v1/models/{MODEL}")
    assert status == 200
    assert body == {"model_version_status": [{"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert call(server, "/v1/models/other")[0] == 404


def test_row_format(server):
    batch = images(3, 0)
    status, body = call(server, f"/v1/models/{MODEL}:predict", {"instances": batch.tolist()})
    assert status == 200
    probabilities, classes = expected(server, batch)
    assert [p["classes"] for p in body["predictions"]] == classes.tolist()
    np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], probabilities, atol=1e-6)
    named = call(server, f"/v1/models/{MODEL}:predict", {"instances": [{"images": batch[0].tolist()}]})[1]
    assert named["predictions"][0]["classes"] == classes[0]


def test_columnar_format(server):
    batch = images(2, 1)
    probabilities, classes = expected(server, batch)
    for inputs in (batch.tolist(), {"images": batch.tolist()}):
        status, body = call(server, f"/v1/models/{MODEL}:predict", {"inputs": inputs})
        assert status == 200
        assert body["outputs"]["classes"] == classes.tolist()
        np.testing.assert_allclose(body["outputs"]["probabilities"], probabilities, atol=1e-6)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "Malformed JSON"),
        ({"images": []}, 'exactly one of "instances" (row format) or "inputs"'),
        ({"instances": [[[[0, 0, 0]]]]}, "The images have shape [1, 1, 1, 3]; expected [any, 32, 32, 3]"),
        ({"instances": [[0] * 5]}, "expected [any, 32, 32, 3]"),
        ({"instances": images(1, 2).astype(int).__add__(300).tolist()}, "integers from 0 to 255"),
        ({"instances": (images(1, 2) - 0.5).tolist()}, "integers from 0 to 255"),
        ({"instances": images(17, 3).tolist()}, "holds 17 images; at most 16 per request"),
        ({"instances": []}, "shape [0]"),
        ({"instances": [{"pixels": [1]}]}, 'needs the key "images"'),
        ({"instances": images(1, 0).tolist(), "signature_name": "train"}, "Unknown signature_name 'train'"),
    ],
)
def test_bad_requests_get_400_and_the_server_keeps_serving(server, body, message):
    status, answer = call(server, f"/v1/models/{MODEL}:predict", body)
    assert status == 400 and message in answer["error"], answer
    assert call(server, f"/v1/models/{MODEL}:predict", {"instances": images(1, 0).tolist()})[0] == 200


def test_unknown_model_and_method(server):
    assert call(server, "/v1/models/other:predict", {"instances": images(1, 0).tolist()})[0] == 404
    assert call(server, f"/v1/models/{MODEL}:classify", {"instances": images(1, 0).tolist()})[0] == 404


def test_concurrent_clients_get_their_own_answers(server):
    clients, requests_each = 8, 12
    results, failures = {}, []

    def client(index):
        for request in range(requests_each):
            batch = images(1 + (index + request) % 4, seed=1000 * index + request)
            status, body = call(server, f"/v1/models/{MODEL}:predict", {"instances": batch.tolist()})
            if status != 200:
                failures.append((index, request, status, body))
                continue
            results[(index, request)] = (batch, body)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures
    assert len(results) == clients * requests_each  # nothing lost
    for batch, body in results.values():  # nothing mixed up
        probabilities, classes = expected(server, batch)
        assert [p["classes"] for p in body["predictions"]] == classes.tolist()
        np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], probabilities, atol=1e-6)


def test_one_log_line_per_request(server):
    before = open(server["log"]).read().count(":predict ->")
    call(server, f"/v1/models/{MODEL}:predict", {"instances": images(2, 5).tolist()})
    time.sleep(0.2)
    lines = [line for line in open(server["log"]).read().splitlines() if ":predict ->" in line]
    assert len(lines) == before + 1
    assert f"POST /v1/models/{MODEL}:predict -> 200, 2 images" in lines[-1]


def test_parse_images_rejects_ragged_lists():
    with pytest.raises(BadRequest, match="nested lists of shape"):
        parse_images(json.dumps({"instances": [[[1, 2, 3]], [[1]]]}), (32, 32, 3), 8)


def test_missing_export_dir_is_explained(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "keras_preact.serve", f"--export_dir={tmp_path}", "--model_name=x", "--port=1"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 1 and "has no numbered version folder" in result.stderr
