#!/usr/bin/env python3
"""Validates rendered deploy/ manifests (the output of `kubectl kustomize`).

1. Every document against the Kubernetes OpenAPI schemas of each --k8s version, strict (unknown
   fields are errors), with kubernetes-validate's offline schemas. ServiceMonitor and PrometheusRule
   are CRDs that package has no schema for: they are checked against deploy/test/*.schema.json.
2. What schemas cannot see: selectors that select nothing, references to ConfigMaps that are not
   rendered, the restricted pod-security settings of every pod, probes and the shutdown budget,
   NetworkPolicy ports, that vaultgate.toml passes `vaultgate check-config` and names mounted paths, and that openbao.hcl's paths are mounted and its retry_join names the StatefulSet's pods.
3. What issue 16 asks of the shipped deploy: TLS on the gRPC port (the files of a cert-manager
   Certificate's Secret, naming every Service; cert-manager kinds against
   deploy/test/certmanager.schema.json), probes on the plaintext health port, no session affinity,
   connections aged out, a headless Service for client-side balancing, and a NetworkPolicy that
   lets only the gateway (and OpenBao's own pods) reach OpenBao.

usage: validate.py --vaultgate target/debug/vaultgate --k8s 1.30.0 --k8s 1.37.0 RENDER.yaml...
Prints one `pass …` / `fail …` line per check; exits 1 if any failed.
"""
import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
DRAIN_SECONDS = 20  # the gateway's drain budget the Deployment's grace period must cover
failed = 0


def report(ok: bool, what: str, why: str = "") -> None:
    global failed
    failed += not ok
    print(f"{'pass' if ok else 'fail'} {what}{'' if ok else ': ' + why}")


def name_of(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


# ---------------------------------------------------------------------------------------------
# 1. schemas
# ---------------------------------------------------------------------------------------------
# Prometheus Operator CRDs, checked against our own strict schemas.
CRD_SCHEMAS = {"ServiceMonitor": "servicemonitor.schema.json", "PrometheusRule": "prometheusrule.schema.json",
               "Certificate": "certmanager.schema.json", "Issuer": "certmanager.schema.json",
               "ClusterIssuer": "certmanager.schema.json"}


def schema_error(doc: dict, versions: list[str]) -> str:
    """Why `doc` fails its schema, or "" when it passes."""
    try:
        if doc["kind"] in CRD_SCHEMAS:
            schema = json.loads((HERE / CRD_SCHEMAS[doc["kind"]]).read_text())
            jsonschema.Draft202012Validator(schema).validate(doc)
        else:
            for v in versions:
                kubernetes_validate.validate(doc, v, strict=True)
        return ""
    except jsonschema.ValidationError as e:
        return f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return e.message


def check_schemas(docs: list[dict], versions: list[str], label: str) -> None:
    """One line per render: every document, strict, against every version (CRDs: our schema)."""
    errors = [f"{name_of(d)}: {why}" for d in docs if (why := schema_error(d, versions))]
    crds = [d for d in docs if d["kind"] in CRD_SCHEMAS]
    what = f"{label}: {len(docs) - len(crds)} documents match the Kubernetes {', '.join(versions)} schemas (strict)"
    for d in crds:
        what += f"; {name_of(d)} matches deploy/test/{CRD_SCHEMAS[d['kind']]}"
    report(not errors, what, "; ".join(errors))


# ---------------------------------------------------------------------------------------------
# 2. cross-document checks
# ---------------------------------------------------------------------------------------------
def pod_template(doc: dict) -> dict | None:
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return None


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_pods(docs: list[dict], label: str) -> None:
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for doc in docs:
        tpl = pod_template(doc)
        if tpl is None:
            continue
        spec, who = tpl["spec"], f"{label}: {name_of(doc)}"
        pod_sc = spec.get("securityContext", {})
        problems = []
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append("pod seccompProfile is not RuntimeDefault")
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                problems.append(f"{c['name']}: runAsNonRoot unset")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{c['name']}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{c['name']}: readOnlyRootFilesystem is not true")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{c['name']}: capabilities do not drop ALL")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(part, {}):
                        problems.append(f"{c['name']}: no {part}.{r}")
            image = c["image"]
            if ":" not in image.rsplit("/", 1)[-1] and "@" not in image or image.endswith(":latest"):
                problems.append(f"{c['name']}: image {image} has no pinned tag")
        report(not problems, f"{who} is restricted, bounded and pinned", "; ".join(problems))

        missing = []
        for v in spec.get("volumes", []):
            refs = [v["configMap"]["name"]] if "configMap" in v else []
            refs += [s["configMap"]["name"] for s in v.get("projected", {}).get("sources", []) if "configMap" in s]
            # kube-root-ca.crt: the API server's CA, which Kubernetes publishes in every namespace.
            missing += [r for r in refs if r not in config_maps and r != "kube-root-ca.crt"]
        report(not missing, f"{who} mounts only rendered ConfigMaps", f"missing {missing}")


def check_selectors(docs: list[dict], label: str) -> None:
    pods = [(d, pod_template(d)["metadata"].get("labels", {})) for d in docs if pod_template(d) is not None]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for doc in docs:
        kind, spec = doc["kind"], doc.get("spec", {})
        if kind == "Service":
            sel = spec.get("selector", {})
        elif kind in ("PodDisruptionBudget",):
            sel = spec["selector"].get("matchLabels", {})
        elif kind == "NetworkPolicy":
            sel = spec["podSelector"].get("matchLabels", {})
        elif kind == "HorizontalPodAutoscaler":
            ref = spec["scaleTargetRef"]
            ok = any(d["kind"] == ref["kind"] and d["metadata"]["name"] == ref["name"] for d in docs)
            report(ok, f"{label}: {name_of(doc)} targets a rendered {ref['kind']}", f"no {ref['kind']}/{ref['name']}")
            continue
        elif kind == "ServiceMonitor":
            sel = spec["selector"].get("matchLabels", {})
            hits = [s for s in services.values() if matches(sel, s["metadata"].get("labels", {}))]
            ports = {p["name"] for s in hits for p in s["spec"]["ports"]}
            want = {e["port"] for e in spec["endpoints"]}
            report(bool(hits) and want <= ports, f"{label}: {name_of(doc)} selects a Service with port(s) {sorted(want)}",
                   f"services {[s['metadata']['name'] for s in hits]}, ports {sorted(ports)}")
            continue
        elif kind == "StatefulSet":
            ok = spec["serviceName"] in services and services[spec["serviceName"]]["spec"].get("clusterIP") == "None"
            report(ok, f"{label}: {name_of(doc)} has its headless Service {spec['serviceName']}", "missing or not headless")
            continue
        else:
            continue
        hits = [d for d, labels in pods if matches(sel, labels)]
        report(bool(hits), f"{label}: {name_of(doc)} selects pods ({', '.join(name_of(h) for h in hits) or 'none'})",
               f"selector {sel} matches no pod template")
        if kind == "Service":
            named = {p["name"] for h in hits for c in pod_template(h)["spec"]["containers"] for p in c.get("ports", [])}
            numbers = {p["containerPort"] for h in hits for c in pod_template(h)["spec"]["containers"] for p in c.get("ports", [])}
            bad = [p["targetPort"] for p in spec["ports"] if p["targetPort"] not in named | numbers]
            report(not bad, f"{label}: {name_of(doc)} targets declared container ports", f"unknown {bad}")


# ---------------------------------------------------------------------------------------------
# 3. vaultgate
# ---------------------------------------------------------------------------------------------
def check_config(text: str, vaultgate: pathlib.Path, files: dict) -> tuple[bool, str]:
    """Runs `vaultgate check-config` on the rendered vaultgate.toml. Files it names that exist only
    in the pod (mounted Secrets such as vault.ca_cert) are replaced by stand-ins first: that they are
    mounted is checked separately."""
    if not vaultgate.is_file():
        return False, f"{vaultgate} missing (cargo build --bin vaultgate)"
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            if f'"{path}"' in text:
                stand_in = pathlib.Path(tmp) / pathlib.PurePosixPath(path).name
                stand_in.write_text("stand-in for the file mounted in the pod\n")
                text = text.replace(f'"{path}"', f'"{stand_in}"')
        config = pathlib.Path(tmp) / "vaultgate.toml"
        config.write_text(text)
        run = subprocess.run([str(vaultgate), "check-config", str(config)], capture_output=True, text=True, timeout=60)
        return run.returncode == 0, (run.stdout + run.stderr).replace(str(config), "vaultgate.toml").strip()


def check_vaultgate(docs: list[dict], label: str, vaultgate: pathlib.Path) -> None:
    deploy = next((d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "vaultgate"), None)
    if deploy is None:
        return
    spec = deploy["spec"]["template"]["spec"]
    c = spec["containers"][0]
    who = f"{label}: Deployment/vaultgate"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    report(ports == {"grpc": 50051, "metrics": 9090, "health": 50052},
           f"{who} declares grpc 50051, metrics 9090 and health 50052", str(ports))

    # The gRPC port speaks TLS, which the kubelet's gRPC probes cannot: they ask the plaintext
    # health port (health_listen), which serves grpc.health.v1 alone.
    ready = c.get("readinessProbe", {}).get("grpc", {})
    report(ready.get("port") == 50052 and ready.get("service", "") == "",
           f"{who} readiness is native gRPC health on the health port 50052, service \"\"", str(c.get("readinessProbe")))
    live = c.get("livenessProbe", {})
    follows_vault = "grpc" in live and live["grpc"].get("service", "") == ""
    report(bool(live) and not follows_vault,
           f"{who} liveness does not follow Vault (not grpc service \"\")", str(live))
    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    report(pre >= 3 and grace >= pre + DRAIN_SECONDS,
           f"{who} grace {grace}s covers preStop {pre}s + drain {DRAIN_SECONDS}s", "too short")

    hpa = next((d for d in docs if d["kind"] == "HorizontalPodAutoscaler"), None)
    if hpa:
        h = hpa["spec"]
        report(deploy["spec"]["replicas"] == h["minReplicas"] <= h["maxReplicas"],
               f"{label}: replicas {deploy['spec']['replicas']} = HPA min {h['minReplicas']} <= max {h['maxReplicas']}",
               "inconsistent")

    for np in (d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "vaultgate"):
        ingress = sorted(str(p["port"]) for r in np["spec"].get("ingress", []) for p in r.get("ports", []))
        egress = sorted({str(p["port"]) for r in np["spec"].get("egress", []) for p in r.get("ports", [])})
        every_rule_has_peers = all(r.get("from") for r in np["spec"].get("ingress", [])) and all(
            r.get("to") for r in np["spec"].get("egress", []))
        report(ingress == ["50051", "9090"] and egress == ["443", "53", "6443", "8200"] and every_rule_has_peers
               and set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"},
               f"{label}: {name_of(np)} admits only callers:50051, monitoring:9090; egress only 8200, DNS, the API server (JWKS)",
               f"ingress {ingress}, egress {egress}, peers on every rule: {every_rule_has_peers}")

    # The config file: where it is mounted and what it says.
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    files = {}
    for v in spec.get("volumes", []):
        if v["name"] not in mounts:
            continue
        base = mounts[v["name"]]
        for s in v.get("projected", {}).get("sources", []) + ([{"configMap": v["configMap"]}] if "configMap" in v else []):
            src = s.get("configMap") or s.get("secret")
            if src is None:  # a projected serviceAccountToken: checked below with roles.*.jwt_file
                continue
            for item in src.get("items", []):
                files[f"{base}/{item['path']}"] = ("ConfigMap" if "configMap" in s else "Secret", src["name"], item["key"])
    cm_name = files.get("/etc/vaultgate/vaultgate.toml", (None, None, None))[1]
    cm = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name), None)
    report(cm is not None, f"{who} mounts vaultgate.toml at /etc/vaultgate/vaultgate.toml (the image's --config)",
           f"mounted files: {sorted(files)}")
    if cm is None:
        return
    text = cm["data"]["vaultgate.toml"]
    try:
        conf = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        report(False, f"{label}: vaultgate.toml parses", str(e))
        return
    valid, why = check_config(text, vaultgate, files)
    report(valid, f"{label}: vaultgate.toml passes `vaultgate check-config`", why.replace("\n", "; "))
    listen = int(conf["listen"].rsplit(":", 1)[1])
    metrics = int(conf.get("metrics_listen", ":0").rsplit(":", 1)[1])
    report(listen == ports.get("grpc") and metrics == ports.get("metrics"),
           f"{label}: vaultgate.toml listens on the container ports", f"listen {listen}, metrics {metrics}")
    ca = conf["vault"].get("ca_cert")
    report(ca in files, f"{label}: vault.ca_cert {ca} is a mounted file ({files.get(ca, ('?',))[0]})", f"mounted: {sorted(files)}")
    # The gateway's own JWT (roles.<name>.jwt_file) must be a projected service-account token.
    tokens = {f"{mounts[v['name']]}/{src['serviceAccountToken']['path']}": src["serviceAccountToken"].get("audience")
              for v in spec.get("volumes", []) if v["name"] in mounts
              for src in v.get("projected", {}).get("sources", []) if "serviceAccountToken" in src}
    for name, role in conf.get("roles", {}).items():
        if "jwt_file" in role:
            report(tokens.get(role["jwt_file"]) == "vaultgate",
                   f"{label}: roles.{name}.jwt_file {role['jwt_file']} is the pod's projected token (audience vaultgate)",
                   f"projected tokens: {tokens}")
    # Callers' tokens are verified locally: every rule names an issuer whose JWKS files are mounted.
    issuers = conf.get("issuers", {})
    report(all(r.get("verify_with") in issuers for r in conf.get("callers", [])),
           f"{label}: every caller rule verifies its JWT locally (verify_with an [issuers] table)", "a rule without it")
    for name, iss in issuers.items():
        for key in ("jwks_ca_cert", "jwks_bearer_token_file"):
            if key in iss:
                path = iss[key]
                report(path in files or path in tokens, f"{label}: issuers.{name}.{key} {path} is a mounted file",
                       f"mounted: {sorted(files)} {sorted(tokens)}")
    leases = conf.get("leases")
    if leases:
        report(leases.get("role") in conf.get("roles", {}), f"{label}: leases.role {leases.get('role')} has a [roles] login",
               "missing [roles] table")
    callers = conf.get("callers", [])
    report(bool(callers) and all(("equals" in r) != ("prefix" in r) and r.get("role") for r in callers)
           and conf.get("log", {}).get("format") == "json",
           f"{label}: vaultgate.toml has {len(callers)} caller rule(s) and JSON logs", "bad rules or log format")
    check_transport(docs, label, conf, files, ports)


def check_transport(docs: list[dict], label: str, conf: dict, files: dict, ports: dict) -> None:
    """TLS on, probes on the health port, no affinity, connections aged out, client-side balancing."""
    tls = conf.get("tls", {})
    cert, key = files.get(tls.get("cert")), files.get(tls.get("key"))
    secrets = {f[1] for f in (cert, key) if f}
    report(bool(cert and key) and cert[0] == key[0] == "Secret" and len(secrets) == 1,
           f"{label}: [tls] is on; tls.cert and tls.key are files of one mounted Secret ({', '.join(secrets) or 'none'})",
           f"tls {tls}, mounted {sorted(files)}")
    health = int(conf.get("health_listen", ":0").rsplit(":", 1)[1])
    report(health == ports.get("health"), f"{label}: health_listen is the probes' port {ports.get('health')}",
           f"health_listen {conf.get('health_listen')}")
    age = conf.get("connections", {})
    report(age.get("max_age_ms", 300000) > 0 and age.get("max_age_grace_ms", 30000) > 0,
           f"{label}: connections are aged out (max_age_ms {age.get('max_age_ms', 300000)}, grace {age.get('max_age_grace_ms', 30000)})",
           str(age))
    services = [d for d in docs if d["kind"] == "Service" and d["spec"].get("selector", {}).get("app.kubernetes.io/name") == "vaultgate"]
    sticky = [name_of(s) for s in services if s["spec"].get("sessionAffinity", "None") != "None"]
    report(bool(services) and not sticky, f"{label}: no session affinity on the gateway's Services", f"sticky: {sticky}")
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    report(len(headless) == 1 and any(p["port"] == 50051 for p in headless[0]["spec"]["ports"]),
           f"{label}: a headless Service for client-side balancing (round_robin)", f"headless: {[name_of(s) for s in headless]}")
    certs = [d for d in docs if d["kind"] == "Certificate" and d["spec"]["secretName"] in secrets]
    if label.endswith("-base"):
        report(not certs, f"{label}: the base leaves the certificate to the overlays (Secret {', '.join(secrets)})", "")
        return
    want = {f"{s['metadata']['name']}.{s['metadata'].get('namespace', 'default')}.svc" for s in services}
    names = set(certs[0]["spec"].get("dnsNames", [])) if certs else set()
    report(len(certs) == 1 and want <= names,
           f"{label}: a cert-manager Certificate writes Secret {', '.join(secrets)} and names every Service ({', '.join(sorted(want))})",
           f"certificates {[name_of(c) for c in certs]}, dnsNames {sorted(names)}")


# ---------------------------------------------------------------------------------------------
# 4. OpenBao
# ---------------------------------------------------------------------------------------------
def check_openbao(docs: list[dict], label: str) -> None:
    sts = next((d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "openbao"), None)
    if sts is None:
        return
    spec = sts["spec"]["template"]["spec"]
    c = spec["containers"][0]
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    cm_vol = next(v for v in spec["volumes"] if "configMap" in v and v["name"] == "config")
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_vol["configMap"]["name"])
    # Every -config file (openbao.hcl shared by all topologies, storage.hcl per topology), as one.
    config_args = [a[len("-config="):] for a in c["command"] if a.startswith("-config=")]
    hcl_names = [pathlib.PurePosixPath(a).name for a in config_args]
    report(bool(config_args) and all(n in cm["data"] for n in hcl_names)
           and all(any(a.startswith(m + "/") for m in mounts) for a in config_args),
           f"{label}: StatefulSet/openbao runs the mounted {' '.join(config_args)}", "not mounted")
    hcl_name = " + ".join(hcl_names)
    hcl = "\n".join(cm["data"].get(n, "") for n in hcl_names)
    paths = set(re.findall(r'"(/openbao/[^"]+)"', hcl))
    unmounted = sorted(p for p in paths if not any(p == m or p.startswith(m + "/") for m in mounts))
    report(not unmounted, f"{label}: every path in {hcl_name} is on a mounted volume ({len(paths)} paths)",
           f"unmounted {unmounted}")
    leaders = re.findall(r'leader_api_addr\s*=\s*"([^"]+)"', hcl)
    svc, ns, n = sts["spec"]["serviceName"], sts["metadata"].get("namespace", "default"), sts["spec"]["replicas"]
    env = {e["name"] for e in c.get("env", [])}
    if "evaluation" in label:
        # One node, unsealed by hand: nothing to join, no seal stanza, no seal token.
        report(n == 1 and not leaders and not re.search(r'^seal\s', hcl, re.M) and "BAO_TOKEN" not in env,
               f"{label}: OpenBao is one node with Shamir unsealing (no retry_join, no seal stanza, no seal token)",
               f"replicas {n}, retry_join {leaders}, BAO_TOKEN set: {'BAO_TOKEN' in env}")
        stanzas = ('storage "raft"', 'audit "file"', 'listener "tcp"')
    else:
        want = [f"https://openbao-{i}.{svc}.{ns}.svc:8200" for i in range(n)]
        report(leaders == want, f"{label}: retry_join names the {n} StatefulSet pods", f"{leaders} != {want}")
        report({"BAO_TOKEN"} <= env, f"{label}: StatefulSet/openbao has the seal token", f"env {sorted(env)}")
        stanzas = ('storage "raft"', 'seal "transit"', 'audit "file"', 'listener "tcp"')
    for stanza in stanzas:
        report(stanza in hcl, f"{label}: {hcl_name} has {stanza}", "missing")
    report({"BAO_API_ADDR", "BAO_CLUSTER_ADDR", "BAO_RAFT_NODE_ID"} <= env,
           f"{label}: StatefulSet/openbao sets per-pod addresses and node id", f"env {sorted(env)}")
    headless = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == svc)
    report(headless["spec"].get("publishNotReadyAddresses") is True,
           f"{label}: Service/{svc} publishes unready pods (joining happens before ready)", "publishNotReadyAddresses unset")
    np = next((d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "openbao"), None)
    peers = []
    for rule in (np or {}).get("spec", {}).get("ingress", []):
        for peer in rule.get("from", []):
            ns = peer.get("namespaceSelector", {}).get("matchLabels", {})
            pod = peer.get("podSelector", {}).get("matchLabels", {})
            peers.append((ns.get("kubernetes.io/metadata.name") or next(iter(ns.items()), ("", ""))[0] or "openbao",
                          pod.get("app.kubernetes.io/name", "*"), sorted(p["port"] for p in rule.get("ports", []))))
    want = [("vaultgate", "vaultgate", [8200]), ("openbao", "openbao", [8200, 8201]),
            ("openbao", "openbao-snapshot", [8200]), ("openbao.io/operator", "*", [8200])]
    report(np is not None and np["spec"]["policyTypes"] == ["Ingress"] and
           np["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "openbao"} and peers == want,
           f"{label}: NetworkPolicy/openbao admits only the gateway (8200), OpenBao's pods (8200, 8201), the snapshot job and operators' namespaces",
           f"peers {peers}")
    cron = next((d for d in docs if d["kind"] == "CronJob"), None)
    if cron:
        cspec = pod_template(cron)["spec"]
        cc = cspec["containers"][0]
        script = cc["command"][-1]
        ok = any(script.startswith(m["mountPath"] + "/") for m in cc["volumeMounts"])
        token = [s["serviceAccountToken"] for v in cspec["volumes"] for s in v.get("projected", {}).get("sources", [])
                 if "serviceAccountToken" in s]
        report(ok and token and token[0]["audience"] == "openbao",
               f"{label}: {name_of(cron)} runs the mounted {script} with a projected token for audience openbao",
               "script not mounted or no token")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vaultgate", type=pathlib.Path, required=True, help="the vaultgate binary (check-config)")
    ap.add_argument("--k8s", action="append", required=True)
    ap.add_argument("renders", nargs="+", type=pathlib.Path)
    args = ap.parse_args()
    for render in args.renders:
        label = render.stem
        docs = [d for d in yaml.safe_load_all(render.read_text()) if d]
        if not docs:
            report(False, f"{label}: rendered documents", "none")
            continue
        check_schemas(docs, args.k8s, label)
        check_pods(docs, label)
        check_selectors(docs, label)
        check_vaultgate(docs, label, args.vaultgate)
        check_openbao(docs, label)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
