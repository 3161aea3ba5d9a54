#!/usr/bin/env bash
# Runs one sentdm-batch campaign from cron: never two at once, everything in a timestamped log, and an alert for every
# outcome that needs a person. Running it again is always safe: the tool resumes and never resends a row the server
# acknowledged.
#
# usage: run-campaign.sh [SPEC]            SPEC defaults to configs/campaign.yaml, relative to the project folder
#
# Settings (environment; cron starts jobs with almost none, so the defaults do not rely on PATH or a profile):
#   SENTDM_PROJECT_DIR  the sentdm-batch checkout        (default: two folders above this script)
#   SENTDM_PYTHON       a Python that has sentdm-batch   (default: PROJECT/.venv/bin/python, else python3)
#   SENTDM_LOG_DIR      log, lock and last summary       (default: PROJECT/out/logs)
#   SENTDM_ENV_FILE     a file of VAR=value lines to load first, e.g. SENT_DM_API_KEY and SENT_DM_SENDER_ID; keep
#                       it readable by the cron user only, so the key is never on a command line or in the crontab
set -euo pipefail

project=${SENTDM_PROJECT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
cd "$project"
spec=${1:-configs/campaign.yaml}
if [[ -n ${SENTDM_PYTHON:-} ]]; then
    python=$SENTDM_PYTHON
elif [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
else
    python=python3
fi
log_dir=${SENTDM_LOG_DIR:-$project/out/logs}
mkdir -p "$log_dir"

# one log, lock and summary per spec file: the spec is what cron runs, and it names the campaign
campaign=$(basename "$spec")
campaign=${campaign%.*}
log_file=$log_dir/$campaign.log
summary=$log_dir/$campaign.summary.json

log() {
    printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$log_file"
}

# Replace the body to send alerts somewhere people look; keep the log line. For example:
#   mail -s "sentdm-batch $campaign: $1" ops@example.com <<<"$2"
#   curl -fsS -m 10 -H 'Content-Type: application/json' -d "$(jq -n --arg t "[$1] $campaign: $2" '{text: $t}')" \
#       "$SLACK_WEBHOOK_URL" || log "could not send the alert to Slack"
# LEVEL is one of: warn (look today), error (look soon; the next run may fix it), page (act now: it will not fix
# itself). Anything the function prints goes to cron, which mails it to MAILTO if that is set.
alert() {
    log "ALERT $1: $2"
}

# Cron starts a run on time whether or not the last one has finished. Rather than stack up a queue of them, a run
# that finds the previous one still going stops here; the next run after it picks up whatever is left. (The tool also
# refuses a second run of the same campaign, with exit 2, but that would page; this lock keeps an overlap quiet.)
exec 9>"$log_dir/$campaign.lock"
if ! flock -n 9; then
    log "previous run of $spec still going; skipping this one"
    exit 0
fi

if [[ -n ${SENTDM_ENV_FILE:-} ]]; then
    set -a # export every variable the file sets, for the tool's ${VAR} in the spec
    # shellcheck source=/dev/null
    . "$SENTDM_ENV_FILE"
    set +a
fi

# what this run's summary says, for the alert text: "4 of 50 rows not sent (invalid 4); results: out/results.csv"
not_sent() {
    "$python" - "$summary" <<'EOF' 2>/dev/null || echo "no summary written"
import json
import sys

s = json.load(open(sys.argv[1], encoding="utf-8"))
missing = {k: n for k, n in s["counts"].items() if k not in ("sent", "duplicate") and n}
detail = ", ".join(f"{k} {n}" for k, n in missing.items())
why = f"; aborted: {s['aborted_reason']}" if s.get("aborted_reason") else ""
print(f"{sum(missing.values())} of {s['rows']} rows not sent ({detail}){why}; results: {s['results_path']}")
EOF
}

log "start: $python -m pipeline run $spec (in $project)"
rm -f "$summary" # a summary left by an earlier run must not be reported as this one's
set +e           # the exit code is the result here, not a reason to stop
"$python" -m pipeline run "$spec" --quiet --summary-json "$summary" 2>&1 | while IFS= read -r line; do
    log "  $line"
done
code=${PIPESTATUS[0]}
set -e
log "end: exit $code"

case $code in
0) log "ok: every row sent" ;;
1) alert warn "finished, but $(not_sent). Invalid rows: fix the input; failed rows: $python -m pipeline retry $spec" ;;
2) alert page "spec or input error, or the campaign is running elsewhere (exit 2): nothing was sent; see $log_file" ;;
3) alert error "aborted (exit 3: authentication failed, service down or disk full): $(not_sent); the next run resumes" ;;
130 | 143) alert warn "interrupted (exit $code): $(not_sent); the next run resumes where this one stopped" ;;
*) alert page "unexpected exit $code - a bug in sentdm-batch or a broken install; see $log_file" ;;
esac
exit "$code"
