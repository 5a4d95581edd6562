"""The package's layout rules: moved names still work (with a warning), modules import no private
names from each other, the physics core never imports larbed.learn, files carry schema versions."""

from __future__ import annotations

import ast
import importlib
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import larbed
from larbed.schema import SCHEMA_ATTR, SCHEMA_VERSION

SRC = pathlib.Path(larbed.__file__).parent
#: Modules whose names moved in the redesign (each forwards them for one release).
SHIMMED = ["larbed.simulation", "larbed.symmetry", "larbed.structure_factors", "larbed.refinement",
           "larbed.determine", "larbed.search", "larbed.refinement_cli", "larbed.learn.cli",
           "larbed.learn.unique", "larbed.learn.plotting"]
#: The size rules of the layout (lines of a module; code lines of a function, docstring excluded).
MAX_MODULE_LINES = 550
MAX_FUNCTION_LINES = 120


def _moved():
    for name in SHIMMED:
        module = importlib.import_module(name)
        for old, target in module.__getattr__.moved.items():
            yield name, old, target


@pytest.mark.parametrize("module, name, target", list(_moved()))
def test_moved_names_forward_with_a_deprecation_warning(module, name, target):
    mod, _, new = target.partition(":")
    with pytest.warns(DeprecationWarning, match="has moved to"):
        obj = getattr(importlib.import_module(module), name)
    assert obj is getattr(importlib.import_module(mod), new or name)


def test_unknown_names_still_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        importlib.import_module("larbed.search").nonsense  # noqa: B018


def _sources():
    return sorted(p for p in SRC.rglob("*.py") if "_kernels" not in p.parts)


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                for alias in node.names:
                    if alias.name.startswith("_") and alias.name != "__version__":
                        offenders.append(f"{path.relative_to(SRC)}: {alias.name}")
    assert offenders == []


def _functions(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            doc = (body[0].end_lineno - body[0].lineno + 1
                   if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                   and isinstance(body[0].value.value, str) else 0)
            yield node.name, node.end_lineno - node.lineno + 1 - doc


def test_modules_and_functions_stay_small():
    big_modules = [f"{p.relative_to(SRC)}: {n}" for p in _sources()
                   if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    big_functions = [f"{p.relative_to(SRC)}:{name}: {n}" for p in _sources()
                     for name, n in _functions(p) if n > MAX_FUNCTION_LINES]
    assert big_modules == [] and big_functions == []


def test_the_physics_core_never_imports_learn(tmp_path):
    """determine with the search and a user start, simulate, refine, io: no larbed.learn."""
    code = (
        "import sys, larbed\n"
        "geo = larbed.Geometry(larbed.Crystal.builtin('SrTiO3'), 120, (0, 0, 1), 5, 13, 50)\n"
        "ug = larbed.compute_ug(geo.crystal, geo)\n"
        "p = larbed.simulate(geo, ug, 20.0)\n"
        "larbed.determine(p, geo, progress=False, search_time_s=5)\n"
        "larbed.determine(p, geo, start=ug, progress=False, search=False)\n"
        f"larbed.save_pattern(p, {str(tmp_path / 'p.nc')!r})\n"
        "assert not [m for m in sys.modules if m.startswith('larbed.learn')], sorted(sys.modules)\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_files_record_the_schema_version_and_old_files_load(tmp_path, small_case):
    geo, _, data = small_case
    path = tmp_path / "p.nc"
    larbed.save_pattern(data, path)
    with xr.open_dataset(path, engine="netcdf4") as raw:
        assert int(raw.attrs[SCHEMA_ATTR]) == SCHEMA_VERSION
    back = larbed.load_pattern(path)
    assert SCHEMA_ATTR not in back.attrs and back.attrs == data.attrs
    # a file of version 1 (no version attribute) still loads the same
    old = tmp_path / "old.nc"
    with xr.open_dataset(path, engine="netcdf4") as raw:
        raw = raw.load()
    raw.attrs.pop(SCHEMA_ATTR)
    import json

    exact = json.loads(raw.attrs["larbed_attrs_json"])
    exact.pop(SCHEMA_ATTR, None)
    raw.attrs["larbed_attrs_json"] = json.dumps(exact)
    raw.to_netcdf(old, engine="netcdf4")
    np.testing.assert_array_equal(larbed.load_pattern(old).intensity.values, data.intensity.values)
    # CSV headers and JSON checkpoints carry it too
    csv = tmp_path / "p.csv"
    larbed.write_csv(data, csv)
    assert f'"{SCHEMA_ATTR}": {SCHEMA_VERSION}' in csv.read_text().splitlines()[0]
    assert SCHEMA_ATTR not in larbed.read_csv(csv).attrs
    from larbed._checkpoint import read_json, write_json

    write_json(tmp_path / "c.json", {"a": 1})
    assert f'"{SCHEMA_ATTR}": {SCHEMA_VERSION}' in (tmp_path / "c.json").read_text()
    assert read_json(tmp_path / "c.json") == {"a": 1}


def test_a_newer_schema_is_read_with_a_warning(tmp_path, small_case, caplog):
    from larbed.schema import upgrade

    ds = small_case[2].copy()
    ds.attrs[SCHEMA_ATTR] = SCHEMA_VERSION + 1
    with caplog.at_level("WARNING", logger="larbed.schema"):
        out = upgrade(ds)
    assert "newer than this larbed" in caplog.text and SCHEMA_ATTR not in out.attrs


def test_callable_start_for_determine(small_case):
    """determine(start=callable): the callable's prediction starts the refinement."""
    geo, truth, data = small_case
    seen = {}

    def start(pattern, geometry, *, seed):
        seen["seed"] = seed
        return truth.values * 1.1, None, {"source": "my-start"}

    res = larbed.determine(data, geo, start=start, search=False, kinematic=False, n_perturbed=0,
                           seed=7, progress=False)
    assert seen["seed"] == 7 and res.r_factor < 1e-6
    assert res.history.attrs["source"] == "my-start"
    assert res.history.start_source.values[0] == "callable0"
    with pytest.raises(TypeError, match="must return"):
        larbed.determine(data, geo, start=lambda p, g, *, seed: truth, search=False,
                         kinematic=False, progress=False)
