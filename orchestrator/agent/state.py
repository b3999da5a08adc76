"""Agent state, written atomically after every step so a run can resume after a crash."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.protocol.workspace import atomic_write
from orchestrator.store.text import escape_surrogates_in, json_line


class _Text(BaseModel):
    """Every string of the state is text: a lone surrogate (from a container's report or an exception
    message, never valid UTF-8) becomes its backslash escape ``\\udc80`` on the way in (construction,
    assignment, loading), so the state always saves and the next prompt can always be sent."""

    model_config = ConfigDict(validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _escape_surrogates(cls, value):
        return escape_surrogates_in(value)


class IterationRecord(_Text):
    iteration: int
    reward: int | None = None
    best_reward: int | None = None
    improved: bool = False
    verdict: str | None = None
    patch_accepted: bool = False
    tests_accepted: int = 0
    samples_added: int = 0
    plateau: int = 0
    timings: dict[str, float] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


class AgentState(_Text):
    run_id: str
    task_id: str
    backend: str
    model_id: str
    iteration: int = 0           # the iteration in progress (1-based once started)
    step: str = "baseline"       # next step to run: baseline | patch | tests | done
    head_commit: str = ""        # workspace commit after the last completed step
    best_commit: str = ""
    best_reward: int = -1
    max_reward: int = 0          # number of protected + hidden tests
    plateau: int = 0
    history: list[IterationRecord] = Field(default_factory=list)
    files_modified: list[str] = Field(default_factory=list)
    generated_tests: list[str] = Field(default_factory=list)
    protected: dict[str, str] = Field(default_factory=dict)
    current_adapter: str | None = None
    train_plateau: int = 0       # training bursts in a row without a held-out improvement beyond noise
    backend_snapshot: dict = Field(default_factory=dict)
    last_result: dict | None = None  # the last evaluation, shown in the next patch prompt
    baseline: dict | None = None     # the untouched workspace's evaluation: the skips it explains are excused
    samples: int = 0
    stop_reason: str | None = None

    def save(self, path: Path) -> None:
        # json_line, not model_dump_json: a surrogate that slipped past the validator (a nested list
        # mutated in place) is written as a JSON escape instead of failing the save; load escapes it.
        atomic_write(path, (json_line(self.model_dump(mode="json"), indent=2) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, path: Path) -> "AgentState":
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))

    def record(self, iteration: int) -> IterationRecord:
        for rec in self.history:
            if rec.iteration == iteration:
                return rec
        rec = IterationRecord(iteration=iteration)
        self.history.append(rec)
        return rec


def state_path(run_dir: Path) -> Path:
    return Path(run_dir) / "state.json"



