"""The ``larbed`` command line: files equal direct calls, clear errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import larbed
from larbed import cli, presets


def test_presets_table(capsys):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in out[2:]}
    assert list(rows) == list(presets.names())
    # name crystal beams tilts t range kV zone
    assert rows["SrTiO3-10"][1:7] == ["SrTiO3", "69", "441", "30", "70", "120"]
    assert rows["ZnO-2"][1:7] == ["ZnO", "97", "253", "50", "80", "60"]


def test_simulate_writes_pattern_equal_to_direct_call(tmp_path, capsys):
    out, png = tmp_path / "p.nc", tmp_path / "p.png"
    assert cli.main(["simulate", "srtio3-1", "-o", str(out), "--png", str(png)]) == 0
    p = presets.load("SrTiO3-1")
    direct = larbed.simulate(p.geometry, larbed.compute_ug(p.crystal, p.geometry), 30.0)
    saved = larbed.load_pattern(out)
    assert np.array_equal(saved.intensity.values, direct.intensity.values)
    assert np.array_equal(saved.ug.values, direct.ug.values)
    assert saved.attrs["preset"] == "SrTiO3-1"
    import matplotlib.image

    assert matplotlib.image.imread(png).ndim == 3
    text = capsys.readouterr().out
    assert "441 tilts × 13 beams (real path)" in text
    assert "min 1.000000000000, max 1.000000000000" in text  # Σ I = 1 without absorption


def test_simulate_thickness_series_and_noise(tmp_path):
    out = tmp_path / "s.nc"
    args = ["simulate", "SrTiO3-1", "-o", str(out), "--thickness", "10", "20", "35"]
    assert cli.main(args + ["--dose", "1000", "--seed", "4", "--no-progress"]) == 0
    p = presets.load("SrTiO3-1")
    direct = larbed.simulate(p.geometry, p.ug(), [10.0, 20.0, 35.0], dose=1000, seed=4)
    saved = larbed.load_pattern(out)
    assert saved.intensity.dims == ("thickness", "tilt", "beam")
    assert np.array_equal(saved.thickness.values, [10.0, 20.0, 35.0])
    assert np.array_equal(saved.intensity.values, direct.intensity.values)
    assert np.array_equal(saved.intensity_noise_free.values, direct.intensity_noise_free.values)


def test_simulate_with_absorption_loses_intensity(tmp_path, capsys):
    out = tmp_path / "a.nc"
    assert cli.main(["simulate", "SrTiO3-1", "-o", str(out), "--absorption", "0.1"]) == 0
    sums = larbed.load_pattern(out).intensity.sum("beam").values
    assert sums.max() < 1.0
    assert "expected < 1 (absorption)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["simulate", "SrTiO3-11"], "unknown preset 'SrTiO3-11'; valid presets: SrTiO3-1"),
        (["simulate", "SrTiO3-1", "--thickness", "-5"], "thickness_nm must be >= 0"),
        (["simulate", "SrTiO3-1", "--dose", "0"], "dose must be a positive number"),
        (["simulate", "SrTiO3-1", "-o", "/no/such/folder/x.nc"], "its folder does not exist"),
    ],
)
def test_errors_exit_2_without_traceback(argv, match, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("larbed: error: ") and match in err
    assert "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    assert cli.main([]) == 2  # no command: help and code 2
    assert "simulate" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli.main(["simulate", "SrTiO3-1", "--dose", "many"])
    assert info.value.code == 2


def test_lazy_string_entries(monkeypatch, capsys, caplog):
    monkeypatch.setattr(
        cli.app,
        "SUBCOMMANDS",
        ["larbed.cli.simulate:register_presets", "larbed_no_such_module.cli:register"],
    )
    assert cli.main(["presets"]) == 0
    assert "SrTiO3-10" in capsys.readouterr().out
    assert "larbed_no_such_module" in caplog.text  # skipped with a warning, others still work
    with pytest.raises(ValueError, match="'module:function'"):
        cli.build_parser(["no-colon"])


def test_help_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from larbed.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'tensorflow' not in sys.modules, 'larbed --help imported TensorFlow'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "simulate" in result.stdout


def test_output_into_a_closed_pipe_is_no_error():
    """`larbed presets | head -1`: the reader stops early; this printed 'larbed: error: [Errno 32]
    Broken pipe' and exited 2 as if the input were bad."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    code = "import sys; from larbed.cli.app import main; sys.exit(main(['presets']))"
    try:
        proc = subprocess.run([sys.executable, "-c", code], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert "error" not in proc.stderr and "Traceback" not in proc.stderr
