"""Command: serve an exported model over TF Serving's REST API on this machine.

    python -m keras_preact.serve --export_dir serving/resnet164 --port 8501 --model_name resnet164

Needs TensorFlow, FastAPI and uvicorn (the `[serve]` extra); the application is
`keras_preact.serving.rest.create_app`.
"""

import argparse
import logging
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_preact.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--export_dir", required=True, help="the model's base directory (holding version folders)")
    parser.add_argument("--port", type=int, default=8501, help="TF Serving's REST port by default")
    parser.add_argument("--model_name", required=True, help="the NAME in /v1/models/NAME")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--max_batch", type=int, default=256, help="most images per request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import uvicorn

    from keras_preact.serving.rest import create_app, log

    try:
        app = create_app(args.export_dir, args.model_name, args.max_batch)
    except (FileNotFoundError, ValueError) as problem:
        parser.exit(1, f"error: {problem}\n")
    log.info(
        "Serving %s version %d as %r on http://%s:%d",
        args.export_dir, app.state.servable.version, args.model_name, args.host, args.port,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    sys.exit(main())
