"""Structure factors from LARBED patterns with neural networks (the thesis's method, SPEC §3–§6).

TensorFlow/Keras is needed only for the models and the tasks and is imported lazily, inside the
functions that train or predict: ``import larbed`` and ``import larbed.learn`` never import it.
"""

from .dataset import generate_dataset, load_dataset, make_targets, save_dataset, split_targets
from .unique import choose_reference_reflections, make_unique_ug_vector

__all__ = [
    "choose_reference_reflections",
    "generate_dataset",
    "load_dataset",
    "make_targets",
    "make_unique_ug_vector",
    "save_dataset",
    "split_targets",
]
