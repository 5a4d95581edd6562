"""Structure factors from LARBED patterns with neural networks (the thesis's method, chapters 3–4).

* :func:`make_unique_ug_vector` — fix the unit-cell origin of U_g vectors (makeUniqueUgVector);
* :func:`generate_dataset` — seeded, Dask-parallel, checkpointed training data;
* :class:`Regressor` — the ANN and the ResNet-50 transfer CNN with a reproducible training loop;
* :func:`run_task1` / :func:`run_task2` — U_g deviation and U_g determination;
* :func:`task2_start` / :func:`model_start` — network starts for :func:`larbed.determine`.

TensorFlow/Keras is needed only for the models and the tasks and is imported lazily, inside the
functions that build, train or predict: ``import larbed`` and ``import larbed.learn`` never import it.
"""

from ..origin import choose_reference_reflections, make_unique_ug_vector
from .dataset import generate_dataset, load_dataset, make_targets, save_dataset, split_targets
from .models import WeightsUnavailableError, imagenet_cache_path
from .results import Task1Result, Task2Result, TaskInputs, load_results_dataset
from .starts import ModelStart, Task2Start, model_start, task2_start
from .tasks import default_scales, resolve_inputs, run_task1, run_task2
from .training import Regressor

__all__ = [
    "ModelStart",
    "Regressor",
    "Task1Result",
    "Task2Result",
    "Task2Start",
    "TaskInputs",
    "WeightsUnavailableError",
    "choose_reference_reflections",
    "default_scales",
    "generate_dataset",
    "imagenet_cache_path",
    "load_dataset",
    "load_results_dataset",
    "model_start",
    "make_targets",
    "make_unique_ug_vector",
    "resolve_inputs",
    "run_task1",
    "run_task2",
    "save_dataset",
    "split_targets",
    "task2_start",
]
