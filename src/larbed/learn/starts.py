"""Network starts for :func:`larbed.determine`: callables ``start(pattern, geometry, *, seed)``.

Each returns ``(U_g, thickness_nm, info)``: the network's prediction, the thickness it reads from the
pattern, and a dict recorded in the determination's history (``source`` and, for Task 2, its R).
``determine(start="task2")`` and ``determine(start="model", model=reg)`` build these for you.

Examples
--------
>>> from larbed.learn import task2_start
>>> start = task2_start("ann", iterations=10)
>>> start.settings["model"], start.settings["iterations"]
('ann', 10)
"""

from __future__ import annotations

import numpy as np

__all__ = ["ModelStart", "Task2Start", "model_start", "task2_start"]


class Task2Start:
    """Task 2 (:func:`larbed.learn.run_task2`) on the pattern; its best prediction is the start.

    Parameters
    ----------
    model : {'ann', 'cnn'}
    iterations : int
        Task 2 loop iterations.
    thickness_range_nm : (float, float)
        Thickness range of the training data [nm].
    out_dir : path, optional
        Task 2 checkpoints (resumable).
    progress : bool
    **task2_kwargs
        More arguments of :func:`larbed.learn.run_task2` (default ``weights=None``: no ImageNet
        weights are needed).
    """

    def __init__(self, model: str = "ann", *, iterations: int = 10,
                 thickness_range_nm=(5.0, 100.0), out_dir=None, progress: bool = False,
                 **task2_kwargs):
        if model not in ("ann", "cnn"):
            raise ValueError(f"Task 2 needs model='ann' or 'cnn', got {model!r}")
        self.model = model
        self.iterations = int(iterations)
        self.thickness_range_nm = tuple(float(v) for v in thickness_range_nm)
        self.out_dir = out_dir
        self.progress = progress
        self.task2_kwargs = dict(task2_kwargs)

    @property
    def settings(self) -> dict:
        """What identifies this start (in a determine run's fingerprint)."""
        return {"kind": "task2", "model": self.model, "iterations": self.iterations,
                "thickness_range_nm": list(self.thickness_range_nm),
                "task2_kwargs": {k: str(v) for k, v in sorted(self.task2_kwargs.items())}}

    def __call__(self, pattern, geometry, *, seed: int = 0):
        from .tasks import run_task2

        opts = {"weights": None, "iterations": self.iterations, "seed": seed,
                "progress": self.progress, "thickness_range_nm": self.thickness_range_nm}
        opts.update(self.task2_kwargs)
        res = run_task2((pattern, geometry), model=self.model, out_dir=self.out_dir, **opts)
        return (res.best_ug.values, res.thickness_nm,
                {"source": f"task2-{self.model}", "task2_r_min": res.r_min})


class ModelStart:
    """The prediction of a trained :class:`larbed.learn.Regressor`."""

    def __init__(self, regressor, thickness_range_nm=None):
        if isinstance(regressor, str) or not hasattr(regressor, "predict"):
            raise TypeError(f"a model start needs a trained larbed.learn.Regressor, got {regressor!r}")
        self.regressor = regressor
        self.thickness_range_nm = thickness_range_nm

    @property
    def settings(self) -> dict:
        return {"kind": "model", "regressor": repr(self.regressor)}

    def __call__(self, pattern, geometry, *, seed: int = 0):
        from .dataset import split_targets

        if hasattr(self.regressor, "check_geometry"):
            self.regressor.check_geometry(geometry)
        inten = np.asarray(pattern["intensity"].values if hasattr(pattern, "data_vars") else pattern)
        out = self.regressor.predict(self.regressor.inputs(inten[None]))[0]
        ug, t = split_targets(out, self.thickness_range_nm)
        return np.asarray(ug, complex), float(t), {"source": "model"}


def task2_start(model: str = "ann", **kwargs) -> Task2Start:
    """A Task 2 start for :func:`larbed.determine` (see :class:`Task2Start`)."""
    return Task2Start(model, **kwargs)


def model_start(regressor, thickness_range_nm=None) -> ModelStart:
    """A start from a trained Regressor for :func:`larbed.determine` (see :class:`ModelStart`)."""
    return ModelStart(regressor, thickness_range_nm)
