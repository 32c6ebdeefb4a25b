#!/usr/bin/env bash
# Alerting rules and the Grafana dashboard, checked with the real tools (no server needed):
#   1. promtool check rules deploy/prometheus/vaultgate.rules.yaml
#   2. promtool test rules deploy/prometheus/vaultgate.rules.test.yaml (one unit test per alert)
#   3. every alert has a unit test where it fires and one where it stays silent
#   4. deploy/kubernetes/base/prometheusrule.yaml is the rules file as a PrometheusRule, exactly
#      (`bash scripts/check-alerts.sh --write` regenerates it)
#   5. every query of deploy/grafana/vaultgate.json parses as PromQL (promtool, Grafana's
#      variables replaced); scripts/check-ecosystem.sh then runs them on a real Prometheus
# Prints one line per check and `alerts: N passed, M failed`; exits 1 on a failure.
# Needs promtool (Debian's prometheus package; scripts/tools.sh installs it) and .tools/venv.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RULES="$ROOT/deploy/prometheus/vaultgate.rules.yaml"
TESTS="$ROOT/deploy/prometheus/vaultgate.rules.test.yaml"
CR="$ROOT/deploy/kubernetes/base/prometheusrule.yaml"
DASHBOARD="$ROOT/deploy/grafana/vaultgate.json"
PY="$ROOT/.tools/venv/bin/python3"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vaultgate-alerts.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
passed=0 failed=0

# The PrometheusRule: a header, then the rules file's groups under `spec:`.
prometheusrule() {
    cat <<'HEAD'
# Generated from deploy/prometheus/vaultgate.rules.yaml by `bash scripts/check-alerts.sh --write`;
# make test fails when they differ. Prometheus Operator (monitoring.coreos.com/v1 CRD): remove it
# from kustomization.yaml where the operator is not installed; kube-prometheus-stack selects rules
# by its release label by default (add it in an overlay if yours does).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: vaultgate
  labels:
    app.kubernetes.io/name: vaultgate
spec:
HEAD
    sed -n '/^groups:/,$p' "$RULES" | sed 's/^/  /'
}
if [[ "${1:-}" == "--write" ]]; then
    prometheusrule >"$CR"
    echo "wrote $CR"
    exit 0
fi

ok() { printf 'ok    %s\n' "$1"; passed=$((passed + 1)); }
bad() { printf 'FAIL  %s\n' "$1"; [[ -s "${2:-}" ]] && sed 's/^/        /' "$2" | tail -n 30; failed=$((failed + 1)); }
check() { # check NAME CMD...
    local name="$1"
    shift
    if "$@" >"$WORK/out" 2>&1; then ok "$name"; else bad "$name" "$WORK/out"; fi
}

command -v promtool >/dev/null || { echo "check-alerts: promtool missing (bash scripts/tools.sh installs Debian's prometheus)" >&2; exit 2; }
[[ -x "$PY" ]] || { echo "check-alerts: $PY missing (bash scripts/tools.sh)" >&2; exit 2; }

check "promtool check rules ($(grep -c '^ *- alert:' "$RULES") alerts)" promtool check rules "$RULES"
check "promtool test rules (one firing and one silent case per alert)" promtool test rules "$TESTS"

# 3. Every alert has a case where it fires and one where it stays silent. promtool demands that
#    the alerts firing at each eval_time are exactly exp_alerts, so a passing run with a
#    non-empty exp_alerts for an alert proves that it fires, and an empty one that it can stay quiet.
coverage() {
    "$PY" - "$RULES" "$TESTS" <<'PYEOF'
import sys, yaml
rules, tests = (yaml.safe_load(open(p)) for p in sys.argv[1:])
alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
cases = [c for t in tests["tests"] for c in t.get("alert_rule_test", [])]
missing = []
for a in alerts:
    fires = sum(1 for c in cases if c["alertname"] == a and c.get("exp_alerts"))
    silent = sum(1 for c in cases if c["alertname"] == a and not c.get("exp_alerts"))
    print(f"{a}: fires in {fires} case(s), silent in {silent}")
    if not fires or not silent:
        missing.append(a)
unknown = sorted({c["alertname"] for c in cases} - set(alerts))
if missing or unknown:
    sys.exit(f"without a firing and a silent case: {missing}; tests of unknown alerts: {unknown}")
PYEOF
}
check "every alert has a firing and a silent unit test" coverage

# 4. The PrometheusRule is the rules file.
prometheusrule >"$WORK/prometheusrule.yaml"
check "deploy/kubernetes/base/prometheusrule.yaml = the rules file (else: bash scripts/check-alerts.sh --write)" \
    diff -u "$CR" "$WORK/prometheusrule.yaml"

# 5. Dashboard queries parse: each becomes a recording rule for promtool.
dashboard_rules() {
    "$PY" - "$DASHBOARD" "$WORK/dashboard.rules.yaml" <<'PYEOF'
import json, sys, yaml
dash = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
assert exprs, "no queries in the dashboard"
sub = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": "vaultgate", "$instance": ".*"}
rules = []
for i, e in enumerate(exprs):
    for k, v in sub.items():
        e = e.replace(k, v)
    assert "$" not in e, f"unknown Grafana variable in {e}"
    rules.append({"record": f"dashboard:query_{i}", "expr": e})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(exprs)} queries")
PYEOF
    promtool check rules "$WORK/dashboard.rules.yaml"
}
check "every query of deploy/grafana/vaultgate.json parses" dashboard_rules

echo "alerts: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
