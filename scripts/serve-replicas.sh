#!/usr/bin/env bash
# One host, several GPUs: one Gunicorn replica per GPU on ports 8001, 8002, ... Put nginx
# (deploy/nginx-replicas.conf) in front, with one `server` line per replica. Set
# IMAGE_STORE=s3 and the S3_* settings so that image URLs work whichever replica made
# them. Ctrl-C or SIGTERM drains and stops every replica.
#
#   IMAGE_STORE=s3 S3_BUCKET=images bash scripts/serve-replicas.sh        # every GPU
#   REPLICAS=2 BASE_PORT=9001 bash scripts/serve-replicas.sh             # two, 9001-9002
#   REPLICAS=3 DEVICE=cpu MODEL_ID=tiny-random bash scripts/serve-replicas.sh  # a CPU demo
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${REPLICAS:-}" ]]; then
    REPLICAS=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
    [[ "$REPLICAS" -gt 0 ]] || { echo "no GPU found: set REPLICAS (and DEVICE=cpu)" >&2; exit 1; }
fi
BASE_PORT=${BASE_PORT:-8001}
HOST=${HOST:-127.0.0.1}
export TRUSTED_PROXIES=${TRUSTED_PROXIES:-1}
pids=()
stop() {
    # SIGTERM: each replica stops admitting (503, which nginx retries elsewhere) and
    # finishes its running and queued work.
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait
}
trap stop INT TERM
for ((i = 0; i < REPLICAS; i++)); do
    port=$((BASE_PORT + i))
    if [[ "${DEVICE:-}" == "cpu" ]]; then
        gpu_env=()
    else
        # One GPU per process: it sees GPU i only, as cuda:0.
        gpu_env=(CUDA_VISIBLE_DEVICES="$i" DEVICE=cuda:0)
    fi
    env "${gpu_env[@]}" GUNICORN_BIND="$HOST:$port" \
        .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app &
    pids+=($!)
    echo "replica $i: http://$HOST:$port (pid $!)"
done
wait
