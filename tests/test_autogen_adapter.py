"""The AutoGen adapters: personae backends in AutoGen agents; AutoGen clients as backends."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import TextMessage
from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelCapabilities,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import FunctionTool, Tool, ToolSchema
from pydantic import BaseModel

from personae.backends._autogen import AutoGenBackend, BackendChatClient
from personae.backends._base import (
    BackendError,
    GenerationRequest,
    GenerationResult,
    Message,
    TokenLogprob,
)
from personae.backends._scripted import ScriptedBackend


class EchoClient(ChatCompletionClient):
    """A minimal AutoGen client: echoes the last user message and records create() calls."""

    def __init__(self, *, reply_calls: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.closed = 0
        self._reply_calls = reply_calls

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        self.calls.append(
            {
                "messages": list(messages),
                "json_output": json_output,
                "extra_create_args": dict(extra_create_args),
            }
        )
        if self._reply_calls:
            call = FunctionCall(id="1", name="lookup", arguments="{}")
            return CreateResult(
                finish_reason="function_calls",
                content=[call],
                usage=RequestUsage(prompt_tokens=1, completion_tokens=1),
                cached=False,
            )
        last = next(m for m in reversed(messages) if isinstance(m, UserMessage))
        assert isinstance(last.content, str)
        return CreateResult(
            finish_reason="length",
            content=f"echo: {last.content}",
            usage=RequestUsage(prompt_tokens=11, completion_tokens=3),
            cached=False,
        )

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        yield await self.create(messages, extra_create_args=extra_create_args)

    async def close(self) -> None:
        self.closed += 1

    def actual_usage(self) -> RequestUsage:
        return RequestUsage(prompt_tokens=0, completion_tokens=0)

    def total_usage(self) -> RequestUsage:
        return RequestUsage(prompt_tokens=0, completion_tokens=0)

    def count_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        return 0

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        return 1000

    @property
    def capabilities(self) -> ModelCapabilities:
        return ModelCapabilities(vision=False, function_calling=False, json_output=False)

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            vision=False,
            function_calling=False,
            json_output=False,
            family="echo-family",
            structured_output=False,
        )


class Recorder:
    """A scripted reply callable that records every request it answers."""

    def __init__(self, reply: str = "Recorded reply.") -> None:
        self.reply = reply
        self.requests: list[GenerationRequest] = []

    def __call__(self, request: GenerationRequest) -> str:
        self.requests.append(request)
        return self.reply


class StartCounting(ScriptedBackend):
    """A scripted backend that counts start() calls and can return logprobs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.starts = 0
        self.closes = 0

    async def start(self) -> None:
        self.starts += 1

    async def close(self) -> None:
        self.closes += 1

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        result = await super().generate(request)
        if not request.logprobs:
            return result
        return GenerationResult(
            text=result.text,
            finish_reason="length",
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            logprobs=(TokenLogprob("Hi", -0.1, {"Hi": -0.1, "Yo": -2.5}),),
        )


def last_text(result: TaskResult) -> str:
    message = result.messages[-1]
    assert isinstance(message, TextMessage)
    return message.content


# personae -> AutoGen


async def test_assistant_agent_runs_on_a_personae_backend() -> None:
    client = BackendChatClient(ScriptedBackend(["Hello from personae."], render_mode="chat"))
    agent = AssistantAgent(name="helper", model_client=client)
    result = await agent.run(task="Say hi")
    assert last_text(result) == "Hello from personae."
    usage = client.total_usage()
    assert usage.completion_tokens == 3
    assert usage.prompt_tokens > 0
    assert client.actual_usage() == usage


async def test_chat_backend_receives_messages_and_sampling_args() -> None:
    recorder = Recorder()
    client = BackendChatClient(
        ScriptedBackend(recorder, render_mode="chat"), temperature=0.3, max_tokens=40
    )
    messages: list[LLMMessage] = [
        SystemMessage(content="Be brief."),
        UserMessage(content="Hi", source="user"),
        AssistantMessage(content="Hello.", source="helper"),
        UserMessage(content="Again", source="user"),
    ]
    result = await client.create(messages)
    request = recorder.requests[-1]
    assert result.content == "Recorded reply."
    assert result.finish_reason == "stop"
    assert result.cached is False
    assert request.prompt is None
    assert request.messages == (
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello."),
        Message("user", "Again"),
    )
    assert (request.temperature, request.max_tokens, request.seed) == (0.3, 40, None)

    await client.create(
        messages,
        extra_create_args={
            "temperature": 0.0,
            "top_p": 0.5,
            "max_tokens": 7,
            "seed": 42,
            "stop": ["END"],
        },
    )
    request = recorder.requests[-1]
    assert (request.temperature, request.top_p, request.max_tokens, request.seed) == (
        0.0,
        0.5,
        7,
        42,
    )
    assert request.stop == ("END",)


async def test_transcript_backend_receives_a_prompt() -> None:
    recorder = Recorder(" Sure thing. ")
    client = BackendChatClient(ScriptedBackend(recorder, render_mode="transcript"))
    agent = AssistantAgent(name="helper", model_client=client, system_message="You are kind.")
    result = await agent.run(task="Say hi")
    assert last_text(result) == "Sure thing."
    request = recorder.requests[-1]
    assert request.messages is None
    assert request.prompt is not None
    assert request.prompt.startswith("System: You are kind.\nUser: Say hi")
    assert request.prompt.endswith("Assistant:")
    assert request.stop[:2] == ("\nUser:", "\nSystem:")


async def test_function_messages_are_rendered_as_text() -> None:
    recorder = Recorder()
    client = BackendChatClient(ScriptedBackend(recorder, render_mode="transcript"))
    await client.create(
        [
            UserMessage(content="Look it up", source="user"),
            AssistantMessage(
                content=[FunctionCall(id="1", name="lookup", arguments='{"q": "x"}')],
                source="helper",
            ),
            FunctionExecutionResultMessage(
                content=[FunctionExecutionResult(content="42", name="lookup", call_id="1")]
            ),
        ]
    )
    prompt = recorder.requests[-1].prompt
    assert prompt == (
        'User: Look it up\nAssistant: [call lookup({"q": "x"})]\n'
        "User: [result of lookup] 42\nAssistant:"
    )


async def test_json_output_becomes_a_schema() -> None:
    class Answer(BaseModel):
        value: int

    recorder = Recorder(json.dumps({"value": 3}))
    client = BackendChatClient(ScriptedBackend(recorder, render_mode="chat"))
    user: list[LLMMessage] = [UserMessage(content="Three?", source="user")]
    await client.create(user, json_output=True)
    assert recorder.requests[-1].json_schema == {"type": "object"}
    await client.create(user, json_output=Answer)
    assert recorder.requests[-1].json_schema == Answer.model_json_schema()
    await client.create(user)
    assert recorder.requests[-1].json_schema is None


async def test_tools_are_rejected() -> None:
    def lookup(q: str) -> str:
        return q

    client = BackendChatClient(ScriptedBackend(["x"], render_mode="chat"))
    tool = FunctionTool(lookup, description="Look something up.")
    with pytest.raises(ValueError, match="does not support tools"):
        await client.create([UserMessage(content="Hi", source="user")], tools=[tool])


async def test_backend_started_lazily_once_and_logprobs_converted() -> None:
    backend = StartCounting(["Hi"], render_mode="chat")
    client = BackendChatClient(backend)
    assert backend.starts == 0
    user: list[LLMMessage] = [UserMessage(content="Hello", source="user")]
    result = await client.create(user, extra_create_args={"logprobs": True, "top_logprobs": 2})
    await client.create(user)
    assert backend.starts == 1
    assert result.finish_reason == "length"
    assert result.logprobs is not None
    (first,) = result.logprobs
    assert (first.token, first.logprob) == ("Hi", -0.1)
    assert first.top_logprobs is not None
    assert [t.logprob for t in first.top_logprobs] == [-0.1, -2.5]
    await client.close()
    assert backend.closes == 0
    await BackendChatClient(backend, close_backend=True).close()
    assert backend.closes == 1


async def test_stream_yields_text_then_result() -> None:
    client = BackendChatClient(ScriptedBackend(["Streamed."], render_mode="chat"))
    chunks = [
        chunk async for chunk in client.create_stream([UserMessage(content="Hi", source="user")])
    ]
    assert chunks[0] == "Streamed."
    assert isinstance(chunks[1], CreateResult)
    assert chunks[1].content == "Streamed."
    assert len(chunks) == 2


async def test_streaming_agent_runs() -> None:
    client = BackendChatClient(ScriptedBackend(["Streamed hello."], render_mode="chat"))
    agent = AssistantAgent(name="helper", model_client=client, model_client_stream=True)
    result = await agent.run(task="Say hi")
    assert last_text(result) == "Streamed hello."


def test_model_info_and_token_estimates() -> None:
    client = BackendChatClient(ScriptedBackend(["x"]))
    info = client.model_info
    assert info["vision"] is False
    assert info["function_calling"] is False
    assert info["json_output"] is True
    assert info["structured_output"] is True
    assert info["family"] == "unknown"
    assert client.capabilities["json_output"] is True
    user: list[LLMMessage] = [UserMessage(content="Hello there, model.", source="user")]
    used = client.count_tokens(user)
    assert used > 0
    assert client.remaining_tokens(user) == 8192 - used


# AutoGen -> personae


async def test_autogen_client_as_backend_with_messages() -> None:
    echo = EchoClient()
    backend = AutoGenBackend(echo)
    assert backend.backend_id == "autogen:echo-family"
    assert backend.render_mode == "chat"
    request = GenerationRequest(
        messages=(
            Message("system", "Be brief."),
            Message("user", "Hi"),
            Message("assistant", "Hello."),
            Message("user", "How are you?"),
        ),
        temperature=0.2,
        max_tokens=33,
        seed=7,
        stop=("\n",),
    )
    result = await backend.generate(request)
    assert result.text == "echo: How are you?"
    assert result.finish_reason == "length"
    assert (result.prompt_tokens, result.completion_tokens) == (11, 3)
    assert result.latency_s >= 0.0
    call = echo.calls[-1]
    sent = call["messages"]
    assert [type(m) for m in sent] == [SystemMessage, UserMessage, AssistantMessage, UserMessage]
    assert sent[1].source == "user"
    assert sent[2].source == "assistant"
    extra = call["extra_create_args"]
    assert extra["temperature"] == 0.2
    assert extra["max_tokens"] == 33
    assert extra["seed"] == 7
    assert extra["stop"] == ["\n"]
    assert call["json_output"] is None


async def test_autogen_client_as_backend_with_prompt() -> None:
    echo = EchoClient()
    backend = AutoGenBackend(echo, backend_id="autogen:custom")
    assert backend.backend_id == "autogen:custom"
    result = await backend.generate(
        GenerationRequest(prompt="Tell me a story.", json_schema={"type": "object"})
    )
    assert result.text == "echo: Tell me a story."
    call = echo.calls[-1]
    assert call["messages"] == [UserMessage(content="Tell me a story.", source="user")]
    assert call["json_output"] is True
    assert "seed" not in call["extra_create_args"]
    await backend.close()
    await backend.close()
    assert echo.closed == 1


async def test_function_call_reply_raises_backend_error() -> None:
    backend = AutoGenBackend(EchoClient(reply_calls=True))
    with pytest.raises(BackendError, match="function calls"):
        await backend.generate(GenerationRequest(prompt="Call a tool."))


# Round trip


async def test_round_trip_returns_scripted_text() -> None:
    scripted = ScriptedBackend(["First line.", "Second line."], render_mode="transcript")
    backend = AutoGenBackend(BackendChatClient(scripted))
    assert backend.backend_id == "autogen:unknown"
    first = await backend.generate(GenerationRequest(prompt="Hello?"))
    second = await backend.generate(
        GenerationRequest(messages=(Message("user", "Hello?"),), max_tokens=5)
    )
    assert (first.text, second.text) == ("First line.", "Second line.")
    assert first.finish_reason == "stop"
    assert first.completion_tokens == 2
