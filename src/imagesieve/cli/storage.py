"""Command-line options for object storage: `--storage-option KEY=VALUE` (repeatable) and
`--storage-options FILE.json`, merged into the `storage_options` dict fsspec gets (s3fs, gcsfs).

A value is a string, except true, false, null and JSON objects or lists (numbers stay strings, so a
numeric secret is never mangled: put numeric options in the JSON file); a dotted key nests
(`client_kwargs.region_name=eu-west-1`). The backends also read their own
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS).
"""

from __future__ import annotations

import argparse
import json


def add_storage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the object storage backend for s3:// or gs:// paths, e.g. "
                             "endpoint_url=http://127.0.0.1:9000 or profile=NAME (repeatable)")
    parser.add_argument("--storage-options", default=None, metavar="FILE.json",
                        help="a JSON file with the backend's options (the --storage-option values override it)")


def storage_options(args: argparse.Namespace) -> dict | None:
    """The merged options, or None when none were given."""
    options: dict = {}
    if getattr(args, "storage_options", None):
        try:
            with open(args.storage_options, encoding="utf-8") as f:
                options = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--storage-options {args.storage_options}: not a readable JSON file ({exc})") from exc
        if not isinstance(options, dict):
            raise ValueError(f"--storage-options {args.storage_options}: expected a JSON object")
    for item in getattr(args, "storage_option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--storage-option {item!r}: expected KEY=VALUE")
        *parents, leaf = key.split(".")
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = _value(value)
    return options or None


def _value(text: str) -> object:
    if text in ("true", "false", "null") or text.startswith(("{", "[")):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--storage-option value {text!r} is not valid JSON ({exc})") from exc
    return text
