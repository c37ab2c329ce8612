"""Checks deploy/kubernetes/ beyond each object's schema: what the objects say of
each other and of cachelock. Every setting the Deployment gives is a flag of the
binary (docs/configuration.md lists them, and a test keeps that list equal to
--help); the Services, probes, budget, autoscaler and ServiceMonitor find what they
name; the files the service reads are mounted; and the pod's termination grace
covers preStop, --shutdown-delay and --shutdown-grace.

Usage: python manifests.py deploy/kubernetes docs/configuration.md
"""

import pathlib
import re
import sys

import yaml


def durations_seconds(text):
    """Seconds of a humantime duration such as 5s, 500ms or 1m 30s."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*(ms|s|m|h)", text):
        total += int(number) * units[unit]
    return total


def main(directory, configuration):
    directory = pathlib.Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {path.name for path in directory.glob("*.yaml")} - {"kustomization.yaml"}
    examples = {name for name in present if ".example." in name}
    problems = []
    if listed != present - examples:
        problems.append(f"kustomization.yaml lists {sorted(listed)}, the directory has {sorted(present - examples)}")

    objects = []
    for name in sorted(present):
        objects += [(name, item) for item in yaml.safe_load_all((directory / name).read_text()) if item]
    by_kind = {}
    for name, item in objects:
        by_kind.setdefault(item["kind"], []).append(item)

    flags = set(re.findall(r"`(CACHELOCK_[A-Z0-9_]+)`", pathlib.Path(configuration).read_text()))
    flags |= {"REDIS_URL"}
    (deployment,) = by_kind["Deployment"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    if deployment["spec"]["selector"]["matchLabels"].items() - labels.items():
        problems.append("the Deployment's selector does not match its pods")
    (container,) = pod["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    env = {}
    for variable in container.get("env", []):
        if variable["name"] not in flags:
            problems.append(f"{variable['name']} is not a setting of cachelock (docs/configuration.md)")
        env[variable["name"]] = variable.get("value")

    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        spec = container.get(probe)
        if spec is None:
            problems.append(f"the container has no {probe}")
            continue
        port = (spec.get("grpc") or spec.get("httpGet") or {}).get("port")
        if port not in ports and port not in ports.values():
            problems.append(f"{probe} probes port {port!r}, which the container does not expose")

    mounts = [mount["mountPath"] for mount in container.get("volumeMounts", [])]
    for variable in ("CACHELOCK_AUTH_FILE", "CACHELOCK_RLS_CONFIG"):
        path = env.get(variable)
        if path and not any(path == mount or path.startswith(mount + "/") for mount in mounts):
            problems.append(f"{variable}={path} is not on a mounted volume")
    security = container.get("securityContext", {})
    if not security.get("readOnlyRootFilesystem") or security.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("the container must run read-only with every capability dropped")
    if pod["spec"].get("securityContext", {}).get("runAsUser") != 65532:
        problems.append("the pod must run as the image's user, 65532")

    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    stopping = pre_stop + durations_seconds(env.get("CACHELOCK_SHUTDOWN_DELAY") or "5s")
    stopping += durations_seconds(env.get("CACHELOCK_SHUTDOWN_GRACE") or "10s")
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if grace <= stopping:
        problems.append(f"terminationGracePeriodSeconds {grace} does not cover preStop and the drain ({stopping} s)")

    services = by_kind.get("Service", [])
    for service in services:
        selector = service["spec"].get("selector", {})
        if selector.items() - labels.items():
            problems.append(f"Service {service['metadata']['name']} selects no pod of the Deployment")
        for port in service["spec"]["ports"]:
            if port["targetPort"] not in ports:
                problems.append(f"Service {service['metadata']['name']} targets port {port['targetPort']!r}")
    for kind in ("PodDisruptionBudget",):
        for item in by_kind.get(kind, []):
            if item["spec"]["selector"]["matchLabels"].items() - labels.items():
                problems.append(f"{kind} {item['metadata']['name']} selects no pod of the Deployment")
    for item in by_kind.get("HorizontalPodAutoscaler", []):
        if item["spec"]["scaleTargetRef"]["name"] != deployment["metadata"]["name"]:
            problems.append("the HorizontalPodAutoscaler scales another Deployment")
    if "cpu" not in container["resources"].get("requests", {}):
        problems.append("the HorizontalPodAutoscaler scales on CPU, which needs a CPU request")
    for monitor in by_kind.get("ServiceMonitor", []):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        endpoints = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
        # kustomization.yaml's labels land on every object, the Services included.
        common = {}
        for entry in kustomization.get("labels", []):
            common.update(entry["pairs"])
        found = [
            service
            for service in services
            if not wanted.items() - {**service["metadata"].get("labels", {}), **common}.items()
            and endpoints <= {port["name"] for port in service["spec"]["ports"]}
        ]
        if not found:
            problems.append(f"ServiceMonitor {monitor['metadata']['name']} finds no Service with port(s) {endpoints}")

    for problem in problems:
        print(f"deploy/kubernetes: {problem}")
    print(f"{len(objects)} objects in {len(present)} files checked against each other: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
