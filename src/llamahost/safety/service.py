"""Moderation as a service: the configured moderation models and the provider behind each.

``/v1/moderations`` and the chat guardrails both call ``ModerationService.moderate``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .. import observability as obs
from ..config import Config, ModerationModelConfig
from ..errors import APIError, NotFound, ServiceUnavailable
from ..types.chat import ChatMessage, ChatRequest, ChatResult, SamplingParams
from .llama_guard import UnparseableVerdict, Verdict, conversation_turns, parse_verdict, render_prompt

if TYPE_CHECKING:
    from .builtin import BuiltinClassifier
    from .prompt_guard import PromptGuardClassifier

log = logging.getLogger(__name__)

# "unsafe\nS1,S2,...,S14" is at most ~45 tokens; a verdict needs no more.
LLAMA_GUARD_MAX_TOKENS = 48


class ModerationFailed(APIError):
    """The moderation model answered something that is not a verdict."""

    status_code = 502
    error_type = "server_error"


@dataclass(frozen=True)
class Moderation:
    model: str  # the name the caller used
    verdict: Verdict


class Moderator(abc.ABC):
    def __init__(self, config: ModerationModelConfig) -> None:
        self.config = config

    @property
    @abc.abstractmethod
    def ready(self) -> bool: ...

    async def load(self) -> None:  # noqa: B027 - optional
        return None

    @abc.abstractmethod
    async def classify(self, messages: Sequence[ChatMessage]) -> Verdict:
        """Judge the last message in the context of the ones before it."""

    async def close(self) -> None:  # noqa: B027 - optional
        return None


class _ClassifierOnThread(Moderator):
    """A classifier shipped in the package, loaded once per process and run on the
    service's one moderation thread (CPU work off the event loop). Subclasses name
    their loader and keep their own ``_shared`` copy."""

    _shared: Any = None

    def __init__(self, config: ModerationModelConfig, executor: ThreadPoolExecutor) -> None:
        super().__init__(config)
        self._executor = executor

    @staticmethod
    @abc.abstractmethod
    def _load_shared() -> Any: ...

    @property
    def ready(self) -> bool:
        return type(self)._shared is not None

    async def load(self) -> None:
        if type(self)._shared is None:
            type(self)._shared = await self.run_on_thread(self._load_shared)

    def loaded(self) -> Any:
        """The shared classifier, or a 503 while it is still loading."""
        classifier = type(self)._shared
        if classifier is None:
            raise ServiceUnavailable(
                f"moderation model {self.config.id!r} is still loading", code="model_loading", headers={"Retry-After": "1"}
            )
        return classifier

    async def run_on_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


class BuiltinModerator(_ClassifierOnThread):
    """The classifier shipped in the package; every builtin model shares one encoder."""

    _shared: BuiltinClassifier | None = None

    @staticmethod
    def _load_shared() -> BuiltinClassifier:
        return _load_builtin()

    async def classify(self, messages: Sequence[ChatMessage]) -> Verdict:
        classifier: BuiltinClassifier = self.loaded()
        # The builtin model judges the last message, an assistant reply together with the
        # user message it answers (see its model card); an empty message (an assistant
        # turn with only tool calls) is safe.
        if not messages[-1].content.strip():
            return Verdict(flagged=False)
        return await self.run_on_thread(classifier.classify_messages, list(messages), self.config.threshold)


def _load_builtin() -> BuiltinClassifier:
    from threadpoolctl import threadpool_limits

    from .builtin import BuiltinClassifier

    # One BLAS thread: the encoder's matrices are small, and a second spinning
    # thread would compete with llama.cpp's for the same cores.
    threadpool_limits(1, user_api="blas")
    return BuiltinClassifier()


class ChatModels(Protocol):
    """The chat models a Llama Guard moderator runs on (the chat service, structurally):
    safety depends on this shape, never on the chat package, whose guardrails call it."""

    def model_ready(self, name: str) -> bool: ...

    async def complete(self, request: ChatRequest, *, guarded: bool) -> ChatResult: ...


class LlamaGuardModerator(Moderator):
    """A configured chat model that is a Llama Guard 3 model, run through the chat service."""

    def __init__(self, config: ModerationModelConfig, chat: ChatModels) -> None:
        super().__init__(config)
        self.chat = chat
        assert config.model is not None
        self.chat_model = config.model

    @property
    def ready(self) -> bool:
        return self.chat.model_ready(self.chat_model)

    async def classify(self, messages: Sequence[ChatMessage]) -> Verdict:
        # The embedded engine takes the rendered template as is; an upstream engine (an
        # OpenAI-compatible server) gets the same turns as chat messages and applies the
        # model's own template, which for a Llama Guard 3 model is this one.
        turns = conversation_turns(messages) or [("User", "")]
        request = ChatRequest(
            model=self.chat_model,
            messages=[ChatMessage(role="user" if who == "User" else "assistant", content=text) for who, text in turns],
            raw_prompt=render_prompt(messages),
            max_tokens=LLAMA_GUARD_MAX_TOKENS,
            sampling=SamplingParams(temperature=0.0, top_p=1.0, seed=0),
        )
        # Not guarded: a guardrail's own moderation call must not be moderated again.
        result = await self.chat.complete(request, guarded=False)
        try:
            return parse_verdict(result.text)
        except UnparseableVerdict as exc:
            log.warning("moderation model %s (%s) answered no verdict: %r", self.config.id, self.chat_model, result.text)
            raise ModerationFailed(
                f"moderation model {self.config.id!r} (chat model {self.chat_model!r}) did not answer a Llama Guard "
                f"verdict: {exc}. Is it a Llama Guard 3 model?",
                code="moderation_unparseable",
            ) from None


class CascadeModerator(Moderator):
    """The builtin classifier for clear cases, a Llama Guard moderation model for the band
    in between (``cascade.py``); its metrics give the share escalated and the latency added."""

    def __init__(self, config: ModerationModelConfig, executor: ThreadPoolExecutor, escalation: LlamaGuardModerator) -> None:
        super().__init__(config)
        assert config.band is not None
        self.low, self.high = config.band
        self.builtin = BuiltinModerator(config, executor)
        self.escalation = escalation
        self._decided_builtin = obs.MODERATION_CASCADE.labels(config.id, "builtin")
        self._decided_escalated = obs.MODERATION_CASCADE.labels(config.id, "escalated")
        self._escalation_seconds = obs.MODERATION_ESCALATION_SECONDS.labels(config.id)

    @property
    def ready(self) -> bool:
        return self.builtin.ready and self.escalation.ready

    async def load(self) -> None:
        await self.builtin.load()

    async def classify(self, messages: Sequence[ChatMessage]) -> Verdict:
        from .cascade import first_stage

        classifier = self.builtin.loaded()
        if not messages[-1].content.strip():
            return Verdict(flagged=False)
        verdict, p = await self.builtin.run_on_thread(first_stage, classifier, list(messages), self.low, self.high)
        if verdict is not None:
            self._decided_builtin.inc()
            return verdict
        self._decided_escalated.inc()
        start = time.perf_counter()
        try:
            verdict = await self.escalation.classify(messages)
        finally:
            self._escalation_seconds.observe(time.perf_counter() - start)
        log.debug("moderation model %s escalated P(unsafe)=%.3f to %s: %s", self.config.id, p, self.escalation.config.id, verdict)
        return verdict


class PromptGuardModerator(_ClassifierOnThread):
    """The prompt-injection and jailbreak classifier shipped in the package
    (``prompt_guard.py``), on the builtin model's encoder and thread."""

    _shared: PromptGuardClassifier | None = None

    @staticmethod
    def _load_shared() -> PromptGuardClassifier:
        return _load_prompt_guard()

    async def classify(self, messages: Sequence[ChatMessage]) -> Verdict:
        classifier: PromptGuardClassifier = self.loaded()
        # The last message alone, whatever its role: an injection is as much an attack
        # in a tool result or a pasted document as in the user's own words.
        return await self.run_on_thread(classifier.classify, messages[-1].content, self.config.threshold)


def _load_prompt_guard() -> PromptGuardClassifier:
    from threadpoolctl import threadpool_limits

    from .minilm import MiniLMEncoder
    from .prompt_guard import PromptGuardClassifier

    threadpool_limits(1, user_api="blas")
    # One copy of the encoder in memory when the builtin model runs the same one.
    shared = getattr(BuiltinModerator._shared, "encoder", None)
    return PromptGuardClassifier(shared if isinstance(shared, MiniLMEncoder) else None)


class ModerationService:
    def __init__(self, config: Config, chat: ChatModels) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moderation")
        self._by_name: dict[str, Moderator] = {}
        self.moderators: list[Moderator] = []
        by_id: dict[str, Moderator] = {}
        # Cascades last: they refer to a llama-guard model by id.
        for model in sorted(config.moderation_models, key=lambda m: m.provider == "cascade"):
            moderator: Moderator
            if model.provider == "builtin":
                moderator = BuiltinModerator(model, self._executor)
            elif model.provider == "builtin-prompt-guard":
                moderator = PromptGuardModerator(model, self._executor)
            elif model.provider == "cascade":
                assert model.escalate_to is not None
                escalation = by_id[model.escalate_to]
                assert isinstance(escalation, LlamaGuardModerator)  # checked by the config
                moderator = CascadeModerator(model, self._executor, escalation)
            else:
                moderator = LlamaGuardModerator(model, chat)
            self.moderators.append(moderator)
            by_id[model.id] = moderator
            for name in model.names:
                self._by_name[name] = moderator
        self.default_name = config.moderation_models[0].id

    def resolve(self, name: str | None) -> tuple[str, Moderator]:
        name = name or self.default_name
        moderator = self._by_name.get(name)
        if moderator is None:
            raise NotFound(
                f"moderation model {name!r} not found; available: {', '.join(self._by_name)}",
                param="model",
                code="model_not_found",
            )
        return name, moderator

    async def moderate(self, name: str | None, messages: Sequence[ChatMessage]) -> Moderation:
        name, moderator = self.resolve(name)
        return Moderation(model=name, verdict=await moderator.classify(messages))

    async def load(self) -> None:
        # The prompt guard last: it borrows the builtin model's encoder if one is loaded.
        for moderator in sorted(self.moderators, key=lambda m: isinstance(m, PromptGuardModerator)):
            await moderator.load()

    @property
    def ready(self) -> bool:
        return all(m.ready for m in self.moderators)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
