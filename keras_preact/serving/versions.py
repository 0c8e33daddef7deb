"""The versions a server answers for, followed over time as TF Serving does.

A poller looks at the model's base folder every `poll_seconds`: it loads each complete version the
version policy wants (`latest:N`, `all`, `specific:1,3`; and every version a label names), makes it
AVAILABLE, and only then marks the versions the policy no longer wants UNLOADING; they are dropped
(END) once their in-flight requests finish, so no request is lost to a new export.
"""

import contextlib
import dataclasses
import logging
import os
import re
import threading

import numpy as np

from keras_preact.serving.layout import BEING_WRITTEN, MAX_VERSION, parse_version, servable_versions, shown

log = logging.getLogger("keras_preact.serve")
STATES = ("LOADING", "AVAILABLE", "UNLOADING", "END")


class RequestError(Exception):
    """A request the server answers with `status` and `{"error": message}`."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.headers = headers


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which complete versions to serve: the `count` highest (`latest`), `all`, or `numbers` (`specific`)."""

    kind: str = "latest"
    count: int = 1
    numbers: tuple = ()

    @classmethod
    def parse(cls, text):
        """A policy from `latest:N`, `all` or `specific:V1,V2,...` (TF Serving's model_version_policy)."""
        kind, _, arguments = text.partition(":")
        if kind == "all" and not arguments:
            return cls("all")
        if kind == "latest" and re.fullmatch(r"[1-9][0-9]{0,5}", arguments or "1"):
            return cls("latest", int(arguments or "1"))
        if kind == "specific" and re.fullmatch(r"[0-9]+(,[0-9]+)*", arguments):
            numbers = [parse_version(n) for n in arguments.split(",")]
            if None in numbers:
                raise ValueError(
                    f"version_policy {shown(text)!r} names a version above {MAX_VERSION}, the largest TF Serving reads (int64)."
                )
            return cls("specific", numbers=tuple(sorted(set(numbers))))
        raise ValueError(f"version_policy must be latest:N, all or specific:V1,V2,...; got {text!r}.")

    def chosen(self, complete):
        """The versions of `complete` (ascending) to serve."""
        if self.kind == "latest":
            return set(complete[-self.count :])
        return set(complete) if self.kind == "all" else set(complete) & set(self.numbers)


class Version:
    """One loaded version folder: its signatures that take one `images` tensor."""

    def __init__(self, path, number):
        import tensorflow as tf

        self.number = number
        try:
            loaded = tf.saved_model.load(path)
        except Exception as error:  # a corrupt file can raise anything from protobuf to OSError
            raise ValueError(f"{path} cannot be loaded as a SavedModel: {first_line(error)}") from None
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

    def image_values(self):
        """The most pixel values one image takes (224x224x3 where any size goes)."""
        shape = self.input_spec("serving_default").shape[1:]
        return int(np.prod([d if d is not None else 224 for d in shape]))


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


def first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Servable:
    """The versions of an exported model that the server answers for, by `policy` and `labels`
    ({label: version}), loaded at once; `start_polling` follows the folder from then on."""

    def __init__(self, export_dir, labels=None, policy=VersionPolicy(), on_load=None):
        if not os.path.isdir(export_dir):
            problem = "is a file" if os.path.exists(export_dir) else "does not exist"
            raise FileNotFoundError(f"export_dir {export_dir} {problem}: pass the folder that holds the version folders.")
        self.export_dir, self.labels, self.policy = export_dir, dict(labels or {}), policy
        self.on_load = on_load or (lambda outcome: None)
        self.versions, self.states, self.in_flight = {}, {}, {}  # by version number: loaded Versions, ...
        self.failed = {}  # version number: its folder's `_files` when its load failed
        self._skipped, self._changed = set(), threading.Condition()
        self._stop = threading.Event()
        self._sync(first=True)

    def _sync(self, first=False):
        """Loads the versions wanted and not loaded, then unloads those loaded and not wanted."""
        complete, skipped = servable_versions(self.export_dir)
        for name, reason in set(skipped) - self._skipped:  # once each, and again when its reason changes
            log.log(logging.INFO if reason == BEING_WRITTEN else logging.WARNING, "Skipping %s: %s",
                    os.path.join(self.export_dir, name), reason)
        self._skipped = set(skipped)
        if first:
            _check_start(self.export_dir, complete, skipped, self.labels, self.policy)
        # A version that failed to load is retried only once its files change (a copy that was not
        # finished), and never pushes out a loaded version: the policy chooses among the others.
        for number in [n for n in self.failed if self.failed[n] != _files(os.path.join(self.export_dir, str(n)))]:
            del self.failed[number]
        while True:  # each load adds a version or a failure, so this ends
            loadable = [n for n in complete if n not in self.failed]
            wanted = self.policy.chosen(loadable) | (set(self.labels.values()) & set(loadable))
            if not wanted - set(self.versions):
                break
            for number in sorted(wanted - set(self.versions)):
                self._load(number, first)
        with self._changed:
            for number in wanted & set(self.versions):  # wanted again while it was unloading
                self.states[number] = ("AVAILABLE", "")
            for number in set(self.versions) - wanted:
                self.states[number] = ("UNLOADING", "")
                log.info("Unloading version %d of %s", number, self.export_dir)
            self._finish_unloads()

    def _load(self, number, first):
        with self._changed:
            self.states[number] = ("LOADING", "")
        try:
            version = Version(os.path.join(self.export_dir, str(number)), number)
        except Exception as error:
            self.on_load("failure")
            if first:
                raise
            log.error("Version %d of %s failed to load: %s", number, self.export_dir, first_line(error))
            self.failed[number] = _files(os.path.join(self.export_dir, str(number)))
            with self._changed:
                self.states[number] = ("END", first_line(error))
            return
        self.on_load("success")
        with self._changed:
            self.versions[number], self.states[number] = version, ("AVAILABLE", "")
            self.in_flight.setdefault(number, 0)
        if not first:
            log.info("Loaded version %d of %s", number, self.export_dir)

    def _finish_unloads(self):
        """Drops the UNLOADING versions that no request uses (under `_changed`)."""
        for number, (state, _) in self.states.items():
            if state == "UNLOADING" and not self.in_flight.get(number) and number in self.versions:
                del self.versions[number]
                self.states[number] = ("END", "")

    def start_polling(self, seconds):
        """Follows the folder every `seconds` in a thread (0: never); `stop` ends it."""
        if seconds > 0:
            threading.Thread(target=self._poll, args=(seconds,), name="version-poller", daemon=True).start()

    def _poll(self, seconds):
        while not self._stop.wait(seconds):
            try:
                self._sync()
            except Exception:  # the folder vanished, a permission changed: keep serving what is loaded
                log.exception("Polling %s failed; serving the loaded versions", self.export_dir)

    def stop(self):
        self._stop.set()

    @property
    def latest(self):
        """The highest AVAILABLE version's number (what /v1/models/NAME answers with)."""
        return max(self.available())

    def available(self):
        with self._changed:
            return sorted(n for n, (state, _) in self.states.items() if state == "AVAILABLE")

    def image_values(self):
        """The most pixel values one image of any loaded version takes."""
        with self._changed:
            return max(version.image_values() for version in self.versions.values())

    @contextlib.contextmanager
    def use(self, model_name, name, version, label):
        """The Version a path names, kept loaded until the block ends; a RequestError (404) if none."""
        with self._changed:
            chosen = self._resolve(model_name, name, version, label)
            self.in_flight[chosen.number] += 1
        try:
            yield chosen
        finally:
            with self._changed:
                self.in_flight[chosen.number] -= 1
                self._finish_unloads()

    def _resolve(self, model_name, name, version, label):
        _check_name(model_name, name)
        available = [n for n, (state, _) in self.states.items() if state == "AVAILABLE"]
        version = self._labelled(version, label)
        if version is None:
            if not available:
                raise RequestError(404, f"Servable not found for request: Latest({name}); no version is available now.")
            return self.versions[max(available)]
        if parse_version(version) not in available:
            raise _no_version(name, version, available)
        return self.versions[parse_version(version)]

    def _labelled(self, version, label):
        """The version text a path names: its /versions/N, or the version of its /labels/L."""
        if label is None:
            return version
        if label not in self.labels:
            known = ", ".join(map(repr, self.labels)) or "none (start the server with --version_labels)"
            raise RequestError(404, f"Unrecognized servable version label: {label}. Labels: {known}.")
        return str(self.labels[label])

    def status_of(self, model_name, name, version, label):
        """TF Serving's model_version_status for a status path: every version seen, in whatever
        state (none AVAILABLE is no error), or the one its version or label names; a RequestError
        (404) for another model's name or a version never seen."""
        with self._changed:
            _check_name(model_name, name)
            if version is None and label is None:
                return self.status()
            version = self._labelled(version, label)
            if parse_version(version) not in self.states:
                raise _no_version(name, version, self.available())
            return self.status(parse_version(version))

    def status(self, number=None):
        """TF Serving's model_version_status list: every version seen, highest first (or `number`'s)."""
        with self._changed:
            states = sorted(self.states.items(), reverse=True)
        return [
            {"version": str(n), "state": state, "status": {"error_code": "UNKNOWN" if message else "OK", "error_message": message}}
            for n, (state, message) in states
            if number is None or n == number
        ]


def _check_name(model_name, name):
    if name != model_name:
        raise RequestError(404, f"Servable not found for request: Latest({name}); this server serves {model_name!r}.")


def _no_version(name, version, available):
    """The 404 of a path naming a version that is not `available` (or not known at all)."""
    served = ", ".join(map(str, sorted(available))) or "none"
    return RequestError(404, f"Servable not found for request: Specific({name}, {shown(version)}); served versions: {served}.")


def _files(folder):
    """(path, size, modification time) of every file under `folder`: what tells a changed folder."""
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            stat = os.stat(os.path.join(root, name))
            found.append((os.path.join(root, name), stat.st_size, stat.st_mtime_ns))
    return sorted(found)


def _check_start(export_dir, complete, skipped, labels, policy):
    """A start that would serve nothing (or a label naming no complete version) as one error."""
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
    if not policy.chosen(complete):
        raise FileNotFoundError(
            f"{export_dir} has none of the versions {', '.join(map(str, policy.numbers))} that version_policy names "
            f"(complete: {', '.join(map(str, complete))})."
        )
