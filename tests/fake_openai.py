"""A small OpenAI-compatible HTTP server on 127.0.0.1 that behaves like one kind of real server,
for the tests of what the openai backend finds out at start.

Kinds (`FakeServer(kind)`):

- `llamacpp-base`: llama.cpp serving a base model: `/props` shows llama.cpp's ChatML fallback
  template, whose markers its tokenizer splits into several tokens; honours `grammar`, ignores
  `structured_outputs` and `response_format`.
- `llamacpp-chat`: the same with a template of the model's own (one special token per marker).
- `vllm-base`: vLLM serving a model without a chat template: `/version` answers, a chat request
  is refused with vLLM's chat-template message; honours `structured_outputs`, ignores `grammar`.
- `vllm-chat`: the same, chat requests answered.
- `hosted`: neither `/props` nor `/version`; chat answered; honours only `response_format`.
- `plain`: like `hosted` but constrains nothing.
- `broken-chat`: like `hosted`, but every chat request fails with HTTP 500.

Unconstrained answers are `FREE_TEXT`; constrained ones the first allowed choice. Every request
is recorded as (method, path, body).
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from typing import Any

FREE_TEXT = "Paris, of course."
CHATML_FALLBACK = (
    "{%- for message in messages -%}\n  {{- '<|im_start|>' + message.role + '\\n' + "
    "message.content + '<|im_end|>\\n' -}}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\\n' -}}\n{%- endif -%}"
)
KINDS = ("llamacpp-base", "llamacpp-chat", "vllm-base", "vllm-chat", "hosted", "plain",
         "broken-chat")  # fmt: skip


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _missing(self) -> None:
        self._send(404, {"error": {"message": "File Not Found", "code": 404}})

    def do_GET(self) -> None:
        kind = self.server.kind
        self.server.requests.append(("GET", self.path, None))
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "fake-model"}]})
        elif self.path == "/props" and kind.startswith("llamacpp"):
            template = (
                CHATML_FALLBACK
                if kind == "llamacpp-base"
                else "{% for m in messages %}<start_of_turn>{{ m.content }}{% endfor %}"
            )
            self._send(200, {"total_slots": 2, "chat_template": template})
        elif self.path == "/version" and kind.startswith("vllm"):
            self._send(200, {"version": "0.11.0"})
        else:
            self._missing()

    def do_POST(self) -> None:
        kind = self.server.kind
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or "{}")
        self.server.requests.append(("POST", self.path, body))
        if self.path == "/tokenize" and kind.startswith("llamacpp"):
            one = kind == "llamacpp-chat" or "<|im_start|>" not in body.get("content", "")
            self._send(200, {"tokens": [105] if one else [236820, 236909, 548, 236779, 3041]})
            return
        chat = self.path == "/v1/chat/completions"
        if not chat and self.path != "/v1/completions":
            self._missing()
            return
        if chat and kind == "vllm-base":
            self._send(400, {"error": {"message": "As of transformers v4.44, default chat "
                                       "template is no longer allowed, so you must provide a "
                                       "chat template if the tokenizer does not define one.",
                                       "code": 400}})  # fmt: skip
            return
        if chat and kind == "broken-chat":
            self._send(500, {"error": {"message": "engine crashed"}})
            return
        text = self._answer(kind, body)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        choice.update(
            {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        )
        self._send(
            200, {"choices": [choice], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
        )

    @staticmethod
    def _answer(kind: str, body: dict[str, Any]) -> str:
        if kind.startswith("llamacpp") and body.get("grammar"):
            return str(json.loads(re.findall(r'"(?:[^"\\]|\\.)*"', body["grammar"])[0]))
        if kind.startswith("vllm") and (body.get("structured_outputs") or {}).get("choice"):
            return str(body["structured_outputs"]["choice"][0])
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
        enum = schema.get("properties", {}).get("choice", {}).get("enum")
        if kind in ("hosted", "broken-chat") and enum:
            return json.dumps({"choice": enum[0]})
        return FREE_TEXT


class FakeServer(http.server.ThreadingHTTPServer):
    """The fake server of `kind`, serving on a thread until `close()` (or the `with` block)."""

    daemon_threads = True

    def __init__(self, kind: str) -> None:
        assert kind in KINDS, kind
        super().__init__(("127.0.0.1", 0), _Handler)
        self.kind = kind
        self.requests: list[tuple[str, str, Any]] = []
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL, ending in /v1."""
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def paths(self) -> list[str]:
        """`METHOD PATH` of every request so far."""
        return [f"{method} {path}" for method, path, _ in self.requests]

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
