"""Fine-tuning's technical core: the trainer entrypoint (`python -m llamahost.finetune --spec
job.json`), dataset checks, and the adapter's export to llama.cpp.

Importing this package loads neither torch nor transformers: the API validates datasets and
specs with it; only the trainer subprocess imports the training stack.
"""

from .dataset import read_examples
from .deps import TrainingUnavailable, missing_training_modules, require_training_deps
from .spec import BASE_LEARNING_RATE, EXIT_CANCELLED, TrainingSpec, load_spec, parse_spec

__all__ = [
    "BASE_LEARNING_RATE",
    "EXIT_CANCELLED",
    "TrainingSpec",
    "TrainingUnavailable",
    "load_spec",
    "missing_training_modules",
    "parse_spec",
    "read_examples",
    "require_training_deps",
]
