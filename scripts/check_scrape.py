#!/usr/bin/env python3
"""What a real Prometheus scraped from a running `vaultgate dev` (scripts/check-ecosystem.sh).

    check_scrape.py PROMETHEUS_URL

Waits until Prometheus has scraped the gateway (job `vaultgate`, up == 1) and has seen its calls,
then checks, printing one line each and failing (exit 1) on the first that does not hold:
  - every vaultgate_* metric that deploy/prometheus/vaultgate.rules.yaml and
    deploy/grafana/vaultgate.json use is among the scraped metric names;
  - every alerting rule loaded and evaluates without error (health "ok");
  - every dashboard query runs (Grafana's variables replaced) without error;
  - no alert fires against the healthy dev gateway.
"""

import json
import pathlib
import re
import sys
import time
import urllib.parse
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "vaultgate.rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "vaultgate.json"
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$job": "vaultgate", "$instance": ".*"}


def api(base, path, **params):
    url = f"{base}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["data"]


def fail(what):
    print(f"FAIL  {what}")
    sys.exit(1)


def main():
    base = sys.argv[1].rstrip("/")
    queries = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    rule_exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    used = set()
    for e in queries + rule_exprs:
        used |= set(re.findall(r"\b(vaultgate_[a-z0-9_]+)", e))
    if not used or not queries:
        fail(f"no metric names found in {RULES.name} and {DASHBOARD.name}")

    # Scraped, with the gateway's calls in it (the checks run right after the calls were made).
    deadline = time.time() + 30
    names = set()
    while time.time() < deadline:
        try:
            up = api(base, "query", query='up{job="vaultgate"}')["result"]
            names = set(api(base, "label/__name__/values"))
            if up and up[0]["value"][1] == "1" and "vaultgate_grpc_calls_total" in names:
                break
        except (OSError, RuntimeError):
            pass
        time.sleep(0.5)
    else:
        fail(f"Prometheus did not scrape the gateway with its calls within 30 s (names: {len(names)})")
    ours = sorted(n for n in names if n.startswith("vaultgate_"))
    missing = sorted(used - set(names))
    if missing:
        fail(f"metrics used by the rules or the dashboard but not scraped: {missing}")
    print(f"ok    {len(used)} metrics used by the rules and the dashboard, all among the {len(ours)} vaultgate_* "
          f"metrics scraped: {' '.join(n.removeprefix('vaultgate_') for n in ours)}")

    # Rules: loaded and evaluated (two evaluation intervals), none failing.
    time.sleep(2.5)
    rules = [r for g in api(base, "rules")["groups"] for r in g["rules"]]
    alerts = [r for r in rules if r["type"] == "alerting"]
    broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r.get("health") != "ok"]
    if not alerts or broken:
        fail(f"alerting rules loaded {len(alerts)}, not healthy: {broken}")
    print(f"ok    {len(alerts)} alerting rules loaded and evaluated by Prometheus without error")

    # Dashboard queries run.
    empty = 0
    for q in queries:
        for k, v in VARIABLES.items():
            q = q.replace(k, v)
        try:
            result = api(base, "query", query=q)["result"]
        except (OSError, RuntimeError) as e:
            fail(f"dashboard query fails: {q}: {e}")
        empty += not result
    print(f"ok    {len(queries)} dashboard queries run ({len(queries) - empty} with data now; the rest count "
          f"events that a healthy dev gateway has none of, or need TLS)")

    firing = [a["labels"]["alertname"] for a in api(base, "alerts")["alerts"] if a["state"] == "firing"]
    if firing:
        fail(f"alerts firing against a healthy dev gateway: {firing}")
    print("ok    no alert fires against the healthy dev gateway")


if __name__ == "__main__":
    main()
