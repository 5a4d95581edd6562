"""Packaging and import hygiene: what `pip install larbed` and `import larbed` give a user."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import json
import pathlib
import pkgutil
import re
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import larbed
from larbed.image import larbed_image

REPO = pathlib.Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "larbed"

#: Modules that may import TensorFlow (lazily or not); everything else must work without it.
LEARN_PREFIX = "larbed.learn"
#: Heavy optional stacks that plain ``import larbed`` must not pull in.
FORBIDDEN_ON_IMPORT = ("tensorflow", "keras")
#: Electron scattering-factor tables cover H (Z = 1) … Lr (Z = 103).
N_ELEMENTS = 103
#: Suffixes of package-data files that must reach an installed larbed (pyproject package-data).
DATA_SUFFIXES = (".json", ".csv", ".toml", ".cif")
#: Σ I over beams at each tilt with no absorption, to round-off (SPEC §2 asks 1e-12).
SUM_TOL = 1e-12


def _public_module_names() -> list[str]:
    """Modules outside ``_kernels`` and ``learn``, found on disk, that set ``__all__``."""
    names = ["larbed"]
    for info in pkgutil.walk_packages(larbed.__path__, "larbed."):
        parts = info.name.split(".")
        if info.name.startswith(LEARN_PREFIX) or any(p.startswith("_") for p in parts[1:]):
            continue
        names.append(info.name)
    return [n for n in names if hasattr(importlib.import_module(n), "__all__")]


def test_import_larbed_does_not_import_tensorflow():
    """``import larbed`` and every non-learn module leave TensorFlow/Keras unimported."""
    code = textwrap.dedent(
        f"""
        import importlib, json, pkgutil, sys
        forbidden = {FORBIDDEN_ON_IMPORT!r}
        import larbed
        culprits = {{}}
        loaded = [m for m in forbidden if m in sys.modules]
        if loaded:
            culprits["larbed"] = loaded
        for info in pkgutil.walk_packages(larbed.__path__, "larbed."):
            if info.name.startswith({LEARN_PREFIX!r}):
                continue
            importlib.import_module(info.name)
            loaded = [m for m in forbidden if m in sys.modules]
            if loaded:
                culprits[info.name] = loaded
                break
        print(json.dumps(culprits))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    culprits = json.loads(proc.stdout.strip().splitlines()[-1])
    assert culprits == {}, f"module imported an optional heavy stack at import time: {culprits}"


def test_top_level_all_names_exist_and_are_unique():
    assert len(larbed.__all__) == len(set(larbed.__all__)), "duplicate names in larbed.__all__"
    missing = [name for name in larbed.__all__ if not hasattr(larbed, name)]
    assert missing == []
    for name in ("Crystal", "Geometry", "compute_ug", "random_ug", "input_ug", "simulate"):
        assert name in larbed.__all__, f"{name} is core API (issue 2) and must be public"


@pytest.mark.parametrize("module_name", _public_module_names())
def test_module_all_names_exist(module_name):
    module = importlib.import_module(module_name)
    names = module.__all__
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == [], f"{module_name}.__all__ lists names it does not define"
    assert not [n for n in names if n.startswith("_") and n != "__version__"], "private in __all__"


def test_api_reference_lists_every_top_level_name():
    """docs/api.rst documents each name of ``larbed.__all__`` (the reference stays complete)."""
    api = (REPO / "docs" / "api.rst").read_text(encoding="utf-8")
    undocumented = [
        n for n in larbed.__all__ if n != "__version__" and not re.search(rf"\b{n}\b", api)
    ]
    assert undocumented == []


def test_version_matches_metadata_and_pyproject():
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    assert larbed.__version__ == importlib.metadata.version("larbed") == declared
    assert re.fullmatch(r"\d+\.\d+\.\d+([abrc.]\w*)?(\.dev\d+)?", larbed.__version__)


def test_console_script_declared():
    eps = importlib.metadata.entry_points(group="console_scripts", name="larbed")
    assert [ep.value for ep in eps] == ["larbed.cli:main"]
    (entry,) = eps
    assert callable(entry.load())


def test_scattering_factor_tables_load_from_package_data():
    """Both tables ship with the installed package: 103 elements, the documented layouts."""
    data = importlib.resources.files("larbed.data")
    shapes = {"lobato.json": (2, 5), "kirkland.json": (4, 3)}
    for filename, shape in shapes.items():
        table = json.loads(data.joinpath(filename).read_text(encoding="utf-8"))
        assert len(table) == N_ELEMENTS, filename
        symbols = list(table)
        assert symbols[0] == "H" and symbols[-1] == "Lr", filename
        params = np.array([table[s] for s in symbols], dtype=float)
        assert params.shape == (N_ELEMENTS, *shape), filename
        assert np.all(np.isfinite(params)), filename
    # the shipped tables are the ones the code uses: f(0) of O from the Lobato file (pinned in
    # ../shared/data/scattering_factors/README.md)
    assert float(larbed.scattering_factor("O", 0.0)) == pytest.approx(2.0291, abs=5e-5)


def test_build_ships_package_data(tmp_path):
    """setuptools' build step (what a wheel contains) copies every data file and module."""
    setuptools = pytest.importorskip("setuptools")
    assert setuptools  # build uses the installed setuptools, offline
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(REPO / "pyproject.toml", work)
    shutil.copy(REPO / "README.md", work)
    shutil.copytree(
        REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = tmp_path / "lib"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import setuptools; setuptools.setup()",
            "-q",
            "build_py",
            "--build-lib",
            str(out),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    expected = {
        p.relative_to(SRC.parent).as_posix()
        for p in SRC.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and (p.suffix in DATA_SUFFIXES or p.suffix == ".py")
    }
    built = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert "larbed/data/lobato.json" in expected and "larbed/data/kirkland.json" in expected
    assert sorted(expected - built) == []


def test_larbed_warnings_are_errors_but_third_party_warnings_are_not():
    """The pytest filterwarnings config: larbed's own warnings fail tests, others do not."""
    with pytest.raises(UserWarning, match="own"):
        warnings.warn_explicit(
            "own warning", UserWarning, "simulation.py", 1, module="larbed.simulation"
        )
    with pytest.raises(RuntimeWarning, match="own"):
        warnings.warn_explicit(
            "own overflow", RuntimeWarning, "larbed/__init__.py", 1, module="larbed"
        )
    with warnings.catch_warnings(record=True) as caught:
        for module in ("numpy.linalg", "keras.src.layers", "larbedlike", "xarray.core"):
            warnings.warn_explicit(f"from {module}", UserWarning, f"{module}.py", 1, module=module)
    assert sorted(str(w.message) for w in caught) == sorted(
        f"from {m}" for m in ("numpy.linalg", "keras.src.layers", "larbedlike", "xarray.core")
    )


def test_getting_started_example_matches_its_page():
    """The docs' getting-started code (docs/make_figures.py) runs and gives a physical pattern."""
    sys.path.insert(0, str(REPO / "docs"))
    try:
        make_figures = importlib.import_module("make_figures")
    finally:
        sys.path.remove(str(REPO / "docs"))
    geometry, pattern = make_figures.getting_started_pattern()
    intensity = pattern["intensity"].transpose("tilt", "beam").values
    assert intensity.shape == (441, 13)
    np.testing.assert_allclose(intensity.sum(axis=1), 1.0, rtol=0, atol=SUM_TOL)
    image = larbed_image(pattern, geometry, channels=0)
    assert image.shape == (125, 125) and float(image.max()) == 1.0
    page = (REPO / "docs" / "getting_started.rst").read_text(encoding="utf-8")
    assert ":pyobject: getting_started_pattern" in page
    assert (REPO / "docs" / "_static" / "getting_started.png").is_file()
