"""The fine-tuning API slice (``/v1/fine_tuning/jobs``, OpenAI's wire shape) and its job
kind; the trainer itself is ``llamahost.finetune``."""
