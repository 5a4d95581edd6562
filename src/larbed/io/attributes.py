"""Attributes that survive a file exactly: JSON copies, netCDF-safe values; file errors."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from numbers import Number

import numpy as np

__all__ = ["ATTRS_JSON", "JSON_PREFIX", "LarbedFileError", "MissingFileError", "check_path_exists",
           "decode_attrs", "encode_attrs", "from_jsonable", "native_attr", "to_jsonable"]

ATTRS_JSON = "larbed_attrs_json"
JSON_PREFIX = "json:"


class LarbedFileError(ValueError):
    """A file is corrupt, of the wrong format, or does not hold what was asked for."""


class MissingFileError(FileNotFoundError, LarbedFileError):
    """The file does not exist (both a :class:`FileNotFoundError` and a :class:`ValueError`)."""


def check_path_exists(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise LarbedFileError(f"{path!r} is a directory, not a netCDF or CSV file")
    return path


def to_jsonable(value):
    """Plain-Python copy of an attribute value (numpy scalars/arrays → numbers/lists)."""
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return to_jsonable(value.item())
        if value.dtype.kind not in "biufcU":
            raise TypeError(f"attribute array of dtype {value.dtype} cannot be saved")
        return {"__ndarray__": to_jsonable(value.tolist()), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, complex):
        return {"__complex__": [value.real, value.imag]}
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"attribute value {value!r} of type {type(value).__name__} cannot be saved; "
        "use numbers, strings, lists of them, dicts or None"
    )


def from_jsonable(value):
    if isinstance(value, dict):
        if set(value) == {"__complex__"}:
            re, im = value["__complex__"]
            return complex(re, im)
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        if set(value) == {"__ndarray__", "dtype"}:
            return np.array(from_jsonable(value["__ndarray__"]), dtype=np.dtype(value["dtype"]))
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def native_attr(value):
    """netCDF-safe version of one attribute value (for other tools reading the file)."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return JSON_PREFIX + json.dumps(to_jsonable(value))
    if isinstance(value, str):
        return value
    if isinstance(value, (Number, np.number)) and not isinstance(
        value, (complex, np.complexfloating)
    ):
        return value
    arr = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if arr is not None and arr.ndim == 1 and arr.size > 0 and arr.dtype.kind in "iuf":
        return arr
    if arr is not None and arr.ndim == 1 and arr.size > 0 and arr.dtype.kind == "U":
        return [str(v) for v in arr]
    return JSON_PREFIX + json.dumps(to_jsonable(value))


def encode_attrs(attrs: Mapping) -> dict:
    exact = {str(k): to_jsonable(v) for k, v in attrs.items()}
    out = {str(k): native_attr(v) for k, v in attrs.items()}
    out[ATTRS_JSON] = json.dumps(exact)
    return out


def decode_attrs(attrs: Mapping) -> dict:
    attrs = dict(attrs)
    text = attrs.pop(ATTRS_JSON, None)
    if text is not None:
        try:
            return from_jsonable(json.loads(text))
        except (TypeError, ValueError) as exc:
            raise LarbedFileError(f"attribute {ATTRS_JSON!r} is not valid JSON: {exc}") from exc
    out = {}
    for key, value in attrs.items():  # a file written by another tool: decode what we can
        if isinstance(value, str) and value.startswith(JSON_PREFIX):
            try:
                value = from_jsonable(json.loads(value[len(JSON_PREFIX) :]))
            except ValueError:
                pass
        out[key] = value
    return out
