"""The Kubernetes manifests: valid against Kubernetes' own schemas (strict), and every
container's command line is one `mfvan` accepts, with CURVE on its non-local endpoints."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helpers import REPO

from mfvan.deploy import cli
from mfvan.stream.security import check

MANIFESTS = sorted((REPO / "deploy" / "ops" / "k8s").glob("*.yaml"))
DOCS = [(path.name, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text())]


@pytest.mark.parametrize("name, doc", DOCS, ids=[f"{n}:{d['metadata']['name']}" for n, d in DOCS])
def test_each_resource_is_valid_kubernetes(name, doc):
    version = kubernetes_validate.utils.latest_version()
    kubernetes_validate.validate(doc, version, strict=True)


def test_every_container_runs_a_command_mfvan_accepts():
    deployments = [d for _, d in DOCS if d["kind"] == "Deployment"]
    stages = set()
    for d in deployments:
        pod = d["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        for container in pod["spec"]["containers"]:
            args = cli.build_parser().parse_args(container["args"])
            stages.add(args.command)
            assert str(args.metrics_port) == pod["metadata"]["annotations"]["prometheus.io/port"]
            endpoints = [args.out, *getattr(args, "inputs", [])]
            for endpoint in endpoints:
                check(endpoint, args.keys, args.insecure)  # CURVE, never --insecure
            assert args.keys == Path("/etc/mfvan/keys") and not args.insecure
    assert stages == {"ingest", "spot", "recognize"}


def test_services_point_at_the_ports_their_pods_bind():
    pods = {
        d["metadata"]["name"]: d["spec"]["template"] for _, d in DOCS if d["kind"] == "Deployment"
    }
    for _, svc in (x for x in DOCS if x[1]["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        matched = [p for p in pods.values() if selector.items() <= p["metadata"]["labels"].items()]
        assert matched, f"service {svc['metadata']['name']} selects no pod"
        ports = {
            port["name"] for p in matched for c in p["spec"]["containers"] for port in c["ports"]
        }
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
