#!/usr/bin/env bash
# fedmask-entrypoint: the container's role is its command.
#
#   pki                   (no arguments) create the federation CA and the coordinator's
#                         certificate (idempotent) in /var/lib/fedmask/pki, wait for every
#                         participant's enrolment request in /var/lib/fedmask/enrolment/NAME/request.json,
#                         issue each certificate from its request, and publish only public files (the
#                         participant's certificate, the CA certificate, the signed roster) to
#                         /var/lib/fedmask/enrolment/NAME/issued; copy the coordinator's credentials
#                         into /var/lib/fedmask/export/coordinator; then exit. It never makes or sees a
#                         participant's private key.
#   coordinator [--OPT..] wait for the credentials, run `fedmask coordinator run` (every round, with
#                         any options given) and write the report into /var/lib/fedmask/report, scored
#                         on public evaluation records (FEDMASK_EVALUATION, or demo records generated
#                         with another seed)
#   participant NAME      make its own keys (`fedmask participant enrol`) in /var/lib/fedmask/credentials,
#                         put its request in /var/lib/fedmask/enrolment, wait for the public files the
#                         pki job publishes there, generate demo records if none are there yet, and run
#                         `fedmask participant node` until the federation finishes
#   anything else         `fedmask ARGS...`, as are `pki ARGS`, `coordinator COMMAND ...` and
#                         `participant enrol|join|node|train ...` (e.g. `docker run fedmask pki show`)
#
# Volumes: /var/lib/fedmask/credentials (the coordinator's credentials, read-only; a participant's
# own keys plus the public files it was sent), /var/lib/fedmask/enrolment (a participant's request
# and what the pki job sends back: public files only), /var/lib/fedmask/data (a participant's
# records and node state), /var/lib/fedmask/state (the coordinator's store and checkpoints),
# /var/lib/fedmask/report.
set -euo pipefail

HOME_DIR=/var/lib/fedmask
CREDENTIALS=$HOME_DIR/credentials
ENROLMENT=$HOME_DIR/enrolment
READY_MARKER=.ready
log() { echo "$(date +%H:%M:%S) entrypoint: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Only `pki` may start as root: it hands the volumes it writes (which the engine may create owned
# by root) to the fedmask user, then drops to that user for everything else.
if [ "$(id -u)" = 0 ]; then
    [ "${1:-}" = pki ] || die "run as the fedmask user (only the pki role may start as root)"
    chown fedmask:fedmask "$HOME_DIR/pki" "$HOME_DIR/export" "$HOME_DIR"/export/*/ \
        "$ENROLMENT" "$ENROLMENT"/*/ 2>/dev/null || true
    exec setpriv --reuid=fedmask --regid=fedmask --clear-groups -- "$0" "$@"
fi

# wait_for TEST... : until the test holds, up to FEDMASK_CREDENTIALS_WAIT_S seconds.
wait_for() {
    local waited=0 limit=${FEDMASK_CREDENTIALS_WAIT_S:-600}
    until "$@"; do
        [ "$waited" -lt "$limit" ] || die "still waiting after ${limit} s for: $*"
        [ "$waited" -gt 0 ] || log "waiting for: $*"
        sleep 1
        waited=$((waited + 1))
    done
}

wait_for_credentials() {
    wait_for test -f "$CREDENTIALS/$READY_MARKER"
}

# copy SRC DST MODE: atomically (a reader sees the old file or the new one, never half of one).
copy() {
    mkdir -p "$(dirname "$2")"
    install -m "$3" "$1" "$2.tmp"
    mv -f "$2.tmp" "$2"
}

export_coordinator() {  # DIR OUT NAME: what the coordinator needs, laid out as a federation directory
    local federation=$1 out=$2 name=$3
    copy "$federation/ca/ca.pem" "$out/ca/ca.pem" 0644
    copy "$federation/roster.json" "$out/roster.json" 0644
    copy "$federation/roster.sig" "$out/roster.sig" 0644
    copy "$federation/coordinator/$name.pem" "$out/coordinator/$name.pem" 0644
    copy "$federation/coordinator/$name.key" "$out/coordinator/$name.key" 0600
    touch "$out/$READY_MARKER"
}

# issue_from_request DIR NAME: NAME's certificate from the request in its enrolment volume, once per
# request (a copy of the last one issued is kept in the pki volume). A demo job issues whatever
# arrives; a real operator first compares the request's sha256 with the participant's.
issue_from_request() {
    local federation=$1 party=$2
    local request=$ENROLMENT/$party/request.json issued_copy=$federation/requests/$party.json force=()
    [ -d "$ENROLMENT/$party" ] || die "no enrolment volume for $party: mount one at $ENROLMENT/$party"
    wait_for test -f "$request"
    if [ -f "$federation/participants/$party/tls.pem" ] && cmp -s "$request" "$issued_copy"; then
        log "$party: already issued from this request"
        return
    fi
    [ ! -f "$federation/participants/$party/tls.pem" ] || force=(--force)  # it enrolled again: new keys
    fedmask pki issue participant "$party" --dir "$federation" --request "$request" "${force[@]}"
    copy "$request" "$issued_copy" 0644
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
    # What an earlier run published may be outdated by the end of this one: participants wait.
    for party in "${participants[@]}"; do
        rm -f "$ENROLMENT/$party/issued/$READY_MARKER"
    done
    for party in "${participants[@]}"; do
        issue_from_request "$federation" "$party"
    done
    # Sent back once the roster lists everyone, so that every party holds the same roster.
    for party in "${participants[@]}"; do
        fedmask pki export "$party" --dir "$federation" --out "$ENROLMENT/$party/issued" > /dev/null
        touch "$ENROLMENT/$party/issued/$READY_MARKER"
        log "public files of $party in its enrolment volume"
    done
    local exported=0 target
    for target in "$HOME_DIR"/export/*/; do
        [ -d "$target" ] || continue
        target=${target%/}
        [ "$(basename "$target")" = coordinator ] ||
            die "$target: only the coordinator's credentials are exported; participants enrol themselves"
        export_coordinator "$federation" "$target" "$coordinator"
        log "credentials of the coordinator in its volume"
        exported=$((exported + 1))
    done
    log "federation ready: ${#participants[@]} participants issued from their requests, $exported coordinator volume filled"
}

# public_evaluation_records: the public records the report scores the global adapter on
# (FEDMASK_EVALUATION, or demo records of each kind of party drawn with another seed than the
# participants' own, generated once into the state volume). Never a participant's data.
public_evaluation_records() {
    if [ -n "${FEDMASK_EVALUATION:-}" ]; then
        echo "$FEDMASK_EVALUATION"
        return
    fi
    local records=$HOME_DIR/state/evaluation/records.jsonl new=$HOME_DIR/state/evaluation/.new
    if [ ! -f "$records" ]; then
        mkdir -p "$new"
        for kind in hospital-a hospital-b bank; do
            fedmask data generate --party "$kind" --records "${FEDMASK_EVALUATION_RECORDS:-100}" \
                --seed "${FEDMASK_EVALUATION_SEED:-1}" --out "$new/$kind.jsonl" >&2
        done
        cat "$new"/*.jsonl > "$new/records.jsonl"
        mv -f "$new/records.jsonl" "$records"
    fi
    echo "$records"
}

role_coordinator() {
    wait_for_credentials
    local evaluation
    evaluation=$(public_evaluation_records)
    exec fedmask coordinator run \
        --federation "$CREDENTIALS" \
        --name "${FEDMASK_COORDINATOR_NAME:-main}" \
        --state "$HOME_DIR/state" \
        --config "${FEDMASK_CONFIG:-/etc/fedmask/federation.json}" \
        --host 0.0.0.0 --port "${FEDMASK_PORT:-7443}" --health-port "${FEDMASK_HEALTH_PORT:-8081}" \
        --report "$HOME_DIR/report" \
        --evaluate "$evaluation" \
        "$@"
}

# enrol_self NAME ORGANISATION: this participant's own keys (in its credentials volume, never anywhere
# else) and its request (in its enrolment volume), unless an earlier run made them.
enrol_self() {
    local name=$1 organisation=$2
    if [ -f "$CREDENTIALS/participants/$name/tls.key" ] && [ -f "$ENROLMENT/request.json" ]; then
        log "keys of $name already in $CREDENTIALS"
        return
    fi
    # The pki job may have created this volume first (owned by root) and hands it over at once.
    wait_for test -w "$ENROLMENT"
    rm -rf "$ENROLMENT/issued"  # a certificate for other keys is of no use
    fedmask participant enrol --federation "$CREDENTIALS" --name "$name" --organisation "$organisation" \
        --out "$ENROLMENT/request.json" --force
}

# install_issued NAME: the public files the pki job sent back, next to this participant's keys.
install_issued() {
    local name=$1 issued=$ENROLMENT/issued
    wait_for test -f "$issued/$READY_MARKER"
    copy "$issued/ca/ca.pem" "$CREDENTIALS/ca/ca.pem" 0644
    copy "$issued/participants/$name/tls.pem" "$CREDENTIALS/participants/$name/tls.pem" 0644
    copy "$issued/roster.sig" "$CREDENTIALS/roster.sig" 0644
    copy "$issued/roster.json" "$CREDENTIALS/roster.json" 0644
    log "certificate of $name and the signed roster installed"
}

role_participant() {
    local name=${1:-${FEDMASK_NAME:-}}
    [ -n "$name" ] || die "usage: participant NAME (or set FEDMASK_NAME)"
    [ "$#" -eq 0 ] || shift
    enrol_self "$name" "${FEDMASK_ORGANISATION:-$name}"
    local records=$HOME_DIR/data/records.jsonl
    if [ ! -f "$records" ]; then
        # Demo records; a real participant mounts its own records at this path instead. Written
        # aside and moved into place, so that an interrupted run never leaves half a file.
        fedmask data generate --party "$name" --records "${FEDMASK_RECORDS:-200}" \
            --seed "${FEDMASK_DATA_SEED:-0}" --out "$HOME_DIR/data/.new/records.jsonl"
        mv -f "$HOME_DIR/data/.new/records.jsonl" "$records"
    fi
    install_issued "$name"
    exec fedmask participant node \
        --federation "$CREDENTIALS" \
        --name "$name" \
        --data "$records" \
        --state "$HOME_DIR/data/node" \
        --coordinator "${FEDMASK_COORDINATOR:-coordinator:7443}" \
        "$@"
}

# fedmask's own subcommands of `participant` (kept equal to the CLI's by tests/docker): with one of
# them as its second word, `participant` is the command, not the role.
PARTICIPANT_COMMANDS=(enrol join node train)

is_participant_command() {
    local word
    for word in "${PARTICIPANT_COMMANDS[@]}"; do [ "$1" = "$word" ] && return 0; done
    return 1
}

# A role takes no subcommand: `pki show --dir ...`, `coordinator status --state ...` and
# `participant enrol ...` are fedmask's commands of those names.
case "${1:-}" in
    pki) if [ "$#" -eq 1 ]; then role_pki; else exec fedmask "$@"; fi ;;
    coordinator) if [ "$#" -gt 1 ] && [ "${2#-}" = "$2" ]; then exec fedmask "$@"; else shift; role_coordinator "$@"; fi ;;
    participant) if [ "$#" -gt 1 ] && is_participant_command "$2"; then exec fedmask "$@"; else shift; role_participant "$@"; fi ;;
    *) exec fedmask "$@" ;;
esac
