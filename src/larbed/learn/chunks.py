"""Chunked, checkpointed simulation of a data set (the engine of :func:`generate_dataset`).

The ``n`` samples are simulated in chunks ``lo … hi-1``, as Dask tasks on the local scheduler or a
``dask.distributed`` cluster. With a file path, every finished chunk is checkpointed as
``chunk_<lo>_<hi>.npz`` in ``<path>.chunks/`` beside ``spec.json`` (the digest of the data set it
belongs to), so an interrupted generation resumes with the chunks still missing.

A chunk is a dict ``{"lo", "hi", "intensity", "ug", "thickness_nm"}``; ``spec`` is the frozen
dataclass of :mod:`larbed.learn.dataset` that determines the samples (it has a ``digest()``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict

from .._checkpoint import load_npz, save_npz

__all__ = ["CHUNK_DIR_SUFFIX", "open_chunk_folder", "simulate_chunks"]

logger = logging.getLogger(__name__)

#: The checkpoint folder of data set file ``path`` is ``path + CHUNK_DIR_SUFFIX``.
CHUNK_DIR_SUFFIX = ".chunks"


def _chunk_file(folder: str, lo: int, hi: int) -> str:
    return os.path.join(folder, f"chunk_{lo:08d}_{hi:08d}.npz")


def _save_chunk(folder: str, part: dict) -> None:
    save_npz(
        _chunk_file(folder, part["lo"], part["hi"]),
        intensity=part["intensity"],
        ug=part["ug"],
        thickness_nm=part["thickness_nm"],
    )


def _load_chunk(folder: str, lo: int, hi: int) -> dict | None:
    name = _chunk_file(folder, lo, hi)
    if not os.path.exists(name):
        return None
    try:
        z = load_npz(name)
        part = {"lo": lo, "hi": hi, **{k: z[k] for k in ("intensity", "ug", "thickness_nm")}}
    except (OSError, ValueError, KeyError) as exc:  # a truncated checkpoint: recompute it
        logger.warning("ignoring unreadable checkpoint %s (%s)", name, exc)
        return None
    if part["intensity"].shape[0] != hi - lo:
        return None
    return part


def open_chunk_folder(
    folder: str, spec, bounds: list[tuple[int, int]]
) -> tuple[list[dict], list[tuple[int, int]]]:
    """Create or check the checkpoint folder of ``spec``; return (finished chunks, chunks to do).

    Raises
    ------
    ValueError
        The folder belongs to a data set of other settings.
    """
    os.makedirs(folder, exist_ok=True)
    marker = os.path.join(folder, "spec.json")
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as fh:
            old = json.load(fh).get("digest")
        if old != spec.digest():
            raise ValueError(
                f"checkpoint folder {folder!r} belongs to a different data set; remove it or "
                "choose another path"
            )
    else:
        with open(marker, "w", encoding="utf-8") as fh:
            json.dump({"digest": spec.digest(), "spec": asdict(spec)}, fh)
    parts, todo = [], []
    for lo, hi in bounds:
        part = _load_chunk(folder, lo, hi)
        if part is None:
            todo.append((lo, hi))
        else:
            parts.append(part)
    if parts:
        logger.info("resuming: %d of %d chunks already in %s", len(parts), len(bounds), folder)
    return parts, todo


def simulate_chunks(
    simulate_chunk: Callable[..., dict],
    geometry,
    spec,
    todo: list[tuple[int, int]],
    parts: list[dict],
    folder: str | None,
    client=None,
    scheduler: str = "synchronous",
    progress: bool = True,
) -> None:
    """Run ``simulate_chunk(geometry, spec, lo, hi)`` for every chunk of ``todo``.

    Each result is appended to ``parts`` (and checkpointed in ``folder`` unless it is None) as
    soon as it finishes; the progress bar counts all ``spec.n`` samples, finished ones included.
    """
    from tqdm.auto import tqdm

    done = sum(p["hi"] - p["lo"] for p in parts)
    with tqdm(
        total=spec.n, initial=done, desc="simulate samples", unit="sample", disable=not progress
    ) as bar:

        def _finished(part: dict) -> None:
            if folder is not None:
                _save_chunk(folder, part)
            parts.append(part)
            bar.update(part["hi"] - part["lo"])

        if todo:
            if client is not None:
                _run_distributed(client, simulate_chunk, geometry, spec, todo, _finished)
            else:
                _run_local(scheduler, simulate_chunk, geometry, spec, todo, _finished)


def _run_local(scheduler: str, simulate_chunk, geometry, spec, todo, finished) -> None:
    import dask
    from dask.callbacks import Callback

    tasks = [
        dask.delayed(simulate_chunk, pure=True)(
            geometry, spec, lo, hi, dask_key_name=f"larbed-chunk-{lo}-{hi}"
        )
        for lo, hi in todo
    ]
    keys = {f"larbed-chunk-{lo}-{hi}" for lo, hi in todo}

    class _Done(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):  # noqa: D401 - dask hook
            if key in keys:
                finished(result)

    with _Done():
        dask.compute(*tasks, scheduler=scheduler)


def _run_distributed(client, simulate_chunk, geometry, spec, todo, finished) -> None:
    from dask.distributed import as_completed

    geo_future = client.scatter(geometry, broadcast=True)
    futures = [
        client.submit(
            simulate_chunk, geo_future, spec, lo, hi, key=f"larbed-chunk-{spec.digest()}-{lo}-{hi}"
        )
        for lo, hi in todo
    ]
    for fut in as_completed(futures):
        finished(fut.result())
