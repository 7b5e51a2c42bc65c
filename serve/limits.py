"""Reading requests: the body under its size cap, its JSON, and each field checked against the served
model and the server's caps. Every refusal is an ApiError naming the field and what was expected."""
from __future__ import annotations

import json
import math

from gencc.runtime.defaults import DEFAULT_SAMPLER, DEFAULT_SEED, DEFAULT_STEPS
from gencc.runtime.samplers import SAMPLERS

from .catalog import Served
from .config import ServerConfig
from .jobs import JobRequest

FORMATS = ("npy", "png", "json")
SPACINGS = ("uniform", "logsnr")
SAMPLE_FIELDS = frozenset({"model", "n", "steps", "sampler", "seed", "label", "guidance", "spacing"})


class ApiError(Exception):
    """An HTTP error answer: status and one line; `headers` e.g. Retry-After."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


async def read_json(request, max_bytes: int) -> dict:
    """The request's JSON object, refused past `max_bytes` (413) before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body of {declared} bytes is over the server's limit of {max_bytes}")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > max_bytes:
            raise ApiError(413, f"request body is over the server's limit of {max_bytes} bytes")
    if not body:
        raise ApiError(400, "the request needs a JSON object body")
    try:
        data = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON body: {str(e).splitlines()[0][:120]}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _int(body: dict, name: str, default: int, lo: int, hi: int) -> int:
    v = body.get(name, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(422, f"{name} must be an integer, got {_show(v)}")
    if not lo <= v <= hi:
        raise ApiError(422, f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def _show(v) -> str:
    s = json.dumps(v)
    return s if len(s) <= 60 else s[:57] + "..."


def served_model(body: dict, models: dict[str, Served]) -> Served:
    name = body.get("model")
    if name is None and len(models) == 1:
        return next(iter(models.values()))
    if not isinstance(name, str):
        raise ApiError(422, f"model must be the name of a served model ({', '.join(models)}), got {_show(name)}")
    if name not in models:
        raise ApiError(404, f"unknown model {name[:64]!r}; this server serves {', '.join(models)}")
    return models[name]


def sample_request(body: dict, models: dict[str, Served], config: ServerConfig, extra: frozenset = frozenset()
                   ) -> JobRequest:
    """A checked JobRequest from a /v1/samples or /v1/jobs body (`extra`: fields the route reads itself)."""
    unknown = sorted(set(body) - SAMPLE_FIELDS - extra)
    if unknown:
        raise ApiError(422, f"unknown field {unknown[0]!r}; expected {', '.join(sorted(SAMPLE_FIELDS | extra))}")
    served = served_model(body, models)
    n = _int(body, "n", 1, 1, config.max_n)
    seed = _int(body, "seed", DEFAULT_SEED, 0, 2**64 - 1)
    label = _label(body.get("label"), served)
    if not served.diffusion:
        for name in ("guidance", "spacing"):
            if body.get(name) is not None:
                raise ApiError(422, f"{name} applies to diffusion models; {served.name} is a {served.model.kind}")
        return JobRequest(served.name, n, 1, "none", seed, label)
    steps = _int(body, "steps", min(DEFAULT_STEPS, config.max_steps), 1, config.max_steps)
    sampler = body.get("sampler") or DEFAULT_SAMPLER
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise ApiError(422, f"sampler must be one of {', '.join(sorted(SAMPLERS))}, got {_show(sampler)}")
    spacing = body.get("spacing")
    if spacing is not None and spacing not in SPACINGS:
        raise ApiError(422, f"spacing must be one of {', '.join(SPACINGS)} or null, got {_show(spacing)}")
    guidance = _guidance(body.get("guidance"), served)
    return JobRequest(served.name, n, steps, sampler, seed, label, guidance, spacing)


def _label(v, served: Served) -> int | None:
    if v is None:
        return None
    k = served.model.num_classes
    if not k:
        raise ApiError(422, f"label {_show(v)} given, but model {served.name} is unconditional")
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < k:
        raise ApiError(422, f"label must be an integer class in [0, {k - 1}], got {_show(v)}")
    return v


def _guidance(v, served: Served) -> float | None:
    if v is None:
        return None
    if not served.model.num_classes:
        raise ApiError(422, f"guidance {_show(v)} given, but model {served.name} is unconditional")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 100:
        raise ApiError(422, f"guidance must be a number in [0, 100], got {_show(v)}")
    return float(v)


def output_format(body: dict) -> str:
    fmt = body.get("format", "npy")
    if fmt not in FORMATS:
        raise ApiError(422, f"format must be one of {', '.join(FORMATS)}, got {_show(fmt)}")
    return fmt


def openai_request(body: dict, models: dict[str, Served], config: ServerConfig) -> JobRequest:
    """POST /v1/images/generations: `prompt` names a class of a conditional model (its name or number)
    and is ignored by unconditional ones; `n`; the other OpenAI fields (size, quality, user...) are ignored."""
    served = served_model(body, models)
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise ApiError(422, f"prompt must be a string, got {_show(prompt)}")
    fmt = body.get("response_format", "b64_json")
    if fmt not in ("b64_json", None):
        raise ApiError(422, f"response_format must be b64_json (this server keeps no URLs), got {_show(fmt)}")
    label = _prompt_label(prompt, served)
    fields = {"model": served.name, "n": body.get("n", 1), "label": label}
    for name in ("steps", "sampler", "seed", "guidance"):   # gencc's own knobs, optional
        if name in body:
            fields[name] = body[name]
    return sample_request(fields, models, config)


def _prompt_label(prompt: str, served: Served) -> int | None:
    if not served.model.num_classes or not prompt.strip():
        return None
    words = prompt.strip().lower().split()
    classes = [c.lower() for c in served.classes]
    for word in reversed(words):   # "a digit 7", "7", "circle"
        word = word.strip(".,;:!?'\"")
        if word in classes:
            return classes.index(word)
    raise ApiError(422, f"prompt {_show(prompt)} names no class of model {served.name}; "
                        f"its classes are {', '.join(served.classes)}")
