"""Predict request bodies parsed without a Python object per pixel.

Python's json turns a body of JSON pixels into a list per row and a pointer per value: ≈20x the
body's size while it is parsed. TF Serving parses straight into tensors; here every array of
small JSON integers (`[[[0, 255, ...]]]`) is read by NumPy into one uint8 array, and only the rest
(keys, the signature name, b64 strings) by Python's json. What NumPy does not read as a regular
array of integers 0-255 (floats, strings, ragged or malformed lists) is parsed by Python's json,
one body at a time, whose errors the caller reports.

    >>> parse(b'{"instances": [[[1, 2], [3, 4]]], "signature_name": "x"}')["instances"].shape
    (1, 2, 2)
"""

import json
import re
import secrets
import threading

import numpy as np

# A JSON string (skipped: its text may hold brackets), or an array of digits, commas and whitespace.
TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|\[[0-9,\[\]\s]*\]')
WHITESPACE = b" \t\n\r"
DEEPEST = 8  # more nested than any image batch: left to Python's json (and its depth error)
# Each character as a code; which code may follow which; how each changes the depth.
DIGIT, OPENING, CLOSING, COMMA = range(4)
CODES = np.zeros(256, np.uint8)
CODES[[ord("["), ord("]"), ord(",")]] = OPENING, CLOSING, COMMA
FOLLOWS = np.zeros(16, bool)
for _before, _after in [(DIGIT, DIGIT), (DIGIT, COMMA), (DIGIT, CLOSING), (OPENING, DIGIT), (OPENING, OPENING),
                        (OPENING, CLOSING), (COMMA, DIGIT), (COMMA, OPENING), (CLOSING, COMMA), (CLOSING, CLOSING)]:
    FOLLOWS[_before * 4 + _after] = True
STEP = np.array([0, 1, -1, 0], np.int8)
# One body parsed at a time: a full one takes ≈14x its size for a moment in NumPy (≈20x in
# Python's json), and parsing is quick beside inference.
_PARSING = threading.Lock()


def parse(body):
    """The JSON value of `body` (bytes), with each array of integers 0-255 as a uint8 ndarray.

    Raises what `json.loads` raises for a body that is not JSON.
    """
    with _PARSING:
        return _parse(body)


def _parse(body):
    arrays, pieces, position = [], [], 0
    key = secrets.token_hex(8)  # no client can name the placeholder's key
    for match in TOKEN.finditer(body):
        if match.group()[:1] == b'"':
            continue
        array = int_array(match.group())
        if array is None:  # not regular integers 0-255: Python's json reads it and says what is wrong
            return json.loads(body)
        pieces += [body[position : match.start()], b'{"%s": %d}' % (key.encode(), len(arrays))]
        arrays.append(array)
        position = match.end()
    if not arrays:  # b64 strings, or no images
        return json.loads(body)
    pieces.append(body[position:])
    return json.loads(b"".join(pieces), object_hook=lambda value: arrays[value[key]] if key in value else value)


def int_array(text):
    """The uint8 array that `text` (a JSON array of digits, commas and whitespace) writes, or None
    where it is not one regular array of integers 0-255."""
    if re.search(rb"[0-9]\s+[0-9]", text):  # two numbers without a comma
        return None
    code = CODES[np.frombuffer(text.translate(None, WHITESPACE), np.uint8)]
    pairs = code[:-1] * 4 + code[1:]  # each character with the next one
    if code[0] != OPENING or code[-1] != CLOSING or not FOLLOWS[pairs].all():
        return None
    starts = np.flatnonzero((pairs == OPENING * 4 + DIGIT) | (pairs == COMMA * 4 + DIGIT)) + 1
    lengths = np.flatnonzero((pairs == DIGIT * 4 + COMMA) | (pairs == DIGIT * 4 + CLOSING)) - starts + 1
    del pairs
    digits = np.frombuffer(text.translate(None, WHITESPACE + b"[],"), np.uint8) - ord("0")
    first = np.cumsum(lengths) - lengths  # where each number starts in `digits`
    if lengths.size and (lengths.max() > 3 or (digits[first[lengths > 1]] == 0).any()):
        return None  # over 999, or a leading zero (not JSON)
    values = digits[first].astype(np.int32)
    for place in (1, 2):
        longer = lengths > place
        values[longer] = values[longer] * 10 + digits[first[longer] + place]
    if values.size and values.max() > 255:
        return None
    shape = _shape(code, starts)
    return None if shape is None else values.astype(np.uint8).reshape(shape)


def _shape(code, starts):
    """The array's shape where every list at each depth has as many elements, else None."""
    is_token = (code == OPENING) | (code == CLOSING)
    is_token[starts] = True
    kinds = code[is_token]  # brackets and numbers, in order
    del is_token
    depth = np.cumsum(STEP[kinds], dtype=np.int32)  # after each token
    if depth[-1] != 0 or depth[:-1].min() < 1 or depth.max() > DEEPEST:
        return None
    deepest = int(depth.max())
    if (depth[kinds == DIGIT] != deepest).any():  # a number beside a list
        return None
    shape = []
    for level in range(1, deepest + 1):
        opens = (kinds == OPENING) & (depth == level)
        owner = np.cumsum(opens, dtype=np.int32) - 1  # which list of this level each token lies in
        children = (kinds == DIGIT) if level == deepest else (kinds == OPENING) & (depth == level + 1)
        counts = np.bincount(owner[children], minlength=int(opens.sum()))
        if counts.size == 0 or (counts != counts[0]).any():
            return None
        shape.append(int(counts[0]))
    return shape
