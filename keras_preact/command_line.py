"""What the three commands (`keras-preact-train`, `-export`, `-serve`) share: their argument parser
and the levels of their log lines."""

import argparse
import logging
import re

VERBOSITIES = ("debug", "info", "warning", "error")  # --verbosity


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default, where it has one (a None default says what happens in its help)."""

    def _get_help_string(self, action):
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line (argparse prints the whole usage first),
    naming `--help` for the flags."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists every flag)\n")


def number(kind):
    """An argparse type: the flag's text as `kind` (int or float) where it is one, else the text
    itself, for the command's own check to refuse naming the flag and its valid range (argparse's
    "invalid int value" names no range).

    >>> number(int)("8"), number(float)("0.5"), number(int)("many"), number(int)("8_501")
    (8, 0.5, 'many', '8_501')
    """

    syntax = r"[+-]?[0-9]+" if kind is int else r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"

    def parse(text):  # ASCII decimal only: Python's int() and float() also take "8_501" and other scripts' digits
        return kind(text) if re.fullmatch(syntax, text) else text

    parse.__name__ = kind.__name__
    return parse


def set_log_levels(verbosity, log_format="%(asctime)s %(levelname)s %(message)s"):
    """A command's Python log at `verbosity` (one of `VERBOSITIES`); the frameworks' own loggers
    (TensorFlow, absl, JAX) at warnings unless `verbosity` is "debug", so that their INFO notes
    (an export's "Function 'serve' contains input name(s) ...", JAX's "Unable to initialize backend
    'tpu'") appear only where asked for."""
    level = getattr(logging, verbosity.upper())
    logging.basicConfig(format=log_format)
    logging.root.setLevel(level)
    for name in ("tensorflow", "absl", "jax"):
        logging.getLogger(name).setLevel(level if level == logging.DEBUG else max(level, logging.WARNING))
