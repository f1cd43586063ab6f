"""deploy/kubernetes/: every manifest validates offline against the Kubernetes schemas
(kubernetes-validate ships them); KEDA's ScaledObject, a CRD it has no schema for, is
checked by hand; and the manifests agree with the app (probes, metrics, settings)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config import SETTINGS
from app.config_docs import GUNICORN_SETTINGS
from tests.support.gunicorn import ROOT

KUBE = ROOT / "deploy" / "kubernetes"
VERSION = "1.30.0"  # the oldest version with lifecycle.preStop.sleep (beta, on by default)


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(KUBE.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]  # fmt: skip


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [doc for _, doc in documents() if doc["kind"] == kind]
    return found


@pytest.mark.parametrize("version", [VERSION, kubernetes_validate.latest_version()])
def test_every_builtin_manifest_validates_strictly(version: str) -> None:
    checked = set()
    for _, doc in documents():
        if doc["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/")):
            continue
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
        checked.add(doc["kind"])
    assert checked == {"Deployment", "Service", "Ingress", "Secret"}


def test_a_broken_manifest_is_refused() -> None:  # the validator really validates
    broken = by_kind("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_deployment_probes_gpu_and_grace_period_fit_the_server() -> None:
    spec = by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model loading
    graceful = int(GUNICORN_SETTINGS["GUNICORN_GRACEFUL_TIMEOUT"].shown.strip("`"))
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > graceful + pause
    for variable in container["env"]:
        assert variable["name"] in SETTINGS or variable["name"] in GUNICORN_SETTINGS or \
            variable["name"] == "HF_HOME", variable  # fmt: skip


def test_ingress_retries_on_429_and_503_like_the_replicas_nginx() -> None:
    annotations = by_kind("Ingress")["metadata"]["annotations"]
    retry = annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"].split()
    assert {"error", "timeout", "http_429", "http_503", "non_idempotent"} <= set(retry)
    assert "http_500" not in retry and "http_504" not in retry  # those requests ran
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-next-upstream-tries"]) >= 2
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "on"


def test_keda_scaledobject_scales_on_queued_plus_running_images_per_pod() -> None:
    scaled = by_kind("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == by_kind("Deployment")["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert float(trigger["metadata"]["threshold"]) > 0
    # The query names metrics the server exports (app/metrics.py).
    metrics = set(re.findall(r"image_server_\w+", trigger["metadata"]["query"]))
    source = (ROOT / "app" / "metrics.py").read_text()
    assert metrics == {"image_server_queued_images", "image_server_inflight_generations"}
    for name in metrics:
        assert f'("{name.removeprefix("image_server_")}",' in source, name


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    manifests = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
