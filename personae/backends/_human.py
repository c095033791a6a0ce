"""The `human` backend: an agent whose lines a person types.

It never generates: `Episode.take_turn` sees `interactive` and, instead of calling `generate`,
raises a LangGraph interrupt whose payload says who speaks, the lines to answer, the turn number
and the time elapsed; the runner answers it through `Services.on_interrupt` (the terminal UI of
`personae train`) and resumes the graph with the typed line.
"""

from __future__ import annotations

from typing import ClassVar

from personae.backends._base import Backend, BackendError, GenerationRequest, GenerationResult


class HumanBackend(Backend):
    """A person at the keyboard: no model, no options."""

    backend_id = "human"
    render_mode = "transcript"
    parallelism = 1
    interactive: ClassVar[bool] = True

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        raise BackendError(
            f"agent {request.tags.get('agent', '?')!r} is played by a person (backend: human): "
            "its lines are typed in 'personae train', not generated",
            retryable=False,
        )
