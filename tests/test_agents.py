"""Agents: prefix-stable prompts, private personas, output cleaning and farewells."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import pytest

from personae.agents import (
    STYLE_SENTENCE_CAP,
    Agent,
    Client,
    ConversationStyle,
    Counselor,
    Utterance,
    get_role,
    role_names,
)
from personae.errors import UserError

Pair = Callable[..., tuple[Counselor, Client]]

LINES = {
    "counselor": [
        "Hi, I'm Ana. What would you like to talk about today?",
        "That sounds heavy. What went through your mind then?",
        "How did you feel afterwards?",
        "What would you tell a friend in that spot?",
    ],
    "client": [
        "I got a letter from the bank.",
        "That I can't do anything without him.",
        "Useless, mostly. And tired.",
        "That it's not their fault.",
    ],
}


def _conversation(counselor: Counselor, client: Client, turns: int = 8) -> dict[str, list[object]]:
    """Play `turns` lines (counselor first, opening with its persona's fixed line as episodes
    do), recording what each agent was shown before its generated turns:
    {agent name: [(rendered prompt or messages, own text), ...]}."""
    agents = {"counselor": counselor, "client": client}
    labels = [counselor.label, client.label]
    history: list[Utterance] = []
    seen: dict[str, list[object]] = {"counselor": [], "client": []}
    for turn in range(turns):
        name = "counselor" if turn % 2 == 0 else "client"
        agent = agents[name]
        opening = agent.opening() if turn == 0 else None
        if opening is not None:
            text = opening
        else:
            request = agent.request(
                history, labels, seed=turn, tags={"episode_id": "e", "turn": turn}
            )
            text = LINES[name][(turn // 2) % len(LINES[name])]
            shown = request.prompt if request.prompt is not None else request.messages
            seen[name].append((shown, text))
        history.append(Utterance(agent=name, label=agent.label, text=text))
    return seen


# -- prompts --------------------------------------------------------------------------------


def test_transcript_prompt_is_prefix_stable(make_pair: Pair) -> None:
    counselor, client = make_pair("transcript")
    seen = _conversation(counselor, client)
    for name, agent in (("counselor", counselor), ("client", client)):
        calls = seen[name]
        assert len(calls) == (3 if name == "counselor" else 4)
        for (old, own_text), (new, _) in pairwise(calls):
            assert isinstance(old, str) and isinstance(new, str)
            assert old.endswith(f"\n{agent.label}:")  # ends with this agent's speaker tag
            # the next prompt extends the previous one with this agent's own line
            assert new.startswith(old + " " + own_text + "\n")
            assert len(new) > len(old)


def test_transcript_shows_each_line_with_its_speaker_label(make_pair: Pair) -> None:
    counselor, _ = make_pair("transcript")
    history = [
        Utterance("counselor", "Counselor", "How are you?"),
        Utterance("client", "Client", "Not great."),
    ]
    prompt = counselor.render_transcript(history)
    assert prompt.endswith("Counselor: How are you?\nClient: Not great.\nCounselor:")


def test_chat_messages_are_prefix_stable_and_own_lines_are_assistant(make_pair: Pair) -> None:
    counselor, client = make_pair("chat")
    seen = _conversation(counselor, client)
    for name in ("counselor", "client"):
        calls = seen[name]
        for (old, own_text), (new, _) in pairwise(calls):
            assert isinstance(old, tuple) and isinstance(new, tuple)
            assert new[: len(old)] == old
            assert new[len(old)].role == "assistant" and new[len(old)].content == own_text
    # the client's final view: system, then the counselor as user and itself as assistant
    last, _ = seen["client"][-1]
    assert isinstance(last, tuple)
    assert last[0].role == "system"
    roles = [m.role for m in last[1:]]
    assert roles == ["user", "assistant"] * 3 + ["user"]
    assert [m.content for m in last[1:] if m.role == "assistant"] == LINES["client"][:3]


def test_chat_messages_prefix_stable_when_the_opener_generates_its_first_line(
    make_pair: Pair,
) -> None:
    # A client opening the session has no scripted opening line: its first call renders an
    # empty history; its second call must extend that prompt so engines reuse the cache.
    _, client = make_pair("chat")
    first = client.render_messages([])
    assert [m.role for m in first] == ["system", "user"]
    history = [
        Utterance("client", "Client", "I don't really know why I'm here."),
        Utterance("counselor", "Counselor", "That's okay. What made you book?"),
    ]
    second = client.render_messages(history)
    assert second[: len(first)] == first
    assert [m.role for m in second[len(first) :]] == ["assistant", "user"]


def test_private_profile_is_only_in_the_clients_prompt(make_pair: Pair) -> None:
    for mode in ("transcript", "chat"):
        counselor, client = make_pair(mode)
        seen = _conversation(counselor, client, turns=6)
        profile = client.profile
        secrets = [
            profile.automatic_thoughts[0],
            profile.core_beliefs.helpless[0],
            profile.intermediate_beliefs[0],
            profile.situation.split(".")[0],
        ]

        def text_of(shown: object) -> str:
            return shown if isinstance(shown, str) else "\n".join(m.content for m in shown)  # type: ignore[attr-defined]

        for shown, _ in seen["client"]:
            assert all(s in text_of(shown) for s in secrets), mode
        for shown, _ in seen["counselor"]:
            body = text_of(shown)
            assert not any(s in body for s in secrets), mode
            assert profile.name not in body, mode


def test_request_carries_sampling_seed_tags_and_every_label_as_stop(make_pair: Pair) -> None:
    counselor, client = make_pair("transcript")
    labels = [counselor.label, client.label]
    request = client.request([], labels, seed=1234, tags={"episode_id": "ep", "turn": 3})
    assert request.seed == 1234
    assert request.tags == {"episode_id": "ep", "turn": 3, "agent": "client", "role": "client"}
    assert request.temperature == client.sampling.temperature
    assert request.max_tokens == client.sampling.max_tokens
    for label in labels:
        assert f"\n{label}:" in request.stop


def test_custom_labels_are_used_in_transcript_and_stops(counselor_persona, client_profile) -> None:  # type: ignore[no-untyped-def]
    counselor = Counselor("ana", counselor_persona, label="Therapist")
    client = Client("maggie", client_profile, label="Margaret")
    request = client.request(
        [Utterance("ana", "Therapist", "Hello.")], ["Therapist", "Margaret"], seed=0, tags={}
    )
    assert request.prompt is not None
    assert request.prompt.endswith("Therapist: Hello.\nMargaret:")
    assert {"\nTherapist:", "\nMargaret:"} <= set(request.stop)
    assert counselor.label == "Therapist"


# -- cleaning -------------------------------------------------------------------------------


def test_clean_cuts_at_a_speaker_tag(make_pair: Pair) -> None:
    counselor, client = make_pair()
    assert client.clean("I feel tired all the time.\nCounselor: Why is that?") == (
        "I feel tired all the time."
    )
    assert client.clean("Client: I feel tired.\nCounselor: Why?") == "I feel tired."
    assert (
        counselor.clean("Tell me more about that.\n\nClient: Well,") == "Tell me more about that."
    )


def test_clean_folds_whitespace_and_strips_quotes(make_pair: Pair) -> None:
    _, client = make_pair()
    assert client.clean('  "I   just \t feel\n   stuck."  ') == "I just feel stuck."


def test_clean_keeps_a_colon_inside_a_normal_sentence(make_pair: Pair) -> None:
    _, client = make_pair()
    text = "I have two worries: money and sleep."
    assert client.clean(text) == text


@pytest.mark.parametrize(
    ("style", "cap"),
    [("upset", 3), ("verbose", 8), ("reserved", 3), ("tangent", 5), ("pleasing", 5), ("plain", 5)],
)
def test_clean_enforces_the_style_sentence_cap(make_pair: Pair, style: str, cap: int) -> None:
    _, client = make_pair(style=style)
    assert STYLE_SENTENCE_CAP[ConversationStyle(style)] == cap
    raw = " ".join(f"Sentence number {i}." for i in range(1, 13))
    cleaned = client.clean(raw)
    assert cleaned == " ".join(f"Sentence number {i}." for i in range(1, cap + 1))
    # the cap is also what the client is told in its prompt
    assert f"at most {cap} sentences" in client.system_prompt()


def test_clean_drops_a_dangling_half_sentence_only_when_truncated(make_pair: Pair) -> None:
    _, client = make_pair(style="plain")
    raw = "I went to the bank. They were closed. Then I tried to"
    assert client.clean(raw, truncated=True) == "I went to the bank. They were closed."
    assert client.clean(raw, truncated=False) == raw
    # a truncated output that happens to end a sentence is kept whole
    assert client.clean("I went. I came back.", truncated=True) == "I went. I came back."
    # a single unfinished sentence is better than nothing
    assert client.clean("I was going to", truncated=True) == "I was going to"


@pytest.mark.parametrize("raw", ["", "   ", "\n\n\t ", '  ""  '])
def test_clean_returns_empty_for_blank_output(make_pair: Pair, raw: str) -> None:
    _, client = make_pair()
    assert client.clean(raw) == ""


# -- farewells ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Goodbye, take care.",
        "Good-bye for now.",
        "See you next week.",
        "Let's stop here for today.",
    ],
)
def test_counselor_recognises_a_farewell(make_pair: Pair, text: str) -> None:
    counselor, client = make_pair()
    assert counselor.is_farewell(text)
    assert not client.is_farewell(text)  # only the counselor ends the session


@pytest.mark.parametrize("text", ["Take care.", "Take care of yourself!"])
def test_counselor_recognises_take_care_as_a_farewell(make_pair: Pair, text: str) -> None:
    counselor, _ = make_pair()
    assert counselor.is_farewell(text)


@pytest.mark.parametrize(
    "text",
    [
        "Tell me more.",
        "How do you take care of yourself when things get hard?",
        "What does a good day look like for you?",
    ],
)
def test_counselor_does_not_mistake_questions_for_farewells(make_pair: Pair, text: str) -> None:
    counselor, _ = make_pair()
    assert not counselor.is_farewell(text)


def test_asking_about_saying_goodbye_is_not_a_farewell(make_pair: Pair) -> None:
    # margaret_grief (a shipped persona) lost her husband: this is a natural CBT question and
    # must not end the session.
    counselor, _ = make_pair()
    assert not counselor.is_farewell("Did you get a chance to say goodbye to Frank?")


# -- registry -------------------------------------------------------------------------------


def test_role_registry() -> None:
    assert {"counselor", "client"} <= set(role_names())
    assert get_role("client") is Client
    assert issubclass(get_role("counselor"), Agent)
    with pytest.raises(UserError, match="did you mean 'client'"):
        get_role("cleint")
