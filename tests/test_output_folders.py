"""determine and the CLI: reruns are no-ops, folders are locked and checked, nothing foreign is
deleted, every file records how it was made, untrustworthy answers exit with status 3."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import larbed
from larbed._checkpoint import LOCK_NAME, FolderLockedError, folder_lock
from larbed.cli import main

pipeline = importlib.import_module("larbed.determination.pipeline")
starts = importlib.import_module("larbed.determination.starts")

#: An exact fit of noise-free data.
EXACT_R = 1e-6


@pytest.fixture(scope="module")
def small(small_case):
    return small_case


FAST = dict(search=False, progress=False)


def test_finished_run_is_a_no_op(tmp_path, small, monkeypatch):
    geo, _, data = small
    noisy = larbed.simulate(geo, larbed.compute_ug(geo.crystal, geo), 20.0, dose=1e5, seed=7)
    first = larbed.determine(noisy, geo, out_dir=tmp_path, **FAST)
    monkeypatch.setattr(pipeline, "_determine", lambda *a, **k: pytest.fail("ran again"))
    monkeypatch.setattr(starts, "refine_start", lambda *a, **k: pytest.fail("re-ran a start"))
    t0 = time.perf_counter()
    again = larbed.determine(noisy, geo, out_dir=tmp_path, **FAST)
    assert time.perf_counter() - t0 < 10
    np.testing.assert_array_equal(again.ug.values, first.ug.values)
    np.testing.assert_array_equal(again.ug_error.values, first.ug_error.values)
    assert again.thickness_nm == first.thickness_nm and again.chi2 == first.chi2
    assert again.r_factor == first.r_factor and again.warnings == first.warnings
    assert list(again.history.start_source.values) == list(first.history.start_source.values)
    np.testing.assert_array_equal(again.refinement.covariance.values, first.refinement.covariance.values)


def test_changed_thresholds_recompute_only_the_warnings(tmp_path, small):
    geo, _, data = small
    first = larbed.determine(data, geo, out_dir=tmp_path, **FAST)
    strict = larbed.determine(data, geo, out_dir=tmp_path, r_max=1e-30, **FAST)
    assert first.warnings == [] and [w.kind for w in strict.warnings] == ["r_factor"]
    np.testing.assert_array_equal(strict.ug.values, first.ug.values)


def test_second_concurrent_run_is_refused(tmp_path, small):
    geo, _, data = small
    # a lock held by a running process (this test's parent) on this host
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename,
                                                  "job": "larbed determine", "started": "now"}))
    with pytest.raises(FolderLockedError, match="in use by another larbed run"):
        larbed.determine(data, geo, out_dir=tmp_path, **FAST)
    assert main(["determine", "--pattern", "x.nc", "--out", str(tmp_path)]) == 2


def test_stale_lock_is_taken_over(tmp_path, small):
    geo, _, data = small
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(proc.stdout)  # that process has exited
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": os.uname().nodename}))
    res = larbed.determine(data, geo, out_dir=tmp_path, **FAST)
    assert res.r_factor < EXACT_R and not (tmp_path / LOCK_NAME).exists()


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    with folder_lock(tmp_path) as path:
        with folder_lock(tmp_path):
            assert os.path.exists(path)
        assert os.path.exists(path)  # the inner one did not release it
    assert not os.path.exists(path)


def test_two_processes_on_one_folder(tmp_path, small):
    """A real second process while the first holds the folder: refused with a clear message."""
    code = ("import time, larbed._checkpoint as c\n"
            f"with c.folder_lock({str(tmp_path)!r}, 'holder'):\n"
            "    print('held', flush=True); time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        geo, _, data = small
        with pytest.raises(FolderLockedError, match=f"pid {holder.pid}"):
            larbed.determine(data, geo, out_dir=tmp_path, **FAST)
    finally:
        holder.kill()
        holder.wait()


def test_unreadable_config_deletes_nothing(tmp_path, small):
    geo, _, data = small
    ckpt = tmp_path / "determine_checkpoint"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{broken")
    (ckpt / "start_user0.json").write_text("{}")
    (ckpt / "my_notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="unreadable.*deletes nothing"):
        larbed.determine(data, geo, out_dir=tmp_path, **FAST)
    assert sorted(os.listdir(ckpt)) == ["config.json", "my_notes.txt", "start_user0.json"]


def test_foreign_checkpoint_folder_is_refused(tmp_path, small):
    geo, _, data = small
    ckpt = tmp_path / "determine_checkpoint"
    ckpt.mkdir()
    (ckpt / "data.csv").write_text("1,2,3")
    with pytest.raises(ValueError, match="not written by larbed"):
        larbed.determine(data, geo, out_dir=tmp_path, **FAST)
    assert os.listdir(ckpt) == ["data.csv"]


def test_resume_false_removes_only_larbed_files(tmp_path, small):
    geo, _, data = small
    larbed.determine(data, geo, out_dir=tmp_path, **FAST)
    ckpt = tmp_path / "determine_checkpoint"
    (ckpt / "my_notes.txt").write_text("mine")
    larbed.determine(data, geo, out_dir=tmp_path, resume=False, n_perturbed=1, **FAST)
    assert (ckpt / "my_notes.txt").read_text() == "mine"
    assert json.loads((ckpt / "config.json").read_text())["settings"]["n_perturbed"] == 1


def test_unwritable_output_folder_fails_before_any_work(tmp_path, small, monkeypatch):
    geo, _, data = small
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setattr(pipeline, "_determine", lambda *a, **k: pytest.fail("worked"))
    with pytest.raises(ValueError, match="cannot write into the output folder"):
        larbed.determine(data, geo, out_dir=blocker / "out", **FAST)


def test_cli_unwritable_output_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = main(["determine", "SrTiO3-1", "--out", str(blocker / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot write into" in err


# ------------------------------------------------------------------------------ thickness range
def test_thickness_below_the_automatic_range_is_found(small):
    geo, truth, _ = small
    data = larbed.simulate(geo, truth, 3.0)
    res = larbed.determine(data, geo, **FAST)
    assert abs(res.thickness_nm - 3.0) < 1e-6 and res.r_factor < EXACT_R and res.warnings == []


def test_unsolved_fit_outside_a_user_range_is_flagged(small):
    geo, truth, _ = small
    data = larbed.simulate(geo, truth, 150.0)
    res = larbed.determine(data, geo, thickness_range_nm=(5, 100), kinematic=True, **FAST)
    assert res.thickness_range_nm == (5.0, 100.0)  # a user range is never widened
    assert not res.trustworthy
    assert "r_factor" in {w.kind for w in res.warnings}


def test_unsolved_automatic_run_widens_the_range(small, monkeypatch):
    geo, truth, _ = small
    data = larbed.simulate(geo, truth, 150.0)
    seen = []
    real = pipeline.kinematic_starts

    def spy(*a, thickness_range_nm, **k):
        seen.append(tuple(thickness_range_nm))
        return real(*a, thickness_range_nm=thickness_range_nm, **k)

    monkeypatch.setattr(pipeline, "kinematic_starts", spy)
    res = larbed.determine(data, geo, **FAST)
    assert seen == [(5.0, 100.0), (2.0, 250.0)]
    assert not res.trustworthy  # 150 nm with 9 beams is not solved from kinematic starts


# ------------------------------------------------------------------------------ provenance
def test_files_record_how_they_were_made(tmp_path, small):
    geo, truth, _ = small
    data = larbed.simulate(geo, truth, 20.0, dose=1e5, seed=3)
    path = tmp_path / "in.nc"
    larbed.save_pattern(data, path)
    pattern = larbed.load_pattern(path)
    res = larbed.determine(pattern, geo, out_dir=tmp_path / "out", **FAST)
    saved = res.save(tmp_path / "out")
    attrs = larbed.load_pattern(saved[0]).attrs
    assert attrs["source_path"] == str(path.resolve())
    import hashlib

    assert attrs["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert attrs["dose_used"] == 1e5 and attrs["weights_used"] == "poisson"
    assert attrs["larbed_version"] == larbed.__version__
    prov = json.loads(attrs["provenance"])
    assert prov["settings"]["n_perturbed"] == 3 and prov["settings"]["chi2_max"] == 2.0
    ug_attrs = larbed.load_ug(saved[1]).attrs
    assert ug_attrs["source_sha256"] == attrs["source_sha256"] and "provenance" in ug_attrs
    back = larbed.DeterminationResult.from_dataset(larbed.load_pattern(saved[0]), geo)
    np.testing.assert_array_equal(back.ug.values, res.ug.values)
    assert back.provenance["dose_used"] == 1e5


# ------------------------------------------------------------------------------ CLI exit codes
def test_cli_exit_3_and_warnings_for_an_untrustworthy_answer(tmp_path, small, capsys):
    geo, truth, _ = small
    path = tmp_path / "thick.nc"
    larbed.save_pattern(larbed.simulate(geo, truth, 150.0), path)
    code = main(["determine", "--pattern", str(path), "--out", str(tmp_path / "o"), "--no-progress",
                 "--thickness-range", "5", "100", "--search-time", "5"])
    out = capsys.readouterr().out
    assert code == 3
    assert "warning (r_factor)" in out and "should not be trusted" in out


def test_cli_refine_from_computed_ug(tmp_path, capsys):
    out_dir = tmp_path / "r"
    code = main(["refine", "SrTiO3-1", "--dose", "1e5", "--out", str(out_dir), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    import re

    t = float(re.search(r"thickness: ([0-9.]+) ±", text).group(1))
    assert abs(t - 30.0) < 0.01 and "reduced χ² = " in text
    for name in ("refine_result.nc", "ug.nc", "pattern_vs_fit.png", "refinement_history.png"):
        assert (out_dir / name).exists()
    attrs = larbed.load_pattern(out_dir / "refine_result.nc").attrs
    assert attrs["weights_used"] == "poisson"
    # rerun: the finished refinement is reused
    assert main(["refine", "SrTiO3-1", "--dose", "1e5", "--out", str(out_dir), "--no-progress"]) == 0
    assert "R = " in capsys.readouterr().out


def test_cli_counts_csv(tmp_path, capsys):
    preset = larbed.presets.load("SrTiO3-1")
    ds = preset.simulate(dose=1e4, seed=0)
    counts = ds.copy()
    counts["intensity"] = np.round(ds.intensity * 1e4)
    path = tmp_path / "counts.csv"
    larbed.write_csv(counts, path)
    argv = ["refine", "--pattern", str(path), "--geometry-from", "SrTiO3-1", "--out",
            str(tmp_path / "o"), "--no-progress", "--thickness", "29"]
    assert main(argv) == 2
    assert "--counts" in capsys.readouterr().err
    assert main(argv + ["--counts"]) == 0
    assert "dose per tilt" in capsys.readouterr().out


def test_cli_rejects_absurd_dose(capsys):
    assert main(["determine", "SrTiO3-1", "--dose", "1e30", "--no-progress"]) == 2
    assert "beyond 1e+15" in capsys.readouterr().err


def test_widening_without_starts_keeps_the_first_range(small, monkeypatch):
    """No kinematic or explicit starts and a first fit inside the range: the wider round has no
    starts (the search is not repeated), and the first round's answer stands, flagged."""
    geo, truth, _ = small
    data = larbed.simulate(geo, truth, 150.0)
    res = larbed.determine(data, geo, kinematic=False, search_time_s=3, progress=False)
    assert res.thickness_range_nm in ((5.0, 100.0), (2.0, 250.0)) and not res.trustworthy
