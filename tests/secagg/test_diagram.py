"""The state diagrams in docs/design.md are generated from the transition tables: they must be
current, name every state, and draw every transition of the tables."""

import importlib.util
import pathlib
import re
from types import SimpleNamespace

import pytest

from fedmask.secagg import diagram
from fedmask.secagg.client import TRANSITIONS, ClientState
from fedmask.secagg.machine import Branch
from fedmask.secagg.params import SecurityMode
from fedmask.secagg.server import PHASES, ServerState

ROOT = pathlib.Path(__file__).resolve().parents[2]
EDGE = re.compile(r"^\s+(\S+) --> (\S+)(?: : (.*))?$")


def _load_update_script():
    spec = importlib.util.spec_from_file_location("update_diagrams", ROOT / "docs" / "update_diagrams.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _edges(text: str) -> set[tuple[str, str, str]]:
    return {(m[1], m[2], m[3] or "") for m in map(EDGE.match, text.splitlines()) if m}


def _targets(next_state):
    """The states a table row can lead to: one, or one per outcome of a Branch."""
    if isinstance(next_state, Branch):
        return set(next_state.targets.values())
    return {next_state}


def test_design_md_diagrams_are_current():
    script = _load_update_script()
    committed = script.committed_blocks((ROOT / "docs" / "design.md").read_text(encoding="utf-8"))
    for name, generate in diagram.DIAGRAMS.items():
        assert committed[name] == script.fenced(generate()), (
            f"the {name} block in docs/design.md is stale: run `python docs/update_diagrams.py`"
        )


@pytest.mark.parametrize(
    ("text", "states"),
    [(diagram.client_diagram(), ClientState), (diagram.server_diagram(), ServerState)],
    ids=["client", "server"],
)
def test_every_state_is_in_the_diagram(text, states):
    drawn = {name for source, target, _ in _edges(text) for name in (source, target)}
    missing = {state.name for state in states} - drawn
    assert not missing, f"states without an edge: {sorted(missing)}"


def test_every_client_transition_is_an_edge():
    edges = _edges(diagram.client_diagram())
    for (state, message_type), (_, next_state) in TRANSITIONS.items():
        for target in _targets(next_state):
            labels = [label for source, dest, label in edges if (source, dest) == (state.name, target.name)]
            assert any(label.startswith(message_type.__name__) for label in labels), (
                f"no edge {state.name} --> {target.name} on {message_type.__name__}"
            )


def test_every_server_phase_is_an_edge():
    edges = _edges(diagram.server_diagram())
    for state, spec in PHASES.items():
        for target in _targets(spec.next_state):
            labels = [label for source, dest, label in edges if (source, dest) == (state.name, target.name)]
            assert any(spec.accepts.__name__ in label for label in labels), (
                f"no edge {state.name} --> {target.name} collecting {spec.accepts.__name__}"
            )


@pytest.mark.parametrize(
    ("text", "states", "aborted"),
    [
        (diagram.client_diagram(), ClientState, ClientState.ABORTED),
        (diagram.server_diagram(), ServerState, ServerState.ABORTED),
    ],
    ids=["client", "server"],
)
def test_every_live_state_can_abort(text, states, aborted):
    pairs = {(source, target) for source, target, _ in _edges(text)}
    for state in states:
        if state.name not in ("COMPLETED", "ABORTED"):
            assert (state.name, aborted.name) in pairs, f"no abort edge from {state.name}"


def test_branches_get_one_labelled_edge_per_outcome():
    edges = _edges(diagram.client_diagram()) | _edges(diagram.server_diagram())
    rows = [(state, next_state) for (state, _), (_, next_state) in TRANSITIONS.items()]
    rows += [(state, spec.next_state) for state, spec in PHASES.items()]
    branches = [(state, next_state) for state, next_state in rows if isinstance(next_state, Branch)]
    assert branches, "the tables have rows whose next state depends on the round"
    for state, branch in branches:
        for outcome, target in branch.targets.items():
            assert any(
                (source, dest) == (state.name, target.name) and label.endswith(f"({outcome})")
                for source, dest, label in edges
            ), f"no edge {state.name} --> {target.name} labelled ({outcome})"


def test_branches_choose_by_the_security_mode():
    """The mode-dependent rows pick the consistency check in malicious mode only."""
    (_, client_branch), *_ = [(k, v) for k, (_, v) in TRANSITIONS.items() if isinstance(v, Branch)]
    for mode, expected in (
        (SecurityMode.MALICIOUS, ClientState.AWAITING_CONSISTENCY_REQUEST),
        (SecurityMode.SEMI_HONEST, ClientState.AWAITING_UNMASK_REQUEST),
    ):
        assert client_branch(SimpleNamespace(params=SimpleNamespace(mode=mode))) is expected
