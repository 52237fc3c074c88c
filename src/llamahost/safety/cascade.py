"""The ``cascade`` provider's first stage: the builtin classifier answers the clear cases.

The builtin model's mistakes cluster where its P(unsafe) is near its threshold
(bench/moderation_cascade.py measures the share of them a band holds): below
``low`` the message is not flagged, at or above ``high`` it is flagged with the builtin
category head's categories, and in between (``low <= P < high``) the configured Llama
Guard model decides. The band replaces the builtin ``threshold``: a band around it buys
Llama Guard's judgement for the messages the builtin model is least sure of, at the
price of a Llama Guard call for only those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .builtin import BuiltinClassifier, featurize, judged_parts
from .llama_guard import Verdict


def first_stage(
    classifier: BuiltinClassifier, messages: Sequence[Any], low: float, high: float
) -> tuple[Verdict | None, float]:
    """(the builtin verdict, or None to escalate; the builtin model's P(unsafe))."""
    text, context = judged_parts(messages)
    features = featurize(classifier.encoder, text, context)
    p = float(classifier.heads.unsafe_probability(features))
    if p < low:
        return Verdict(flagged=False), p
    if p >= high:
        # At threshold ``high`` the heads flag it and name the categories.
        return classifier.heads.verdict(features, high), p
    return None, p


def unsafe_probability(classifier: BuiltinClassifier, messages: Sequence[Any]) -> float:
    """The builtin model's P(unsafe) for the last message (what the band is compared with)."""
    return first_stage(classifier, messages, 0.0, 1.0)[1]
