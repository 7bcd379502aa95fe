"""The Kubernetes manifests in deploy/ are valid against the Kubernetes schemas (strict: no
unknown fields) and consistent with ember: probes on the gRPC port, a grace period longer than
the drain, a headless Service."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
KUBERNETES = "1.30.0"  # native gRPC probes: 1.27; preStop sleep: 1.30
FILES = sorted(DEPLOY.glob("*.yaml"))


def documents():
    for f in FILES:
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                yield f.name, doc


@pytest.mark.parametrize("name,doc", list(documents()), ids=lambda x: x if isinstance(x, str) else x["kind"])
def test_manifest_is_valid_against_the_kubernetes_schema(name, doc):
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_deployments_match_how_ember_serves_and_drains():
    deployments = [d for _, d in documents() if d["kind"] == "Deployment"]
    services = {d["spec"]["selector"]["app"]: d for _, d in documents() if d["kind"] == "Service"}
    assert len(FILES) >= 2 and len(deployments) == 2
    for dep in deployments:
        spec = dep["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == grpc_port == 50051
        assert not c.get("args") or c["args"][0] != "serve"  # the image's entrypoint is already `ember serve`
        drain = float(env["EMBER_DRAIN_SECONDS"])
        assert spec["terminationGracePeriodSeconds"] > drain + c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert c["resources"]["limits"] and c["resources"]["requests"]
        svc = services[dep["spec"]["selector"]["matchLabels"]["app"]]
        assert svc["spec"]["clusterIP"] == "None"  # headless, for client-side round-robin
    gpu = next(d for d in deployments if d["metadata"]["name"] == "ember-gpu")
    assert gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
