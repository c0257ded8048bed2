"""The container image runs the services with the environment `make run` and `make bench` give them, so
what is measured here is what a deployment runs."""

from __future__ import annotations

import shlex
from pathlib import Path

from tools.services_stack import PROCESS_ENV

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def image_env(dockerfile: str) -> dict[str, str]:
    """The variables the Dockerfile's `ENV KEY=VALUE ...` instructions set (continuation lines joined)."""
    joined = dockerfile.replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in joined.splitlines():
        if line.startswith("ENV "):  # only these are split as a shell would: RUN lines may hold anything
            env.update(word.split("=", 1) for word in shlex.split(line, comments=True)[1:] if "=" in word)
    return env


def test_the_image_sets_every_variable_the_devstack_gives_the_services() -> None:
    env = image_env(DOCKERFILE.read_text())
    assert {name: env.get(name) for name in PROCESS_ENV} == PROCESS_ENV


def test_env_instructions_are_read_across_continuation_lines() -> None:
    dockerfile = "FROM x\n# ENV NOT=this\nENV A=1 \\\n    B=two \\\n    C=3\nRUN echo \"D=4 it's\n"
    assert image_env(dockerfile) == {"A": "1", "B": "two", "C": "3"}
