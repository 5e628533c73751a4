"""Write and read one labeled array as ``values.npy`` + ``coords.json`` (no pickle).

``coords.json`` layout::

    {
      "name": "logit_diff" | null,
      "dims": ["layer", "pos"],
      "shape": [4, 7],
      "dtype": "<f4",
      "coords": {
        "layer":     {"dims": ["layer"], "dtype": "<i8", "values": [0, 1, 2, 3]},
        "pos_token": {"dims": ["pos"],   "dtype": "str", "values": ["1", "2", "+", ...]}
      },
      "attrs": {...}
    }

Coordinate values are stored flattened in C order; coordinates may be
strings, ints, floats or bools. Array values may be numeric, bool or strings
(stored as fixed-width unicode).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from arithinterp.errors import ResultError
from arithinterp.results.io import to_jsonable

__all__ = ["read_array", "read_text_file", "write_array", "VALUES_FILE", "COORDS_FILE"]

VALUES_FILE = "values.npy"
COORDS_FILE = "coords.json"
_STR = "str"


def _plain_array(data: np.ndarray, what: str) -> np.ndarray:
    """``data`` as an array ``np.save`` can write without pickle."""
    kind = data.dtype.kind
    if kind in "biufU":
        return data
    if kind in "OT":  # object or numpy StringDType: accept if every element is a str
        flat = data.ravel().tolist()
        if all(isinstance(v, str) for v in flat):
            if not flat:
                return np.zeros(data.shape, dtype="U1")
            return np.asarray(flat, dtype=str).reshape(data.shape)
    raise ResultError(
        f"{what} has dtype {data.dtype}, which cannot be saved without pickle; "
        "use numbers, bools or strings"
    )


def _encode_coord(name: str, coord: xr.DataArray) -> dict[str, Any]:
    data = _plain_array(np.asarray(coord.values), f"coordinate {name!r}")
    if data.dtype.kind == "U":
        dtype, values = _STR, data.ravel().tolist()
    elif data.dtype.kind == "f":
        # JSON has no NaN/inf; keep them as strings and restore on read.
        dtype = data.dtype.str
        values = [v if math.isfinite(v) else repr(v) for v in data.ravel().tolist()]
    else:
        dtype, values = data.dtype.str, data.ravel().tolist()
    return {"dims": list(coord.dims), "dtype": dtype, "values": values}


def read_text_file(path: Path) -> str:
    """The UTF-8 text of ``path``; a file that is not UTF-8 raises ``ResultError`` naming it."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ResultError(f"{path} is not UTF-8 text (byte {err.start}); the file is damaged") from None
    except OSError as err:
        raise ResultError(f"{path} cannot be read: {err.strerror or err}") from None


def _checked_npy_header(path: Path) -> None:
    """Read the ``.npy`` header and check it against the file before any array is allocated:
    a plain dtype (no pickle) and a shape whose bytes the file actually holds."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _fortran, dtype = read_header(fh, max_header_size=100_000)
            offset = fh.tell()
    except (ValueError, OSError, SyntaxError, TypeError) as err:
        raise ResultError(f"{path} is not a valid .npy file: {err}") from None
    if dtype.hasobject or dtype.kind not in "biufU":
        raise ResultError(f"{path} holds dtype {dtype}; results hold numbers, bools or strings")
    needed = math.prod(shape) * dtype.itemsize
    available = path.stat().st_size - offset
    if needed != available:
        raise ResultError(
            f"{path} declares shape {shape} of {dtype} ({needed} bytes) but holds {available} "
            "bytes of data; the file is damaged"
        )


def _coord_dtype(name: str, dtype: Any) -> np.dtype:
    try:
        found = np.dtype(dtype)
    except (TypeError, ValueError) as err:
        raise ResultError(f"coordinate {name!r} in {COORDS_FILE} has an invalid dtype {dtype!r}") from err
    if found.kind not in "biufU":
        raise ResultError(f"coordinate {name!r} in {COORDS_FILE} has dtype {found}; use numbers, bools or str")
    return found


def _decode_coord(
    name: str, spec: Any, sizes: dict[str, int]
) -> tuple[tuple[str, ...], np.ndarray]:
    try:
        dims = tuple(spec["dims"])
        dtype = spec["dtype"]
        values = spec["values"]
    except (KeyError, TypeError) as err:
        raise ResultError(f"coordinate {name!r} in {COORDS_FILE} lacks dims/dtype/values") from err
    unknown = [d for d in dims if d not in sizes]
    if unknown:
        raise ResultError(f"coordinate {name!r} uses dims {unknown} that the array does not have")
    shape = tuple(sizes[d] for d in dims)
    if not isinstance(values, list):
        raise ResultError(f"coordinate {name!r} in {COORDS_FILE}: 'values' must be a list")
    if dtype == _STR:
        arr = np.asarray(values, dtype=str) if values else np.zeros(0, dtype="U1")
    elif _coord_dtype(name, dtype).kind == "f":
        arr = np.asarray([float(v) for v in values], dtype=dtype)
    else:
        arr = np.asarray(values, dtype=dtype)
    if arr.size != math.prod(shape):
        raise ResultError(
            f"coordinate {name!r} has {arr.size} values but dims {list(dims)} need {math.prod(shape)}"
        )
    return dims, arr.reshape(shape)


def write_array(array: xr.DataArray, folder: Path) -> None:
    """Write ``array`` (data, dims, coords, name, attrs) into existing ``folder``."""
    data = _plain_array(np.asarray(array.values), f"array {array.name!r}")
    coords = {str(name): _encode_coord(str(name), c) for name, c in array.coords.items()}
    try:
        attrs = to_jsonable(dict(array.attrs))
    except TypeError as err:
        raise ResultError(
            f"attrs of array {array.name!r} are not JSON-serialisable: {err}"
        ) from err
    name = array.name
    if name is not None and not isinstance(name, str):
        raise ResultError(f"array name must be a str or None, got {name!r}")
    header = {
        "name": name,
        "dims": [str(d) for d in array.dims],
        "shape": list(data.shape),
        "dtype": data.dtype.str,
        "coords": coords,
        "attrs": attrs,
    }
    np.save(folder / VALUES_FILE, data, allow_pickle=False)
    (folder / COORDS_FILE).write_text(json.dumps(header, indent=1, ensure_ascii=False) + "\n")


def read_array(folder: Path) -> xr.DataArray:
    """Read an array written by :func:`write_array`; problems raise ``ResultError``."""
    missing = [f for f in (VALUES_FILE, COORDS_FILE) if not (folder / f).is_file()]
    if missing:
        raise ResultError(f"{folder} is incomplete: missing {', '.join(missing)}")
    try:
        header = json.loads(read_text_file(folder / COORDS_FILE))
    except json.JSONDecodeError as err:
        raise ResultError(f"{folder / COORDS_FILE} is not valid JSON: {err}") from err
    if not isinstance(header, dict):
        raise ResultError(f"{folder / COORDS_FILE} must hold a JSON object")
    _checked_npy_header(folder / VALUES_FILE)
    try:
        data = np.load(folder / VALUES_FILE, allow_pickle=False)
    except ValueError as err:
        raise ResultError(f"{folder / VALUES_FILE} is not a plain numpy array: {err}") from err
    try:
        dims = tuple(header["dims"])
        coord_specs = dict(header.get("coords", {}))
    except (KeyError, TypeError) as err:
        raise ResultError(f"{folder / COORDS_FILE} lacks 'dims'") from err
    if len(dims) != data.ndim or list(data.shape) != list(header.get("shape", data.shape)):
        raise ResultError(
            f"{folder}: {VALUES_FILE} has shape {data.shape} but {COORDS_FILE} "
            f"declares dims {list(dims)} with shape {header.get('shape')}"
        )
    sizes = dict(zip(dims, data.shape))
    try:
        coords = {name: _decode_coord(name, spec, sizes) for name, spec in coord_specs.items()}
    except ResultError as err:
        raise ResultError(f"{folder / COORDS_FILE}: {err}") from None
    return xr.DataArray(
        data, dims=dims, coords=coords, name=header.get("name"), attrs=header.get("attrs") or {}
    )
