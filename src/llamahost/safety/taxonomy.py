"""The Llama Guard 3 hazard taxonomy and our wire names for it.

The codes and titles are the ones the Llama Guard 3 prompt lists (S1..S14); the wire
names are kebab-case, as in the Llama API's moderation guide ("self-harm").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    code: str  # "S1"
    title: str  # as written in the Llama Guard 3 prompt, without the full stop
    name: str  # our wire name


CATEGORIES: tuple[Category, ...] = (
    Category("S1", "Violent Crimes", "violent-crimes"),
    Category("S2", "Non-Violent Crimes", "non-violent-crimes"),
    Category("S3", "Sex Crimes", "sex-related-crimes"),
    Category("S4", "Child Exploitation", "child-sexual-exploitation"),
    Category("S5", "Defamation", "defamation"),
    Category("S6", "Specialized Advice", "specialized-advice"),
    Category("S7", "Privacy", "privacy"),
    Category("S8", "Intellectual Property", "intellectual-property"),
    Category("S9", "Indiscriminate Weapons", "indiscriminate-weapons"),
    Category("S10", "Hate", "hate"),
    Category("S11", "Self-Harm", "self-harm"),
    Category("S12", "Sexual Content", "sexual-content"),
    Category("S13", "Elections", "elections"),
    Category("S14", "Code Interpreter Abuse", "code-interpreter-abuse"),
)

BY_CODE = {c.code: c for c in CATEGORIES}
BY_NAME = {c.name: c for c in CATEGORIES}
NAMES = tuple(c.name for c in CATEGORIES)
