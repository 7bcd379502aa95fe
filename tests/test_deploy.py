"""The Kubernetes manifests in deploy/ are valid against the Kubernetes schemas (strict: no
unknown fields) and consistent with ember: probes on the gRPC port, a grace period longer than
the drain, a headless Service."""
from __future__ import annotations

import re
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
        drain, delay = float(env["EMBER_DRAIN_SECONDS"]), float(env["EMBER_DRAIN_DELAY_SECONDS"])
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert spec["terminationGracePeriodSeconds"] > pre_stop + delay + drain  # the whole drain fits
        ready = c["readinessProbe"]
        assert delay >= ready["periodSeconds"] * ready["failureThreshold"]  # the probe sees NOT_SERVING in time
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert c["resources"]["limits"] and c["resources"]["requests"]
        svc = services[dep["spec"]["selector"]["matchLabels"]["app"]]
        assert svc["spec"]["clusterIP"] == "None"  # headless, for client-side round-robin
    gpu = next(d for d in deployments if d["metadata"]["name"] == "ember-gpu")
    assert gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


# ---- the Dockerfile (no container engine here: its structure and steps are checked instead) --
ROOT = DEPLOY.parent.parent


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> [(INSTRUCTION, arguments)], continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        if instr.upper() == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            current = stages.setdefault(name, [])
        if current is not None:
            current.append((instr.upper(), rest.strip()))
    return stages


@pytest.mark.parametrize("stage", ["cpu", "cuda"])
def test_dockerfile_images_run_ember_non_root_with_a_health_check_and_the_model_inside(stage):
    steps = dockerfile_stages()[stage]
    instrs = dict(steps)  # the last of each instruction
    assert instrs["USER"] not in ("root", "0")
    assert instrs["VOLUME"] == '["/models"]'
    assert 'CMD ["grpc_health_probe", "-addr=127.0.0.1:50051"]' in instrs["HEALTHCHECK"]
    assert instrs["ENTRYPOINT"] == '["ember", "serve"]'
    copies = [a for i, a in steps if i == "COPY"]
    assert any("--from=export" in c and c.endswith("/models /models") for c in copies)  # exported at build
    assert any("grpc_health_probe /usr/local/bin/grpc_health_probe" in c for c in copies)
    env = instrs["ENV"]
    assert "EMBER_MODELS_DIR=/models" in env and "HF_HUB_OFFLINE=1" in env
    if stage == "cuda":
        assert "EMBER_PROVIDERS=tensorrt,cuda,cpu" in env
        assert any("onnxruntime-gpu" in a for i, a in dockerfile_stages()["cuda-build"] if i == "RUN")
    assert list(dockerfile_stages())[-1] == "cpu"  # the default target


def test_dockerfile_steps_are_the_commands_ci_runs():
    """make targets, pip extras and the export entry point the Dockerfile calls all exist."""
    import tomllib

    from ember.export import ensure_default_model  # noqa: F401  (the export stage calls it)

    runs = " ".join(a for steps in dockerfile_stages().values() for i, a in steps if i == "RUN")
    makefile = (ROOT / "Makefile").read_text()
    for target in ("health-probe",):
        assert f"make {target}" in runs and f"\n{target}:" in makefile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for spec in ("'.[export,default-model]'", "'.[bulk]'"):
        assert spec in runs
        assert set(spec.strip("'.[]").split(",")) <= set(extras)
    # PyTorch: the CPU build the Makefile installs, from the same index
    make_vars = dict(re.findall(r"^(TORCH_SPEC|TORCH_INDEX)\s*\?=\s*(\S+)", makefile, re.M))
    args = dict(re.findall(r"^ARG (TORCH_SPEC|TORCH_INDEX)=(\S+)", (ROOT / "Dockerfile").read_text(), re.M))
    assert make_vars == args and make_vars["TORCH_SPEC"].endswith("+cpu")
    assert '--extra-index-url "${TORCH_INDEX}" "${TORCH_SPEC}"' in runs
    assert "'.[export" not in " ".join(a for i, a in dockerfile_stages()["cpu-build"] if i == "RUN")  # no torch


def test_the_indexed_job_runs_a_sharded_embed_against_the_ember_service():
    """deploy/kubernetes/ember-embed-job.yaml: each index of an Indexed Job takes its shard
    (`--shard job/N`, N = completions) and calls the ember Service by its headless DNS name."""
    from ember.bulk import parse_shard

    jobs = [d for _, d in documents() if d["kind"] == "Job"]
    assert len(jobs) == 1
    spec = jobs[0]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["template"]["spec"]["restartPolicy"] == "Never"
    (c,) = spec["template"]["spec"]["containers"]
    assert c["command"] == ["ember"] and c["args"][0] == "embed"
    args = c["args"]
    shard = args[args.index("--shard") + 1]
    assert shard == f"job/{spec['completions']}"
    assert parse_shard(shard, {"JOB_COMPLETION_INDEX": str(spec["completions"] - 1)}) == (spec["completions"] - 1,
                                                                                         spec["completions"])
    server = args[args.index("--server") + 1]
    svc = next(d for _, d in documents() if d["kind"] == "Service" and d["metadata"]["name"] == "ember")
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert server == f"dns:///ember.default.svc.cluster.local:{port}" and svc["spec"]["clusterIP"] == "None"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert args[1].startswith("/data/") and args[args.index("-o") + 1].startswith("/out/")
    assert {"/data", "/out"} <= mounts
