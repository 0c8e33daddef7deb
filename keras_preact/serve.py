"""Command: serve an exported model over TF Serving's REST API on this machine.

    python -m keras_preact.serve --export_dir serving/resnet164 --port 8501 --model_name resnet164

Needs TensorFlow, FastAPI and uvicorn (the `[serve]` extra); the application is
`keras_preact.serving.rest.create_app`. Every flag is checked before the model loads, and every
problem at start is one line on stderr and exit status 1.
"""

import json
import re
import socket
import sys

from keras_preact import choices, command_line, runtime
from keras_preact.serving.layout import parse_version
from keras_preact.serving.rest import MAX_BATCH, MAX_SECONDS
from keras_preact.serving.versions import VersionPolicy


def _parser():
    parser = command_line.ArgumentParser(prog="python -m keras_preact.serve", description=__doc__.split("\n\n")[0],
                                     formatter_class=command_line.HelpFormatter)
    parser.add_argument("--export_dir", required=True, help="the model's base directory (holding version folders; required)")
    parser.add_argument("--model_name", required=True, help="the NAME in /v1/models/NAME (required)")
    parser.add_argument("--port", type=command_line.number(int), default=8501, help="TF Serving's REST port by default (1-65535)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--max_batch", type=command_line.number(int), default=256, help=f"most images per request (at most {MAX_BATCH}); sets the body limit")
    parser.add_argument("--read_timeout", type=command_line.number(float), default=30.0,
                        help=f"seconds a request's headers, and then its body, may take to arrive (0.001 to {MAX_SECONDS})")
    parser.add_argument(
        "--version_labels", default="", help="LABEL=VERSION,... : also serve these versions at /labels/LABEL"
    )
    parser.add_argument("--version_policy", default="latest:1",
                        help="the versions served: latest:N (the N highest), all, or specific:V1,V2 (TF Serving's policies)")
    parser.add_argument("--file_system_poll_wait_seconds", type=command_line.number(float), default=1.0,
                        help=f"seconds between looks at --export_dir for new versions: 0.1 to {MAX_SECONDS}, or 0: only at start")
    parser.add_argument("--docs", action="store_true", help="serve FastAPI's /docs and /openapi.json (default: off)")
    parser.add_argument("--verbosity", choices=command_line.VERBOSITIES, default="info",
                        help="the least severe log lines shown (info: one line a request); TensorFlow's C++ log "
                             "follows $TF_CPP_MIN_LOG_LEVEL")
    return parser


def _labels(text):
    labels = {}
    for item in filter(None, text.split(",")):
        label, _, text = item.partition("=")
        version = parse_version(text)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", label) or not version:  # 1 to int64's largest
            raise ValueError(f"--version_labels takes LABEL=VERSION pairs such as stable=1,canary=2; got {item!r}.")
        if label in labels:
            raise ValueError(f"--version_labels names {label!r} twice.")
        labels[label] = version
    return labels


def _check(args):
    """The flags' problems as a ValueError, before anything loads."""
    if not re.fullmatch(r"[^/:\s]+", args.model_name):
        raise ValueError(f"--model_name must be a non-empty name without '/', ':' or spaces, got {args.model_name!r}.")
    choices.check_count("--max_batch", args.max_batch, maximum=MAX_BATCH)
    if not isinstance(args.port, int) or not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be from 1 to 65535, got {args.port!r}.")
    choices.check_number("--read_timeout", args.read_timeout, low=0.001, high=MAX_SECONDS)
    if args.file_system_poll_wait_seconds != 0:  # 0: only at start; a shorter interval would be a busy loop
        choices.check_number("--file_system_poll_wait_seconds", args.file_system_poll_wait_seconds, low=0.1, high=MAX_SECONDS)
    VersionPolicy.parse(args.version_policy)
    return _labels(args.version_labels)


def _bind(host, port):
    """A listening socket on (host, port), so that a taken port or an unknown host fails in one line."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as error:
        raise OSError(f"Cannot listen on {address(host, port)}: {error.strerror or error}.") from None
    return listener


def address(host, port):
    """`host:port` as a URL writes it: an IPv6 host in brackets.

    >>> address("::1", 8501), address("localhost", 8501)
    ('[::1]:8501', 'localhost:8501')
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _protocol(timeout):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers have not come within
    `timeout` seconds of it opening or of the previous answer, and answering unparsable requests
    with JSON. uvicorn itself waits for ever; the body's timeout is the app's."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._watch_headers()

        def on_response_complete(self):
            super().on_response_complete()
            self._watch.cancel()
            self._watch_headers()

        def _watch_headers(self):
            # `self.cycle` is replaced when a request's headers have come.
            self._watch = self.loop.call_later(timeout, self._close_if_no_headers, self.cycle)

        def _close_if_no_headers(self, cycle):
            if not self.transport.is_closing() and self.cycle is cycle and self.conn.their_state is h11.IDLE:
                self.transport.close()

        def connection_lost(self, exc):
            self._watch.cancel()
            super().connection_lost(exc)

        def send_400_response(self, msg):
            # What h11 cannot parse (a bad Content-Length, headers over 16 KiB) gets {"error"} too.
            body = json.dumps({"error": f"{msg} (HTTP/1.1 could not be parsed)"}).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return Protocol


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        labels = _check(args)
    except ValueError as problem:
        parser.exit(1, f"error: {problem}\n")
    runtime.return_freed_memory()  # request bodies come and go: memory flat under load
    command_line.set_log_levels(args.verbosity, "%(asctime)s %(message)s")
    import uvicorn

    from keras_preact.serving.rest import create_app, log

    listener = None
    try:
        listener = _bind(args.host, args.port)
        app = create_app(args.export_dir, args.model_name, args.max_batch, args.read_timeout, labels, args.docs,
                         args.version_policy, args.file_system_poll_wait_seconds)
    except (OSError, ValueError) as problem:
        if listener is not None:
            listener.close()
        parser.exit(1, f"error: {problem}\n")
    servable = app.state.servable
    log.info(
        "Serving %s version(s) %s%s as %r on http://%s (at most %d images, %s bytes a request; policy %s, "
        "polled every %g s)", args.export_dir, ", ".join(map(str, servable.available())),
        "".join(f", {k}={v}" for k, v in labels.items()), args.model_name, address(args.host, args.port), args.max_batch,
        f"{app.state.body_limit:,}", args.version_policy, args.file_system_poll_wait_seconds,
    )
    config = uvicorn.Config(app, http=_protocol(args.read_timeout), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    sys.exit(main())
