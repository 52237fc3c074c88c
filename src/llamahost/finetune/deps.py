"""The training stack is an optional extra: serving never loads torch."""

from __future__ import annotations

import importlib.util

from ..errors import ServiceUnavailable

TRAINING_MODULES = ("torch", "transformers", "peft", "safetensors", "gguf")
INSTALL_HINT = (
    "pip install torch==2.13.0 (the CPU build; first, so the extra does not pull another torch), "
    "then pip install 'llamahost[finetune]' (from a checkout: pip install -e '.[finetune]')"
)


class TrainingUnavailable(ServiceUnavailable):
    """Fine-tuning was asked of an install without the `finetune` extra."""


def missing_training_modules() -> list[str]:
    return [name for name in TRAINING_MODULES if importlib.util.find_spec(name) is None]


def require_training_deps() -> None:
    missing = missing_training_modules()
    if missing:
        raise TrainingUnavailable(f"fine-tuning needs {', '.join(missing)}, which are not installed: {INSTALL_HINT}")
