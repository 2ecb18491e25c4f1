#!/usr/bin/env python3
"""Validates the Kubernetes manifests under deploy/kubernetes without a cluster.

    check_kubernetes.py deploy/kubernetes deploy/docker

Each document must parse and be well formed for its kind, and the documents
must agree with each other: every volume mount names a volume of its pod,
every Secret, key and claim referred to is defined, selectors match their
pods' labels, a Service's target ports are ports of the pods it selects, and
every container has a memory limit; pgfleet's containers run unprivileged on
a read-only root. Prints, as JSON, each pgfleet container's command line
(image entrypoint plus args), for the caller to parse with the real flags.
Exits 1 with one line per problem.
"""
import json
import sys
from pathlib import Path

import yaml

API = {
    "Namespace": "v1",
    "Secret": "v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "ConfigMap": "v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
}


def entrypoints(docker: Path) -> dict[str, list[str]]:
    """What each image runs before its args: the ENTRYPOINT of
    deploy/docker/<name>.Dockerfile, for image pgfleet-<name>."""
    out = {}
    for path in docker.glob("*.Dockerfile"):
        for line in path.read_text().splitlines():
            if line.startswith("ENTRYPOINT "):
                argv = json.loads(line[len("ENTRYPOINT "):])
                out["pgfleet-" + path.name.split(".")[0]] = [argv[0].rsplit("/", 1)[-1]] + argv[1:]
    return out


def main(folder: Path, docker: Path) -> int:
    ENTRYPOINTS = entrypoints(docker)
    problems: list[str] = []
    docs = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc is not None:
                    docs.append((path.name, doc))
        except yaml.YAMLError as e:
            problems.append(f"{path.name}: not YAML: {e}")
    secrets, claims = {}, set()
    for name, d in docs:
        kind = d.get("kind")
        where = f"{name}: {kind} {d.get('metadata', {}).get('name')}"
        if API.get(kind) is None:
            problems.append(f"{where}: unknown kind")
            continue
        if d.get("apiVersion") != API[kind]:
            problems.append(f"{where}: apiVersion {d.get('apiVersion')}, expected {API[kind]}")
        if not d.get("metadata", {}).get("name"):
            problems.append(f"{where}: no metadata.name")
        ns = d["metadata"].get("namespace", "default")
        if kind == "Secret":
            secrets[(ns, d["metadata"]["name"])] = set(d.get("stringData", {})) | set(d.get("data", {}))
        if kind == "PersistentVolumeClaim":
            claims.add((ns, d["metadata"]["name"]))
    commands = []
    workloads = [(n, d) for n, d in docs if d.get("kind") in ("Deployment", "StatefulSet")]
    for name, d in workloads:
        ns = d["metadata"].get("namespace", "default")
        where = f"{name}: {d['kind']} {d['metadata']['name']}"
        spec = d["spec"]
        pod = spec["template"]
        labels = pod.get("metadata", {}).get("labels", {})
        for k, v in spec.get("selector", {}).get("matchLabels", {}).items():
            if labels.get(k) != v:
                problems.append(f"{where}: selector {k}={v} does not match the pod's labels")
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        volumes.update({c["metadata"]["name"]: c for c in spec.get("volumeClaimTemplates", [])})
        for v in pod["spec"].get("volumes", []):
            if "secret" in v and (ns, v["secret"]["secretName"]) not in secrets:
                problems.append(f"{where}: volume {v['name']} names Secret {v['secret']['secretName']}, which is not defined")
            if "persistentVolumeClaim" in v and (ns, v["persistentVolumeClaim"]["claimName"]) not in claims:
                problems.append(f"{where}: volume {v['name']} names an undefined claim")
        for c in pod["spec"]["containers"]:
            cw = f"{where} container {c.get('name')}"
            if not c.get("image"):
                problems.append(f"{cw}: no image")
            if not c.get("resources", {}).get("limits", {}).get("memory"):
                problems.append(f"{cw}: no memory limit")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problems.append(f"{cw}: mounts {m['name']}, which is not a volume of the pod")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["key"] not in secrets.get((ns, ref["name"]), set()):
                    problems.append(f"{cw}: env {e['name']} needs key {ref['key']} of Secret {ref['name']}, which is not defined")
            image = c.get("image", "").split(":")[0]
            if image in ENTRYPOINTS:
                sc = c.get("securityContext", {})
                run_as = sc.get("runAsNonRoot", pod["spec"].get("securityContext", {}).get("runAsNonRoot"))
                for key, want, have in [
                    ("runAsNonRoot", True, run_as),
                    ("allowPrivilegeEscalation", False, sc.get("allowPrivilegeEscalation")),
                    ("readOnlyRootFilesystem", True, sc.get("readOnlyRootFilesystem")),
                ]:
                    if have != want:
                        problems.append(f"{cw}: securityContext.{key} should be {want}")
                # Kubernetes expands $(VAR) from the container's env.
                env = {e["name"] for e in c.get("env", [])}
                for a in c.get("args", []):
                    if "$(" in a and a.split("$(")[1].split(")")[0] not in env:
                        problems.append(f"{cw}: {a} names a variable the container does not set")
                commands.append({"where": cw, "argv": ENTRYPOINTS[image] + c.get("args", []),
                                 "ports": [p["containerPort"] for p in c.get("ports", [])]})
        for s_name, s in docs:
            if s.get("kind") != "Service" or s["metadata"].get("namespace", "default") != ns:
                continue
            sel = s["spec"].get("selector", {})
            if not sel or any(labels.get(k) != v for k, v in sel.items()):
                continue
            ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            ports |= {p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            for p in s["spec"]["ports"]:
                if p.get("targetPort", p["port"]) not in ports:
                    problems.append(f"{s_name}: Service {s['metadata']['name']} targets port {p.get('targetPort')}, which its pods do not have")
    services = [d for _, d in docs if d.get("kind") == "Service"]
    for s in services:
        ns = s["metadata"].get("namespace", "default")
        if not any(all(d["spec"]["template"].get("metadata", {}).get("labels", {}).get(k) == v
                       for k, v in s["spec"].get("selector", {}).items())
                   for _, d in workloads if d["metadata"].get("namespace", "default") == ns):
            problems.append(f"Service {s['metadata']['name']} selects no pod")
    for p in problems:
        print(p, file=sys.stderr)
    print(json.dumps(commands))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
