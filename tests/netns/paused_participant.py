"""A participant (``fedmask participant join --synthetic-seed``) that stops just before sending
its message of one phase, prints ``paused before PHASE``, and goes on -- sends that message --
when a line arrives on stdin. The multi-host test cuts its link in between, so the message
is sent into a dead link: the coordinator never gets it.

    python tests/netns/paused_participant.py --federation DIR --name NAME --coordinator HOST:PORT \
        --synthetic-seed N --before masked-input
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedmask.participant.grpc_client import take_part
from fedmask.participant.setup import setup_connection, synthetic_input
from fedmask.secagg.errors import Phase


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--federation", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--synthetic-seed", type=int, required=True)
    parser.add_argument("--before", choices=[p.value for p in Phase], required=True)
    args = parser.parse_args()
    pause_phase = Phase(args.before)
    local = setup_connection(args.federation, args.name, args.coordinator)
    connection, identity = local.connection, local.identity

    def before_send(phase: Phase) -> None:
        if phase is pause_phase:
            print(f"paused before {phase.value}", flush=True)
            sys.stdin.readline()
            print(f"sending {phase.value}", flush=True)

    outcome = take_part(
        connection,
        identity,
        lambda start: synthetic_input(args.synthetic_seed, start),
        progress=lambda line: print(f"[{args.name}] {line}", flush=True),
        before_send=before_send,
    )
    print(json.dumps({"name": args.name, "rounds": [outcome.summary()]}), flush=True)


if __name__ == "__main__":
    main()
