"""Evals: OpenAI's Evals API over llamahost's own models. ``graders.py`` grades one item
(pure functions); runs, storage and routes come in ``protocol.py`` / ``service.py`` /
``router.py``."""
