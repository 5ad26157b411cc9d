"""Mermaid ``stateDiagram-v2`` text generated from the state machines' transition tables.

    client_diagram()   from ``client.TRANSITIONS``, plus ``Client.start()`` and the abort edges
    server_diagram()   from ``server.PHASES``, plus the abort edges

The tables are data, so the diagrams in docs/design.md are drawn from them rather than by hand
(``docs/update_diagrams.py`` rewrites them; a test fails when they are stale). Where a table's
next state is a ``machine.Branch``, each of its outcomes becomes its own edge, labelled with the
outcome.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from .client import TRANSITIONS, Client, ClientState
from .errors import Phase
from .machine import Branch
from .server import PHASES, Server, ServerState

# ``Client.start()`` is the one move outside the client's table: it sends AdvertiseKeys.
CLIENT_INITIAL_STATE = ClientState.READY
CLIENT_START_TARGET = ClientState.AWAITING_ROSTER
CLIENT_START_LABEL = "start() / AdvertiseKeys"
SERVER_INITIAL_STATE = ServerState.COLLECTING_KEYS

CLIENT_ABORT_LABEL = "abort (server Abort, unexpected message, failed check)"
SERVER_ABORT_LABEL = "close_phase aborts (fewer than t, or a failed check)"

_END_PHASES = (Phase.COMPLETED, Phase.ABORTED)

_State = TypeVar("_State", bound=enum.Enum)
_Machine = TypeVar("_Machine", Client, Server)


@dataclass(frozen=True)
class Edge:
    source: enum.Enum | None  # None: the diagram's start marker [*]
    target: enum.Enum | None  # None: the diagram's end marker [*]
    label: str = ""


def _targets(next_state: _State | Branch[_Machine, _State]) -> dict[str | None, _State]:
    """{None: state} for a fixed next state; {outcome: state} for a Branch."""
    if isinstance(next_state, Branch):
        return {outcome: target for outcome, target in next_state.targets.items()}
    return {None: next_state}


def _with_outcome(label: str, outcome: str | None) -> str:
    return label if outcome is None else f"{label} ({outcome})"


def _type_name(annotation: object) -> str:
    """A class's name; client.py postpones annotations, so there it is the string already."""
    return getattr(annotation, "__name__", str(annotation))


def _abort_edges(states: Iterable[ClientState | ServerState], label: str) -> list[Edge]:
    """Every state that is not an end state can abort; the abort state is the one in phase ABORTED."""
    states = list(states)
    aborted = next(state for state in states if state.phase is Phase.ABORTED)
    return [Edge(state, aborted, label) for state in states if state.phase not in _END_PHASES]


def _end_edges(states: Iterable[ClientState | ServerState]) -> list[Edge]:
    return [Edge(state, None) for state in states if state.phase in _END_PHASES]


def client_edges() -> list[Edge]:
    """The client's moves: start(), each row of ``TRANSITIONS`` (labelled received message /
    reply), the abort edges, and the end states."""
    edges = [Edge(None, CLIENT_INITIAL_STATE), Edge(CLIENT_INITIAL_STATE, CLIENT_START_TARGET, CLIENT_START_LABEL)]
    for (state, message_type), (handler, next_state) in TRANSITIONS.items():
        reply = handler.__annotations__.get("return")
        label = message_type.__name__ if reply is None else f"{message_type.__name__} / {_type_name(reply)}"
        for outcome, target in _targets(next_state).items():
            edges.append(Edge(state, target, _with_outcome(label, outcome)))
    edges += _abort_edges(ClientState, CLIENT_ABORT_LABEL)
    return edges + _end_edges(ClientState)


def server_edges() -> list[Edge]:
    """The server's moves: each phase of ``PHASES`` ends with close_phase (labelled with the
    message it collects), the abort edges (``receive`` never changes the state: only
    close_phase can abort), and the end states."""
    edges = [Edge(None, SERVER_INITIAL_STATE)]
    for state, spec in PHASES.items():
        quorum = "t or more" if spec.needs_threshold else "those asked"
        label = f"close_phase, {spec.accepts.__name__} from {quorum}"
        for outcome, target in _targets(spec.next_state).items():
            edges.append(Edge(state, target, _with_outcome(label, outcome)))
    edges += _abort_edges(ServerState, SERVER_ABORT_LABEL)
    return edges + _end_edges(ServerState)


def _client_description(state: ClientState) -> str:
    what = state.value[1]
    return what if state.phase in _END_PHASES else f"{what} ({state.phase.value})"


def _server_description(state: ServerState) -> str:
    return state.phase.value


def render(states: Iterable[_State], edges: Iterable[Edge], describe: Callable[[_State], str] | None = None) -> str:
    """Mermaid stateDiagram-v2 text: one description line per state, then one line per edge."""
    lines = ["stateDiagram-v2"]
    if describe is not None:
        lines += [f"    {state.name} : {describe(state)}" for state in states]
    for edge in edges:
        source = "[*]" if edge.source is None else edge.source.name
        target = "[*]" if edge.target is None else edge.target.name
        lines.append(f"    {source} --> {target}" + (f" : {edge.label}" if edge.label else ""))
    return "\n".join(lines) + "\n"


def client_diagram() -> str:
    return render(ClientState, client_edges(), _client_description)


def server_diagram() -> str:
    return render(ServerState, server_edges(), _server_description)


# Marker name in docs/design.md -> generator.
DIAGRAMS: Mapping[str, Callable[[], str]] = {
    "client-diagram": client_diagram,
    "server-diagram": server_diagram,
}
