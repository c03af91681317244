"""What a user installs: a wheel with the `fleetdispatch` package, its CRDs and its command, and nothing
importable as `operator`; and the campaign example as kustomize (inside kubectl) really builds it."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from fleetdispatch.validation import manifests
from wheels import build_wheel

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"


def test_packaged_crds_are_the_top_level_crds() -> None:
    from importlib import resources

    for name in manifests.CRD_FILES:
        packaged = (resources.files("fleetdispatch.api") / "crds" / name).read_bytes()
        assert packaged == (ROOT / "crds" / name).read_bytes()
    assert sorted(p.name for p in (ROOT / "crds").glob("*.yaml")) == sorted(manifests.CRD_FILES)


def test_wheel_ships_the_package_the_crds_and_the_command(tmp_path: Path) -> None:
    wheel = build_wheel(ROOT, tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for name in manifests.CRD_FILES:
            assert archive.read(f"fleetdispatch/api/crds/{name}") == (ROOT / "crds" / name).read_bytes()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "fleetdispatch = fleetdispatch.cli:main" in archive.read(entry_points).decode()
    assert not [n for n in names if n.startswith("operator/")]
    assert "fleetdispatch/py.typed" in names


@pytest.mark.skipif(
    not KUBECTL.exists() and not os.environ.get("CI"), reason="kubectl not installed: run `make tools`"
)
def test_campaign_kustomization_builds_valid_manifests() -> None:
    kubectl = str(KUBECTL) if KUBECTL.exists() else shutil.which("kubectl") or "kubectl"
    built = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "examples" / "campaign")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    documents = list(yaml.safe_load_all(built))
    assert sorted(m["kind"] for m in documents) == ["FleetCampaign"] + ["FleetDispatch"] * 3 + ["QuotaPool"]
    for manifest in documents:
        assert manifest["metadata"]["namespace"] == "campaign-q4"
        assert manifest["metadata"]["labels"] == {"fleet.dispatch.dev/campaign": "q4-cleanup"}
        verdict = manifests.check(manifest)
        assert verdict.valid, verdict.explain()
