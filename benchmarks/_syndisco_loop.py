"""SynDisco's own discussion loop on the B5 workload, for `b5_discussion.py`.

Runs under the Python of a separate virtual environment holding the PyPI package `syndisco`
(1.x, whose `Discussion` job has a moderator); nothing here imports personae, and nothing of
SynDisco is copied: only its public jobs, actors and turn manager are called.

    .venv-syndisco/bin/python benchmarks/_syndisco_loop.py SPEC.json OUT_DIR

SPEC gives the model's latency and fixed reply, the turns and context windows and, for each
discussion, its participants, moderator (or none), seed comment and annotators. Each discussion
runs in a `Discussion` job and is written as JSON; then each of its annotators annotates that
file in an `Annotation` job, also written as JSON. One model object serves every actor and
counts its calls. The loop over discussions is this file's: SynDisco's experiment classes share
one moderator across all discussions and name each output file by the minute, so discussions
finishing within a minute would overwrite each other. Prints one JSON line (counts, seconds
after the imports), or `{"error": why}` with exit code 3 when this SynDisco cannot run the
workload.
"""

from __future__ import annotations

import inspect
import json
import random
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

REASON_EXIT = 3


def _fail(why: str) -> NoReturn:
    print(json.dumps({"error": why}))
    sys.exit(REASON_EXIT)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    out = Path(sys.argv[2])
    try:
        version = metadata.version("syndisco")
    except metadata.PackageNotFoundError:
        _fail(f"the package syndisco is not installed for {sys.executable}")
    try:
        from syndisco.backend.actors import ActorType, LLMActor
        from syndisco.backend.model import BaseModel
        from syndisco.backend.turn_manager import RandomWeighted
        from syndisco.jobs import Annotation, Discussion
    except ImportError as exc:
        _fail(
            f"syndisco {version} lacks the 1.x API this loop calls ({exc}); 2.x has no "
            "moderator in its Discussion job: a Python 3.11 environment installs 1.x"
        )
    if "moderator" not in inspect.signature(Discussion).parameters:
        _fail(f"syndisco {version}: its Discussion job takes no moderator")

    class FixedLatencyModel(BaseModel):  # type: ignore[misc]
        """Sleeps a fixed latency per call, as a remote engine would, and returns one reply."""

        def __init__(self, latency_s: float, reply: str) -> None:
            super().__init__(name="fixed-latency", max_out_tokens=70)
            self.latency_s, self.reply, self.calls = latency_s, reply, 0

        def generate_response(self, json_prompt: Any, stop_words: Any) -> str:
            time.sleep(self.latency_s)
            self.calls += 1
            return str(self.reply)

    model = FixedLatencyModel(spec["latency_s"], spec["reply"])

    def actor(who: dict[str, Any], kind: Any) -> Any:
        return LLMActor(
            model=model,
            name=who["name"],
            attributes=who["attributes"],
            context=spec["context"],
            instructions=who["instructions"],
            actor_type=kind,
        )

    random.seed(spec["seed"])  # RandomWeighted draws from the module's generator
    comments = annotations = 0
    start = time.perf_counter()
    for i, d in enumerate(spec["discussions"]):
        moderator = d["moderator"] and actor(d["moderator"], ActorType.USER)
        discussion = Discussion(
            next_turn_manager=RandomWeighted(p_respond=spec["p_respond"]),
            users=[actor(p, ActorType.USER) for p in d["participants"]],
            moderator=moderator,
            history_context_len=spec["window"],
            conv_len=spec["turns"],
            seed_opinion=d["seed"]["text"],
            seed_opinion_user=d["seed"]["name"],
        )
        discussion.begin(verbose=False)
        path = out / f"discussion-{i:03d}.json"
        discussion.to_json_file(path)
        comments += sum(entry["model"] != "hardcoded" for entry in discussion.conv_logs)
        for j, who in enumerate(d["annotators"]):
            job = Annotation(
                annotator=actor(who, ActorType.ANNOTATOR),
                conv_logs_path=path,
                include_moderator_comments=True,
                history_ctx_len=spec["annotator_window"],
            )
            job.begin(verbose=False)
            job.to_json_file(out / f"annotation-{i:03d}-{j}.json")
            annotations += len(job.annotation_logs)
    elapsed = time.perf_counter() - start
    print(json.dumps({
        "syndisco": version,
        "discussions": len(spec["discussions"]),
        "comments": comments,
        "annotations": annotations,
        "calls": model.calls,
        "elapsed": elapsed,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
