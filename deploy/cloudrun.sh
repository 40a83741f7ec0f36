#!/usr/bin/env bash
# deploy/cloudrun.sh: gnosis-ocr on Cloud Run with an L4 GPU and the model cache on a Cloud Storage bucket.
#
#   deploy/cloudrun.sh [--dry-run] bucket      create the bucket, the service accounts and their IAM bindings
#   deploy/cloudrun.sh [--dry-run] warm-job    a Cloud Run job, bucket mounted WRITABLE, runs `gnosis-ocr cache warm`
#   deploy/cloudrun.sh [--dry-run] deploy      the service: GPU, bucket mounted READ-ONLY at /cache, offline cache
#   deploy/cloudrun.sh [--dry-run] batch-job   a Cloud Run job of BATCH_TASKS tasks: `gnosis-ocr batch SRC DST`
#   deploy/cloudrun.sh [--dry-run] vllm        a vLLM pool (vLLM's own server, L4s, the bucket READ-ONLY, internal
#                                              ingress, an API key) and the front service on it, GNOSIS_ENGINE=remote
#   deploy/cloudrun.sh [--dry-run] all         bucket, warm-job, deploy (and batch-job when BATCH_SRC/BATCH_DST set)
#
# --dry-run prints every gcloud command, one per line, shell-quoted, and runs nothing.
# Settings come from the environment; docs/DEPLOY.md walks through them.
#
#   required   PROJECT_ID, BUCKET (batch-job also BATCH_SRC and BATCH_DST, gs:// URLs; vllm also
#              VLLM_API_KEY_SECRET, the Secret Manager secret both services take the pool's key from)
#   optional   REGION (us-central1), SERVICE (gnosis-ocr),
#              IMAGE ($REGION-docker.pkg.dev/$PROJECT_ID/gnosis-ocr/gnosis-ocr:gpu),
#              MODEL_NAME (nanonets/Nanonets-OCR-s), MODEL_REVISION (main; becomes GNOSIS_MODEL_REVISION),
#              API_KEY_SECRET (Secret Manager secret holding GNOSIS_API_KEY), HF_TOKEN_SECRET (for the warm job),
#              JOBS_STORAGE (gs://bucket/prefix: shared job state, becomes GNOSIS_STORAGE),
#              MAX_INSTANCES (3), MIN_INSTANCES (0), CONCURRENCY (8), PUBLIC (0: IAM-authenticated callers only),
#              REVISION_TAG (deploy a tagged revision with no traffic, for a switch-over),
#              SERVICE_ACCOUNT (gnosis-ocr@$PROJECT_ID.iam.gserviceaccount.com; serving and batch, reads the bucket),
#              WARM_SERVICE_ACCOUNT (gnosis-ocr-warm@...; the warm job, writes the bucket),
#              WARM_JOB ($SERVICE-cache-warm), BATCH_JOB ($SERVICE-batch), BATCH_TASKS (10),
#              BATCH_PARALLELISM ($MAX_INSTANCES), BATCH_TASK_TIMEOUT (21600s), BATCH_WAIT (0)
#   vllm       VLLM_SERVICE ($SERVICE-vllm), VLLM_IMAGE (docker.io/vllm/vllm-openai:v0.32.0-cu129: CUDA 12.9, which
#              the L4's driver runs), VLLM_MAX_INSTANCES (2), VLLM_MIN_INSTANCES (0), VLLM_MAX_NUM_SEQS (32: pages
#              one L4 decodes together, also its Cloud Run concurrency), VLLM_MAX_MODEL_LEN (16384),
#              VLLM_URL (the pool's https URL; default: asked of Cloud Run after its deploy),
#              FRONT_IMAGE ($REGION-docker.pkg.dev/$PROJECT_ID/gnosis-ocr/gnosis-ocr:cpu; the front has no GPU),
#              VPC_NETWORK (default), VPC_SUBNET (default): the front reaches the internal-only pool through them
#
# L4 GPUs exist in us-central1, europe-west1, europe-west4, asia-southeast1 (and more over time); the project needs
# L4 quota in that region (docs/DEPLOY.md).
set -euo pipefail

PROG=deploy/cloudrun.sh
CACHE_MOUNT=/cache
CACHE_PATH=/cache/huggingface
VOLUME=model-cache
CONTAINER_UID=10001  # the images' user (docker/Dockerfile.*): the warm job's writable mount is owned by it

usage() {
    # the comment block at the top of this file
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 2
}

note() {
    printf '%s: %s\n' "$PROG" "$*" >&2
}

# A word as the shell would need it: plain when safe, else single-quoted (what Python's shlex.quote does).
quote() {
    local word=$1
    if [[ -n $word && $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
        printf '%s' "$word"
    else
        printf "'%s'" "${word//\'/\'\\\'\'}"
    fi
}

show() {
    local out="" word
    for word in "$@"; do
        out+="${out:+ }$(quote "$word")"
    done
    printf '%s\n' "$out"
}

# Run one command (or, with --dry-run, print it).
run() {
    if [[ $DRY_RUN == 1 ]]; then
        show "$@"
        return 0
    fi
    printf '+ %s\n' "$(show "$@")" >&2
    "$@"
}

# Run a create command that may find its object already there (a re-run): that is fine, anything else is not.
run_create() {
    if [[ $DRY_RUN == 1 ]]; then
        show "$@"
        return 0
    fi
    printf '+ %s\n' "$(show "$@")" >&2
    local err rc=0
    err=$("$@" 2>&1 >/dev/null) || rc=$?
    if [[ $rc -eq 0 ]]; then
        return 0
    fi
    # ours already ("you already own it", "already exists"); not a name taken by someone else (also a 409)
    if [[ $err == *"already own it"* || $err == *"already exists"* || $err == *"ALREADY_EXISTS"* ]]; then
        note "already there; kept"
        return 0
    fi
    printf '%s\n' "$err" >&2
    return "$rc"
}

# ---------------------------------------------------------------------------------------------------------------
# settings

DRY_RUN=0
COMMAND=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --dry-run | -n) DRY_RUN=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        bucket | warm-job | deploy | batch-job | vllm | all)
            [[ -z $COMMAND ]] || die "one command at a time (got '$COMMAND' and '$1')"
            COMMAND=$1
            ;;
        *) die "unknown argument '$1'; run $PROG --help" ;;
    esac
    shift
done
[[ -n $COMMAND ]] || {
    usage >&2
    exit 2
}

PROJECT_ID=${PROJECT_ID:-}
BUCKET=${BUCKET:-}
REGION=${REGION:-us-central1}
SERVICE=${SERVICE:-gnosis-ocr}
MODEL_NAME=${MODEL_NAME:-nanonets/Nanonets-OCR-s}
MODEL_REVISION=${MODEL_REVISION:-${GNOSIS_MODEL_REVISION:-main}}
API_KEY_SECRET=${API_KEY_SECRET:-}
HF_TOKEN_SECRET=${HF_TOKEN_SECRET:-}
JOBS_STORAGE=${JOBS_STORAGE:-}
MAX_INSTANCES=${MAX_INSTANCES:-3}
MIN_INSTANCES=${MIN_INSTANCES:-0}
CONCURRENCY=${CONCURRENCY:-8}
PUBLIC=${PUBLIC:-0}
REVISION_TAG=${REVISION_TAG:-}
WARM_JOB=${WARM_JOB:-$SERVICE-cache-warm}
BATCH_JOB=${BATCH_JOB:-$SERVICE-batch}
BATCH_SRC=${BATCH_SRC:-}
BATCH_DST=${BATCH_DST:-}
BATCH_TASKS=${BATCH_TASKS:-10}
BATCH_PARALLELISM=${BATCH_PARALLELISM:-$MAX_INSTANCES}
BATCH_TASK_TIMEOUT=${BATCH_TASK_TIMEOUT:-21600s}
BATCH_WAIT=${BATCH_WAIT:-0}
VLLM_SERVICE=${VLLM_SERVICE:-$SERVICE-vllm}
VLLM_IMAGE=${VLLM_IMAGE:-docker.io/vllm/vllm-openai:v0.32.0-cu129}
VLLM_API_KEY_SECRET=${VLLM_API_KEY_SECRET:-}
VLLM_MAX_INSTANCES=${VLLM_MAX_INSTANCES:-2}
VLLM_MIN_INSTANCES=${VLLM_MIN_INSTANCES:-0}
VLLM_MAX_NUM_SEQS=${VLLM_MAX_NUM_SEQS:-32}
VLLM_MAX_MODEL_LEN=${VLLM_MAX_MODEL_LEN:-16384}
VLLM_URL=${VLLM_URL:-}
VPC_NETWORK=${VPC_NETWORK:-default}
VPC_SUBNET=${VPC_SUBNET:-default}

# Every missing variable at once, each with what it is.
missing=0
require() {
    if [[ -z ${!1:-} ]]; then
        printf '%s: error: %s is not set: %s\n' "$PROG" "$1" "$2" >&2
        missing=1
    fi
}
require PROJECT_ID "the Google Cloud project to deploy into (export PROJECT_ID=my-project)"
require BUCKET "the model cache bucket's name, without gs:// (export BUCKET=my-project-models)"
if [[ $COMMAND == batch-job ]]; then
    require BATCH_SRC "the documents to read, gs://bucket/prefix"
    require BATCH_DST "where results go, gs://bucket/prefix"
fi
if [[ $COMMAND == vllm ]]; then
    require VLLM_API_KEY_SECRET "the Secret Manager secret holding the vLLM pool's API key (both services read it)"
fi
[[ $missing == 0 ]] || exit 2

IMAGE=${IMAGE:-$REGION-docker.pkg.dev/$PROJECT_ID/gnosis-ocr/gnosis-ocr:gpu}
SERVICE_ACCOUNT=${SERVICE_ACCOUNT:-gnosis-ocr@$PROJECT_ID.iam.gserviceaccount.com}
WARM_SERVICE_ACCOUNT=${WARM_SERVICE_ACCOUNT:-gnosis-ocr-warm@$PROJECT_ID.iam.gserviceaccount.com}
FRONT_IMAGE=${FRONT_IMAGE:-$REGION-docker.pkg.dev/$PROJECT_ID/gnosis-ocr/gnosis-ocr:cpu}

[[ $BUCKET != gs://* && $BUCKET != */* ]] || die "BUCKET is a bucket name ('my-models'), not a URL or path: '$BUCKET'"
for pair in "MODEL_NAME=$MODEL_NAME" "MODEL_REVISION=$MODEL_REVISION" "JOBS_STORAGE=$JOBS_STORAGE" \
    "BATCH_SRC=$BATCH_SRC" "BATCH_DST=$BATCH_DST"; do
    [[ ${pair#*=} != *,* ]] || die "${pair%%=*} must not contain a comma: '${pair#*=}'"
done
for pair in "MAX_INSTANCES=$MAX_INSTANCES" "MIN_INSTANCES=$MIN_INSTANCES" "CONCURRENCY=$CONCURRENCY" \
    "BATCH_TASKS=$BATCH_TASKS" "BATCH_PARALLELISM=$BATCH_PARALLELISM" "VLLM_MAX_INSTANCES=$VLLM_MAX_INSTANCES" \
    "VLLM_MIN_INSTANCES=$VLLM_MIN_INSTANCES" "VLLM_MAX_NUM_SEQS=$VLLM_MAX_NUM_SEQS" \
    "VLLM_MAX_MODEL_LEN=$VLLM_MAX_MODEL_LEN"; do
    [[ ${pair#*=} =~ ^[0-9]+$ ]] || die "${pair%%=*} must be a whole number: '${pair#*=}'"
done
if [[ $COMMAND == batch-job || ($COMMAND == all && -n $BATCH_SRC) ]]; then
    [[ $BATCH_SRC == gs://* && $BATCH_DST == gs://* ]] || die "BATCH_SRC and BATCH_DST must be gs:// URLs"
fi
if [[ -n $VLLM_URL && ! $VLLM_URL =~ ^https?://[^/@]+$ ]]; then
    die "VLLM_URL is the pool's base URL (https://NAME-HASH.REGION.run.app), no path or credentials: '$VLLM_URL'"
fi
if [[ $DRY_RUN == 0 ]] && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud is not installed (https://cloud.google.com/sdk); --dry-run shows the commands without it"
fi

SCOPE=(--project="$PROJECT_ID" --region="$REGION")
# The mount: implicit-dirs because `gnosis-ocr cache push` writes objects only (no folder placeholders). The
# writable one is owned by the images' user so the warm job may write. A re-deploy replaces the volume and the
# mount of the same name and path. The read-only one keeps file metadata for the instance's life
# (metadata-cache-ttl-secs=-1: a snapshot never changes under its commit) and has no file cache: on Cloud Run it
# would hold a second copy of the weights in instance memory, and the loader reads each shard as several parallel
# streams itself (docs/DEPLOY.md, "The bucket mount's options"). MOUNT_OPTIONS_EXTRA appends gcsfuse flags
# (;-separated, no leading --), e.g. a file cache with parallel downloads where memory allows.
[[ ${MOUNT_OPTIONS_EXTRA:-} == *,* ]] && die "MOUNT_OPTIONS_EXTRA separates gcsfuse flags with ';', not ',': '$MOUNT_OPTIONS_EXTRA'"
READONLY_MOUNT_OPTIONS="implicit-dirs;metadata-cache-ttl-secs=-1${MOUNT_OPTIONS_EXTRA:+;$MOUNT_OPTIONS_EXTRA}"
READONLY_VOLUME="name=$VOLUME,type=cloud-storage,bucket=$BUCKET,readonly=true,mount-options=$READONLY_MOUNT_OPTIONS"
WRITABLE_VOLUME="name=$VOLUME,type=cloud-storage,bucket=$BUCKET,mount-options=implicit-dirs;uid=$CONTAINER_UID;gid=$CONTAINER_UID"
VOLUME_MOUNT="volume=$VOLUME,mount-path=$CACHE_MOUNT"
MODEL_ENV="MODEL_CACHE_PATH=$CACHE_PATH,MODEL_NAME=$MODEL_NAME,GNOSIS_MODEL_REVISION=$MODEL_REVISION"
# One L4 with the most CPU and memory Cloud Run gives it (the model's weights pass through host memory on load).
GPU=(--gpu=1 --gpu-type=nvidia-l4 --cpu=8 --memory=32Gi)

# Create a service account when it is one of this project's (NAME@PROJECT.iam.gserviceaccount.com).
create_account() {
    local email=$1 title=$2
    if [[ $email == *"@$PROJECT_ID.iam.gserviceaccount.com" ]]; then
        run_create gcloud iam service-accounts create "${email%%@*}" --project="$PROJECT_ID" --display-name="$title"
    fi
}

cmd_bucket() {
    run_create gcloud storage buckets create "gs://$BUCKET" --project="$PROJECT_ID" --location="$REGION" \
        --uniform-bucket-level-access
    create_account "$SERVICE_ACCOUNT" "gnosis-ocr service and batch (reads the model cache)"
    create_account "$WARM_SERVICE_ACCOUNT" "gnosis-ocr cache warm job (writes the model cache)"
    run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" \
        --member="serviceAccount:$SERVICE_ACCOUNT" --role=roles/storage.objectViewer
    run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" \
        --member="serviceAccount:$WARM_SERVICE_ACCOUNT" --role=roles/storage.objectUser
    if [[ -n $API_KEY_SECRET ]]; then
        run gcloud secrets add-iam-policy-binding "$API_KEY_SECRET" --project="$PROJECT_ID" \
            --member="serviceAccount:$SERVICE_ACCOUNT" --role=roles/secretmanager.secretAccessor
    fi
    if [[ -n $HF_TOKEN_SECRET ]]; then
        run gcloud secrets add-iam-policy-binding "$HF_TOKEN_SECRET" --project="$PROJECT_ID" \
            --member="serviceAccount:$WARM_SERVICE_ACCOUNT" --role=roles/secretmanager.secretAccessor
    fi
}

cmd_warm_job() {
    local extra=()
    if [[ -n $HF_TOKEN_SECRET ]]; then
        extra+=(--set-secrets="HF_TOKEN=$HF_TOKEN_SECRET:latest")
    fi
    # No GPU: downloading is network and disk. Two files at a time bounds what the mount stages in memory.
    # GNOSIS_CACHE_BUCKET: the bucket folder behind the cache root, so the download lease is taken through the
    # bucket's conditional writes (every task has its own gcsfuse mount: a lease file would not stop the others).
    run gcloud run jobs deploy "$WARM_JOB" "${SCOPE[@]}" \
        --image="$IMAGE" \
        --service-account="$WARM_SERVICE_ACCOUNT" \
        --args=cache,warm \
        --tasks=1 --max-retries=2 --task-timeout=3600s \
        --cpu=4 --memory=16Gi \
        --add-volume="$WRITABLE_VOLUME" \
        --add-volume-mount="$VOLUME_MOUNT" \
        --set-env-vars="$MODEL_ENV,GNOSIS_CACHE_DOWNLOAD_WORKERS=2,GNOSIS_CACHE_BUCKET=gs://$BUCKET/${CACHE_PATH#"$CACHE_MOUNT"/}" \
        ${extra[@]+"${extra[@]}"}
    run gcloud run jobs execute "$WARM_JOB" "${SCOPE[@]}" --wait
}

# The front service's access and revision flags, appended to the caller's `extra`: PUBLIC decides whether anyone may
# call it, REVISION_TAG deploys a tagged revision that takes no traffic.
front_access_args() {
    if [[ $PUBLIC == 1 ]]; then
        extra+=(--allow-unauthenticated)
    else
        extra+=(--no-allow-unauthenticated)
    fi
    if [[ -n $REVISION_TAG ]]; then
        extra+=(--tag="$REVISION_TAG" --no-traffic)
    fi
}

cmd_deploy() {
    local env="$MODEL_ENV,GNOSIS_CACHE_MODE=offline,GNOSIS_ENGINE=nanonets"
    local extra=()
    if [[ -n $JOBS_STORAGE ]]; then
        env+=",GNOSIS_STORAGE=$JOBS_STORAGE"
    elif [[ $MAX_INSTANCES -gt 1 ]]; then
        note "warning: MAX_INSTANCES=$MAX_INSTANCES with job state on each instance's own disk: a job's status" \
            "may be asked of an instance that does not have it. Set JOBS_STORAGE=gs://A-JOBS-BUCKET/jobs to share it."
    fi
    if [[ -n $API_KEY_SECRET ]]; then
        extra+=(--set-secrets="GNOSIS_API_KEY=$API_KEY_SECRET:latest")
    fi
    front_access_args
    # Startup probe on /readyz: a revision whose cache is not complete never takes traffic (offline mode refuses
    # to download). 24 x 10 s = 4 minutes for the cache check and the load.
    run gcloud run deploy "$SERVICE" "${SCOPE[@]}" \
        --image="$IMAGE" \
        --service-account="$SERVICE_ACCOUNT" \
        "${GPU[@]}" --no-gpu-zonal-redundancy \
        --no-cpu-throttling \
        --execution-environment=gen2 \
        --concurrency="$CONCURRENCY" \
        --timeout=3600 \
        --min-instances="$MIN_INSTANCES" \
        --max-instances="$MAX_INSTANCES" \
        --port=8080 \
        --add-volume="$READONLY_VOLUME" \
        --add-volume-mount="$VOLUME_MOUNT" \
        --set-env-vars="$env" \
        --startup-probe=httpGet.path=/readyz,periodSeconds=10,timeoutSeconds=5,failureThreshold=24 \
        --liveness-probe=httpGet.path=/healthz,periodSeconds=30,timeoutSeconds=5,failureThreshold=3 \
        ${extra[@]+"${extra[@]}"}
    run gcloud run services describe "$SERVICE" "${SCOPE[@]}" --format='value(status.url)'
}

cmd_batch_job() {
    local wait=()
    if [[ $BATCH_WAIT == 1 ]]; then
        wait=(--wait)
    fi
    # Each task takes its shard from CLOUD_RUN_TASK_INDEX / CLOUD_RUN_TASK_COUNT, skips documents already done
    # and writes results next to them, so a re-execution resumes. GPU jobs are billed without zonal redundancy;
    # gcloud releases before mid-2025 have the GPU flags for jobs only in `gcloud beta run jobs deploy`.
    run gcloud run jobs deploy "$BATCH_JOB" "${SCOPE[@]}" \
        --image="$IMAGE" \
        --service-account="$SERVICE_ACCOUNT" \
        "${GPU[@]}" \
        --tasks="$BATCH_TASKS" --parallelism="$BATCH_PARALLELISM" \
        --max-retries=3 --task-timeout="$BATCH_TASK_TIMEOUT" \
        --args="batch,$BATCH_SRC,$BATCH_DST" \
        --add-volume="$READONLY_VOLUME" \
        --add-volume-mount="$VOLUME_MOUNT" \
        --set-env-vars="$MODEL_ENV,GNOSIS_CACHE_MODE=offline,GNOSIS_ENGINE=nanonets"
    run gcloud run jobs execute "$BATCH_JOB" "${SCOPE[@]}" ${wait[@]+"${wait[@]}"}
}

# The pool's container command. vLLM's image runs `vllm serve`; this small shell command runs first, on the
# read-only mount: it turns the revision into the commit the cache's refs name (the warm job or `cache push` wrote
# them), refuses a commit without its ready-manifest (written last: a half-filled bucket is never served), and
# starts vLLM on that snapshot folder, offline, under the repository id (what GNOSIS_VLM_SERVED_MODEL expects).
# vLLM does not hash the weights as it reads them: `gnosis-ocr cache verify` checks the bucket's bytes.
# No '~' in it: gcloud's list escaping (`gcloud topic escaping`) takes it as the delimiter of --args.
# shellcheck disable=SC2016 # expanded by the container's shell, not here
VLLM_ENTRY='set -eu; dir=$VLLM_MODEL_DIR; rev=$GNOSIS_MODEL_REVISION; if [ -f "$dir/refs/$rev" ]; then rev=$(cat "$dir/refs/$rev"); fi; if [ ! -f "$dir/.gnosis/manifests/$rev.json" ]; then echo "vllm-entry: $MODEL_NAME revision $GNOSIS_MODEL_REVISION is not complete in $dir (no ready-manifest for $rev); fill the cache first: deploy/cloudrun.sh warm-job" >&2; exit 1; fi; echo "vllm-entry: serving $dir/snapshots/$rev as $MODEL_NAME" >&2; exec vllm serve "$dir/snapshots/$rev" --served-model-name "$MODEL_NAME" --host 0.0.0.0 --port "$PORT" "$@"'

# models--org--name: the hub cache's folder for MODEL_NAME (modelcache/layout.py owns the same arithmetic)
model_dir() {
    printf '%s/hub/models--%s' "$CACHE_PATH" "${MODEL_NAME//\//--}"
}

cmd_vllm() {
    local pool_env front_env secrets args url
    run gcloud secrets add-iam-policy-binding "$VLLM_API_KEY_SECRET" --project="$PROJECT_ID" \
        --member="serviceAccount:$SERVICE_ACCOUNT" --role=roles/secretmanager.secretAccessor
    # The front reaches the internal-only pool through the VPC (all its traffic: a run.app address is public), and
    # the bucket and Secret Manager through Private Google Access on that subnet.
    run gcloud compute networks subnets update "$VPC_SUBNET" "${SCOPE[@]}" --enable-private-ip-google-access

    # The pool: vLLM's own OpenAI-compatible server. The hub offline: it loads the snapshot folder and nothing else.
    # Cloud Run concurrency = max-num-seqs: an instance takes as many pages as it decodes together; more start
    # another instance (up to VLLM_MAX_INSTANCES), then wait in Cloud Run's queue or get 429, which the front's
    # remote engine retries with backoff. Ingress internal plus vLLM's API key: no IAM token is needed, and the
    # key (VLLM_API_KEY, read by vLLM itself) keeps other workloads in the VPC out.
    pool_env="MODEL_CACHE_PATH=$CACHE_PATH,MODEL_NAME=$MODEL_NAME,GNOSIS_MODEL_REVISION=$MODEL_REVISION"
    pool_env+=",VLLM_MODEL_DIR=$(model_dir),HF_HUB_OFFLINE=1,TRANSFORMERS_OFFLINE=1,HF_HUB_DISABLE_TELEMETRY=1"
    pool_env+=",VLLM_NO_USAGE_STATS=1,DO_NOT_TRACK=1"
    args="^~^-c~$VLLM_ENTRY~vllm-entry~--max-num-seqs=$VLLM_MAX_NUM_SEQS~--max-model-len=$VLLM_MAX_MODEL_LEN"
    args+='~--limit-mm-per-prompt={"image": 1, "video": 0}~--gpu-memory-utilization=0.90'
    run gcloud run deploy "$VLLM_SERVICE" "${SCOPE[@]}" \
        --image="$VLLM_IMAGE" \
        --service-account="$SERVICE_ACCOUNT" \
        "${GPU[@]}" --no-gpu-zonal-redundancy \
        --no-cpu-throttling \
        --execution-environment=gen2 \
        --ingress=internal \
        --allow-unauthenticated \
        --concurrency="$VLLM_MAX_NUM_SEQS" \
        --timeout=3600 \
        --min-instances="$VLLM_MIN_INSTANCES" \
        --max-instances="$VLLM_MAX_INSTANCES" \
        --port=8000 \
        --add-volume="$READONLY_VOLUME" \
        --add-volume-mount="$VOLUME_MOUNT" \
        --set-env-vars="$pool_env" \
        --set-secrets="VLLM_API_KEY=$VLLM_API_KEY_SECRET:latest" \
        --command=sh \
        --args="$args" \
        --startup-probe=httpGet.path=/health,periodSeconds=10,timeoutSeconds=5,failureThreshold=60 \
        --liveness-probe=httpGet.path=/health,periodSeconds=30,timeoutSeconds=5,failureThreshold=3

    url=$VLLM_URL
    if [[ -z $url ]]; then
        if [[ $DRY_RUN == 1 ]]; then
            show gcloud run services describe "$VLLM_SERVICE" "${SCOPE[@]}" --format='value(status.url)'
            url="https://$VLLM_SERVICE-PROJECT_NUMBER.$REGION.run.app"  # what the describe answers, in the plan
        else
            printf '+ %s\n' "$(show gcloud run services describe "$VLLM_SERVICE" "${SCOPE[@]}" --format='value(status.url)')" >&2
            url=$(gcloud run services describe "$VLLM_SERVICE" "${SCOPE[@]}" --format='value(status.url)')
            [[ $url =~ ^https?://[^/@]+$ ]] || die "could not read the URL of $VLLM_SERVICE ('$url'); set VLLM_URL"
        fi
    fi

    # The front: no GPU, no model cache (the pool has the model); offline, so it never downloads one. It may keep
    # the whole pool busy (instances x max-num-seqs pages in flight). Its start waits for the pool (a cold L4 and
    # the model load take minutes), so its startup probe allows 10 minutes.
    front_env="MODEL_NAME=$MODEL_NAME,GNOSIS_CACHE_MODE=offline,GNOSIS_ENGINE=remote,GNOSIS_VLM_URL=$url/v1"
    front_env+=",GNOSIS_VLM_CONCURRENCY=$((VLLM_MAX_INSTANCES * VLLM_MAX_NUM_SEQS)),GNOSIS_VLM_STARTUP_WAIT_SECONDS=540"
    secrets="GNOSIS_VLM_API_KEY=$VLLM_API_KEY_SECRET:latest"
    local extra=()
    if [[ -n $JOBS_STORAGE ]]; then
        front_env+=",GNOSIS_STORAGE=$JOBS_STORAGE"
    elif [[ $MAX_INSTANCES -gt 1 ]]; then
        note "warning: MAX_INSTANCES=$MAX_INSTANCES with job state on each instance's own disk: a job's status" \
            "may be asked of an instance that does not have it. Set JOBS_STORAGE=gs://A-JOBS-BUCKET/jobs to share it."
    fi
    if [[ -n $API_KEY_SECRET ]]; then
        secrets+=",GNOSIS_API_KEY=$API_KEY_SECRET:latest"
    fi
    front_access_args
    run gcloud run deploy "$SERVICE" "${SCOPE[@]}" \
        --image="$FRONT_IMAGE" \
        --service-account="$SERVICE_ACCOUNT" \
        --cpu=4 --memory=8Gi \
        --no-cpu-throttling \
        --execution-environment=gen2 \
        --network="$VPC_NETWORK" --subnet="$VPC_SUBNET" --vpc-egress=all-traffic \
        --concurrency="$CONCURRENCY" \
        --timeout=3600 \
        --min-instances="$MIN_INSTANCES" \
        --max-instances="$MAX_INSTANCES" \
        --port=8080 \
        --set-env-vars="$front_env" \
        --set-secrets="$secrets" \
        --startup-probe=httpGet.path=/readyz,periodSeconds=10,timeoutSeconds=5,failureThreshold=60 \
        --liveness-probe=httpGet.path=/healthz,periodSeconds=30,timeoutSeconds=5,failureThreshold=3 \
        ${extra[@]+"${extra[@]}"}
    run gcloud run services describe "$SERVICE" "${SCOPE[@]}" --format='value(status.url)'
}

case $COMMAND in
    bucket) cmd_bucket ;;
    warm-job) cmd_warm_job ;;
    deploy) cmd_deploy ;;
    batch-job) cmd_batch_job ;;
    vllm) cmd_vllm ;;
    all)
        cmd_bucket
        cmd_warm_job
        cmd_deploy
        if [[ -n $BATCH_SRC && -n $BATCH_DST ]]; then
            cmd_batch_job
        fi
        ;;
esac
