#!/usr/bin/env bash
# fedmask-entrypoint: the container's role is its command.
#
#   pki                   create the federation CA and certificates (idempotent) in /var/lib/fedmask/pki
#                         and copy each party's credentials into /var/lib/fedmask/export/NAME
#                         (NAME = "coordinator" or a participant); then exit
#   coordinator [ARGS]    wait for the credentials, run `fedmask coordinator run` (every round) and
#                         write the report into /var/lib/fedmask/report
#   participant NAME      wait for the credentials, generate demo records if none are there yet,
#                         run `fedmask participant node` until the federation finishes
#   anything else         `fedmask ARGS...` (e.g. `docker run fedmask pki show`)
#
# Volumes: /var/lib/fedmask/credentials (this party's certificate, key, the CA certificate and the
# signed roster; read-only), /var/lib/fedmask/data (a participant's records and node state),
# /var/lib/fedmask/state (the coordinator's store and checkpoints), /var/lib/fedmask/report.
set -euo pipefail

HOME_DIR=/var/lib/fedmask
CREDENTIALS=$HOME_DIR/credentials
READY_MARKER=.ready
log() { echo "$(date +%H:%M:%S) entrypoint: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Only `pki` may start as root: it hands its export volumes (which the engine may create owned
# by root) to the fedmask user, then drops to that user for everything else.
if [ "$(id -u)" = 0 ]; then
    [ "${1:-}" = pki ] || die "run as the fedmask user (only the pki role may start as root)"
    chown fedmask:fedmask "$HOME_DIR/pki" "$HOME_DIR/export" "$HOME_DIR"/export/*/ 2>/dev/null || true
    exec setpriv --reuid=fedmask --regid=fedmask --clear-groups -- "$0" "$@"
fi

wait_for_credentials() {
    local waited=0 limit=${FEDMASK_CREDENTIALS_WAIT_S:-600}
    until [ -f "$CREDENTIALS/$READY_MARKER" ]; do
        [ "$waited" -lt "$limit" ] || die "no credentials in $CREDENTIALS after ${limit} s (is the pki service running?)"
        [ "$waited" -gt 0 ] || log "waiting for credentials in $CREDENTIALS"
        sleep 1
        waited=$((waited + 1))
    done
}

# copy SRC DST MODE: atomically (a reader sees the old file or the new one, never half of one).
copy() {
    mkdir -p "$(dirname "$2")"
    install -m "$3" "$1" "$2.tmp"
    mv -f "$2.tmp" "$2"
}

export_credentials() {  # DIR ROLE NAME: the files NAME needs, laid out as a federation directory
    local federation=$1 out=$2 role=$3 name=$4
    copy "$federation/ca/ca.pem" "$out/ca/ca.pem" 0644
    copy "$federation/roster.json" "$out/roster.json" 0644
    copy "$federation/roster.sig" "$out/roster.sig" 0644
    if [ "$role" = coordinator ]; then
        copy "$federation/coordinator/$name.pem" "$out/coordinator/$name.pem" 0644
        copy "$federation/coordinator/$name.key" "$out/coordinator/$name.key" 0600
    else
        copy "$federation/participants/$name/tls.pem" "$out/participants/$name/tls.pem" 0644
        copy "$federation/participants/$name/tls.key" "$out/participants/$name/tls.key" 0600
        if [ -f "$federation/participants/$name/identity.key" ]; then
            copy "$federation/participants/$name/identity.key" "$out/participants/$name/identity.key" 0600
        fi
    fi
    touch "$out/$READY_MARKER"
}

role_pki() {
    local federation=$HOME_DIR/pki/federation
    local name=${FEDMASK_FEDERATION_NAME:-fedmask}
    local coordinator=${FEDMASK_COORDINATOR_NAME:-main}
    local participants hosts host_args=() party
    IFS=, read -r -a participants <<< "${FEDMASK_PARTICIPANTS:?set FEDMASK_PARTICIPANTS (comma-separated names)}"
    IFS=, read -r -a hosts <<< "${FEDMASK_COORDINATOR_HOSTS:-coordinator,localhost}"
    for host in "${hosts[@]}"; do host_args+=(--host "$host"); done

    if [ ! -f "$federation/ca/ca.pem" ]; then
        fedmask pki init --dir "$federation" --name "$name"
    else
        log "federation CA already in $federation"
    fi
    if [ ! -f "$federation/coordinator/$coordinator.pem" ]; then
        fedmask pki issue coordinator "$coordinator" --dir "$federation" "${host_args[@]}"
    fi
    for party in "${participants[@]}"; do
        if [ ! -f "$federation/participants/$party/tls.pem" ]; then
            fedmask pki issue participant "$party" --dir "$federation"
        fi
    done
    local exported=0 target
    for target in "$HOME_DIR"/export/*/; do
        [ -d "$target" ] || continue
        target=${target%/}
        party=$(basename "$target")
        if [ "$party" = coordinator ]; then
            export_credentials "$federation" "$target" coordinator "$coordinator"
        elif [ -f "$federation/participants/$party/tls.pem" ]; then
            export_credentials "$federation" "$target" participant "$party"
        else
            die "$target: $party is neither 'coordinator' nor in FEDMASK_PARTICIPANTS"
        fi
        log "credentials of $party in its volume"
        exported=$((exported + 1))
    done
    log "federation ready: ${#participants[@]} participants, $exported credential volumes filled"
}

role_coordinator() {
    wait_for_credentials
    exec fedmask coordinator run \
        --federation "$CREDENTIALS" \
        --name "${FEDMASK_COORDINATOR_NAME:-main}" \
        --state "$HOME_DIR/state" \
        --config "${FEDMASK_CONFIG:-/etc/fedmask/federation.json}" \
        --host 0.0.0.0 --port "${FEDMASK_PORT:-7443}" --health-port "${FEDMASK_HEALTH_PORT:-8081}" \
        --report "$HOME_DIR/report" \
        "$@"
}

role_participant() {
    local name=${1:-${FEDMASK_NAME:-}}
    [ -n "$name" ] || die "usage: participant NAME (or set FEDMASK_NAME)"
    [ "$#" -eq 0 ] || shift
    local records=$HOME_DIR/data/records.jsonl
    if [ ! -f "$records" ]; then
        # Demo records; a real participant mounts its own records at this path instead. Written
        # aside and moved into place, so that an interrupted run never leaves half a file.
        fedmask data generate --party "$name" --records "${FEDMASK_RECORDS:-200}" \
            --seed "${FEDMASK_DATA_SEED:-0}" --out "$HOME_DIR/data/.new/records.jsonl"
        mv -f "$HOME_DIR/data/.new/records.jsonl" "$records"
    fi
    wait_for_credentials
    exec fedmask participant node \
        --federation "$CREDENTIALS" \
        --name "$name" \
        --data "$records" \
        --state "$HOME_DIR/data/node" \
        --coordinator "${FEDMASK_COORDINATOR:-coordinator:7443}" \
        "$@"
}

case "${1:-}" in
    pki) shift; role_pki "$@" ;;
    coordinator) shift; role_coordinator "$@" ;;
    participant) shift; role_participant "$@" ;;
    *) exec fedmask "$@" ;;
esac
