"""Parse the ``--llm`` / ``MIKO_LLM`` spec string into an explicit :class:`LLMSpec`.

One string picks the text model everywhere (CLI, env, events), so its grammar lives in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from graph.models.base import ModelSpecError

LLMKind = Literal["fake", "smollm2", "smollm2-miko", "distilled", "hf", "openai"]

ACCEPTED_FORMS = (
    "fake | fake:<ms> (scripted output, <ms> milliseconds of latency per call) | "
    "smollm2 (SmolLM2-135M-Instruct, run `miko-stream models pull` once) | "
    "smollm2-miko (default: SmolLM2 with the MIKO-distilled adapter shipped in the package) | "
    "distilled:<folder> (the output of `miko-stream distill generator`) | "
    "hf:<hub id or local folder> | "
    "openai:<model>@<base_url> (e.g. openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1; "
    "OpenAI itself: openai:gpt-4o-mini@https://api.openai.com/v1)"
)


@dataclass(frozen=True)
class LLMSpec:
    kind: LLMKind
    target: str = ""
    latency_ms: float = 0.0
    base_url: str | None = None

    def __str__(self) -> str:
        if self.kind == "fake":
            return f"fake:{self.latency_ms:g}" if self.latency_ms else "fake"
        if self.kind in ("smollm2", "smollm2-miko"):
            return self.kind
        if self.kind == "openai" and self.base_url:
            return f"openai:{self.target}@{self.base_url}"
        return f"{self.kind}:{self.target}"


def _error(spec: str, why: str) -> ModelSpecError:
    return ModelSpecError(f"invalid LLM spec {spec!r}: {why}. Accepted forms: {ACCEPTED_FORMS}")


def _split_openai(spec: str, rest: str) -> tuple[str, str | None]:
    """``model@base_url``; the URL starts at the first ``@http`` so model names and URLs may hold ``@``."""
    for scheme in ("@http://", "@https://"):
        at = rest.find(scheme)
        if at >= 0:
            return rest[:at], rest[at + 1 :]
    if "@" in rest:
        model, _, url = rest.rpartition("@")
        raise _error(spec, f"base URL {url!r} must start with http:// or https:// (model {model!r})")
    return rest, None


def parse_llm_spec(spec: str) -> LLMSpec:
    """Parse a spec string; raise :class:`ModelSpecError` naming the accepted forms when it is not one."""
    text = spec.strip()
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    if kind == "fake":
        if not sep:
            return LLMSpec("fake")
        try:
            latency = float(rest)
        except ValueError:
            raise _error(spec, f"latency {rest!r} is not a number of milliseconds") from None
        if latency < 0 or latency != latency:
            raise _error(spec, "latency must be >= 0 milliseconds")
        return LLMSpec("fake", latency_ms=latency)
    if kind in ("smollm2", "smollm2-miko"):
        if sep:
            raise _error(spec, f"{kind} takes no argument")
        return LLMSpec(kind)  # type: ignore[arg-type]
    if kind == "distilled":
        if not rest.strip():
            raise _error(spec, "distilled: needs the folder `miko-stream distill generator --out` wrote")
        return LLMSpec("distilled", target=rest.strip())
    if kind == "hf":
        if not rest.strip():
            raise _error(spec, "hf: needs a hub id or a local folder")
        return LLMSpec("hf", target=rest.strip())
    if kind == "openai":
        model, base_url = _split_openai(spec, rest.strip())
        if not model:
            raise _error(spec, "openai: needs a model name")
        if base_url is None:  # never send posts to a public endpoint by default
            raise _error(spec, f"openai: needs the server's base URL, e.g. openai:{model}@http://127.0.0.1:8000/v1")
        return LLMSpec("openai", target=model, base_url=base_url)
    raise _error(spec, f"unknown kind {kind!r}")


@dataclass(frozen=True)
class CallOptions:
    """What one model call asks for, whatever the backend: a token budget, stop strings, a temperature."""

    max_new_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0


def call_options(
    stop: list[str] | None, kwargs: dict[str, object], *, max_new_tokens: int, temperature: float
) -> CallOptions:
    """Read ``stop``, ``max_tokens`` / ``max_new_tokens`` and ``temperature`` (per call or by ``.bind``)."""
    budget = kwargs.get("max_new_tokens", kwargs.get("max_tokens"))
    budget = max_new_tokens if budget is None else int(budget)  # type: ignore[call-overload]
    if budget < 1:
        raise ValueError(f"max_tokens must be >= 1, got {budget}")
    stops = kwargs.get("stop") if stop is None else stop
    temp = kwargs.get("temperature")
    return CallOptions(
        max_new_tokens=budget,
        stop=tuple(s for s in (stops or ()) if s),  # type: ignore[union-attr]
        temperature=temperature if temp is None else float(temp),  # type: ignore[arg-type]
    )


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def without_credentials(text: str) -> str:
    """A spec or URL as it may appear in events and logs: any ``user:password@`` part removed."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>", text)
