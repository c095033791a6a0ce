"""Inference backends: one async contract, many engines, chosen by a spec string.

Use `create_backend("embedded")` (llama.cpp in-process, the default), `"openai:URL"`,
`"vllm:PATH"` or `"scripted"`; wrap AutoGen model clients with `AutoGenBackend` and expose any
backend to AutoGen with `BackendChatClient`. `json_schema_grammar` turns a JSON schema into the
bounded grammar every engine decodes `GenerationRequest.json_schema` under.
"""

from personae.backends._autogen import AutoGenBackend, BackendChatClient
from personae.backends._base import (
    Backend,
    BackendError,
    GenerationRequest,
    GenerationResult,
    Message,
    RenderMode,
    TokenLogprob,
)
from personae.backends._embedded import EmbeddedBackend
from personae.backends._human import HumanBackend
from personae.backends._registry import backend_kinds, create_backend, parse_spec, register_backend
from personae.backends._scripted import ScriptedBackend
from personae.backends._structured import json_schema_grammar

__all__ = [
    "AutoGenBackend",
    "Backend",
    "BackendChatClient",
    "BackendError",
    "EmbeddedBackend",
    "GenerationRequest",
    "GenerationResult",
    "HumanBackend",
    "Message",
    "RenderMode",
    "ScriptedBackend",
    "TokenLogprob",
    "backend_kinds",
    "create_backend",
    "json_schema_grammar",
    "parse_spec",
    "register_backend",
]
