"""The model zoo: small arithmetic transformers shipped as Hugging Face directories.

>>> from arithinterp.zoo import list_zoo, zoo_path
>>> [e.name for e in list_zoo()]                      # doctest: +SKIP
['add-2d-tok', 'add-5d', 'add-5d-1L', 'modadd-113', 'mul-3d']
>>> GPT2LMHeadModel.from_pretrained(zoo_path("add-5d"), use_safetensors=True)  # doctest: +SKIP

Each model is reproducible from its recipe with :func:`train`
(``arithinterp train NAME``).
"""

from typing import TYPE_CHECKING

from arithinterp._lazy import lazy_exports

if TYPE_CHECKING:
    from arithinterp.zoo.data import TaskFormat, cascade_operands, complexity_class
    from arithinterp.zoo.recipe import Recipe, load_recipe, recipe_names
    from arithinterp.zoo.registry import (
        ZOO_DIR,
        ZooEntry,
        list_checkpoints,
        list_zoo,
        load_checkpoint_dir,
        zoo_path,
    )
    from arithinterp.zoo.tokenizers import digit_tokenizer, number_tokenizer
    from arithinterp.zoo.train import train

__all__ = [
    "ZOO_DIR",
    "Recipe",
    "TaskFormat",
    "ZooEntry",
    "cascade_operands",
    "complexity_class",
    "digit_tokenizer",
    "list_checkpoints",
    "list_zoo",
    "load_checkpoint_dir",
    "load_recipe",
    "number_tokenizer",
    "recipe_names",
    "train",
    "zoo_path",
]

_MODULES = {
    "arithinterp.zoo.data": ("TaskFormat", "cascade_operands", "complexity_class"),
    "arithinterp.zoo.recipe": ("Recipe", "load_recipe", "recipe_names"),
    "arithinterp.zoo.registry": (
        "ZOO_DIR", "ZooEntry", "list_checkpoints", "list_zoo", "load_checkpoint_dir", "zoo_path",
    ),
    "arithinterp.zoo.tokenizers": ("digit_tokenizer", "number_tokenizer"),
    "arithinterp.zoo.train": ("train",),
}  # fmt: skip

# Loaded on first use: `arithinterp zoo list` must not import torch and transformers.
__getattr__, __dir__ = lazy_exports(
    __name__, {name: module for module, names in _MODULES.items() for name in names}
)
