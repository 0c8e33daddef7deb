"""A client of the REST server: sends JPEG/PNG files as TF Serving's {"b64": ...} values.

    python -m keras_preact.serve --export_dir serving/resnet164 --model_name resnet164 &
    python examples/client.py --model_name resnet164 --images ../shared/data/cifar10-jpeg/test --limit 500

Reads `IMAGES/<class>/*.jpg|png` (or files given one by one), posts them in batches to
`/v1/models/NAME:predict` with `"signature_name": "encoded_images"`, and prints each answer's
class name and, where the folder names the true class, the accuracy. The same request works
against TensorFlow Serving. It needs Python alone (no TensorFlow, no Keras).
"""

import argparse
import base64
import itertools
import json
import os
import sys
import time
import urllib.error
import urllib.request

EXTENSIONS = (".jpg", ".jpeg", ".png")


def image_files(paths):
    """(path, true class name or None) for each image file under `paths`, in their order; a folder's
    classes interleaved (the first file of each class, then the second, ...) so that any --limit
    samples every class. Hidden files and folders (.ipynb_checkpoints) are skipped."""
    found = []
    for path in paths:
        if os.path.isfile(path):
            if not path.lower().endswith(EXTENSIONS):
                raise FileNotFoundError(f"{path} is not a {'/'.join(EXTENSIONS)} file.")
            found.append((path, None))
            continue
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is neither an image file nor a folder.")
        by_folder = []
        for folder, subfolders, files in os.walk(path):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            label = os.path.basename(folder) if folder != path else None
            images = sorted(f for f in files if f.lower().endswith(EXTENSIONS) and not f.startswith("."))
            by_folder.append([(os.path.join(folder, f), label) for f in images])
        found += [item for row in itertools.zip_longest(*by_folder) for item in row if item is not None]
    if not found:
        raise FileNotFoundError(f"No {'/'.join(EXTENSIONS)} files under {', '.join(paths)}.")
    return found


def predict(server, model_name, files, timeout=60):
    """The server's predictions for the files' bytes, as TF Serving's row format."""
    instances = []
    for path in files:
        with open(path, "rb") as f:
            instances.append({"b64": base64.b64encode(f.read()).decode("ascii")})
    body = json.dumps({"signature_name": "encoded_images", "instances": instances}).encode()
    request = urllib.request.Request(f"{server}/v1/models/{model_name}:predict", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as error:  # the server says what is wrong in {"error": ...}
        raise RuntimeError(f"HTTP {error.code}: {json.loads(error.read()).get('error')}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8501", help="the REST server's address")
    parser.add_argument("--model_name", required=True, help="the NAME in /v1/models/NAME")
    parser.add_argument("--images", nargs="+", required=True, help="image files, or folders of <class>/<image> files")
    parser.add_argument("--batch", type=int, default=32, help="images per request (at most the server's --max_batch)")
    parser.add_argument("--limit", type=int, default=None, help="send at most this many images")
    parser.add_argument("--show", type=int, default=5, help="print this many answers")
    args = parser.parse_args(argv)
    if args.batch < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch and --limit must be positive")
    try:
        files = image_files(args.images)[: args.limit]
        started, right, labelled, shown = time.perf_counter(), 0, 0, 0
        for first in range(0, len(files), args.batch):
            batch = files[first : first + args.batch]
            for (path, label), answer in zip(batch, predict(args.server, args.model_name, [p for p, _ in batch])):
                name, confidence = answer["class_names"], max(answer["probabilities"])
                if shown < args.show:
                    print(f"{path}: {name} ({confidence:.1%})")
                    shown += 1
                if label is not None:
                    labelled += 1
                    right += name == label
        seconds = time.perf_counter() - started
    except (OSError, RuntimeError) as error:
        parser.exit(1, f"error: {error}\n")
    print(f"{len(files)} images in {seconds:.1f} s ({len(files) / seconds:.0f} images/s)", end="")
    print(f"; accuracy {right / labelled:.2%} on {labelled} labelled by their folder" if labelled else "")


if __name__ == "__main__":
    sys.exit(main())
