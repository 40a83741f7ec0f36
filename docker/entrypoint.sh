#!/bin/sh
# gnosis-entrypoint: the container's ENTRYPOINT. It settles the hub flags from the cache's real state, then
# execs `gnosis-ocr "$@"` (CMD is `serve`).
#
# The offline flags are not baked into the image: a complete model makes HF_HUB_OFFLINE=1 and
# TRANSFORMERS_OFFLINE=1 right (zero hub calls, set before huggingface_hub is imported), an incomplete one needs
# the hub reachable for GNOSIS_CACHE_MODE=auto to warm it. So, for the commands that load the model (serve, ocr,
# batch), it asks `gnosis-ocr cache status --json` (fast: names and sizes, no network; exit 0 only when
# complete) and exports the flags when the configured model (MODEL_NAME@GNOSIS_MODEL_REVISION) is complete.
#
# Left alone: flags the operator set (HF_HUB_OFFLINE given explicitly wins), GNOSIS_CACHE_MODE=refresh (it must
# ask the hub for a newer commit), GNOSIS_ENGINE=tesseract or layout (no hub model), and every other command (cache
# warm, push, info, ...). GNOSIS_ENTRYPOINT_PROBE=0 skips the check. The token (HF_TOKEN) is never printed.
set -eu

log() {
    printf 'gnosis-entrypoint: %s\n' "$*" >&2
}

# One JSON string field of `cache status --json` (pretty-printed, one key per line); empty when null or absent.
json_field() {
    printf '%s\n' "$2" | sed -n "s/^ *\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" | head -n 1
}

# Does this command line load the model? Its subcommand is the first word that is not an option (the root
# options, --verbose and friends, take no value).
loads_model() {
    for word in "$@"; do
        case "$word" in
            -*) continue ;;
            serve | ocr | batch) return 0 ;;
            *) return 1 ;;
        esac
    done
    return 1
}

settle_offline_flags() {
    mode=${GNOSIS_CACHE_MODE:-auto}
    if [ "${GNOSIS_ENTRYPOINT_PROBE:-1}" = "0" ]; then
        log "cache check skipped (GNOSIS_ENTRYPOINT_PROBE=0)"
        return 0
    fi
    if [ -n "${HF_HUB_OFFLINE:-}" ]; then
        log "HF_HUB_OFFLINE=${HF_HUB_OFFLINE} was set by the operator; left as it is"
        return 0
    fi
    case "${GNOSIS_ENGINE:-auto}" in
        tesseract | layout)
            log "engine ${GNOSIS_ENGINE}: no model to load; hub flags left as they are"
            return 0
            ;;
    esac
    if [ "$mode" = "refresh" ]; then
        log "GNOSIS_CACHE_MODE=refresh: the hub stays reachable to look for a newer commit"
        return 0
    fi

    rc=0
    status_json=$(gnosis-ocr cache status --json) || rc=$?
    model=$(json_field model "$status_json")
    revision=$(json_field revision "$status_json")
    root=$(json_field cache_root "$status_json")
    state=$(json_field state "$status_json")
    commit=$(json_field commit "$status_json")
    name="${model:-${MODEL_NAME:-the model}}@${revision:-${GNOSIS_MODEL_REVISION:-main}}"

    if [ "$rc" -eq 0 ] && [ "$state" = "complete" ]; then
        HF_HUB_OFFLINE=1
        TRANSFORMERS_OFFLINE=1
        export HF_HUB_OFFLINE TRANSFORMERS_OFFLINE
        log "$name (commit $(printf '%.7s' "$commit")) is complete in $root: HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1"
        return 0
    fi
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then
        log "could not check the cache (\`gnosis-ocr cache status\` exited $rc); hub flags left as they are"
        return 0
    fi
    case "$mode" in
        offline)
            log "$name is ${state:-not complete} in ${root:-the cache}; GNOSIS_CACHE_MODE=offline: the service will" \
                "refuse to download and stay not ready (see /readyz); run \`gnosis-ocr cache warm\` where the hub" \
                "is reachable, or \`gnosis-ocr cache push\` from CI"
            ;;
        *)
            log "$name is ${state:-not complete} in ${root:-the cache}; the hub stays reachable and the service" \
                "will warm it first (GNOSIS_CACHE_MODE=$mode)"
            ;;
    esac
    return 0
}

if loads_model "$@"; then
    settle_offline_flags
fi
exec gnosis-ocr "$@"
