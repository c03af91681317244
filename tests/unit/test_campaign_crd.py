"""crds/fleetcampaigns.yaml is what scripts/campaign_crd.py writes from the FleetDispatch CRD: the campaign's
template.spec is the dispatch's spec schema, without its transition rules, and nothing drifts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "campaign_crd.py"


def test_the_campaign_crd_is_generated_from_the_dispatch_crd() -> None:
    checked = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr


def test_the_template_spec_is_the_dispatch_spec_without_oldself_rules() -> None:
    dispatch = yaml.safe_load((ROOT / "crds" / "fleetdispatches.yaml").read_text())
    campaign = yaml.safe_load((ROOT / "crds" / "fleetcampaigns.yaml").read_text())
    spec = dispatch["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    embedded = campaign["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["template"]["properties"]["spec"]
    assert embedded["properties"].keys() == spec["properties"].keys()
    assert "oldSelf" not in yaml.safe_dump(embedded)
    assert "oldSelf" in yaml.safe_dump(spec)  # the dispatch's immutability rules, which a template drops
    kept = [r["rule"] for r in embedded.get("x-kubernetes-validations", [])]
    # and one of its own: a member deleted by its ttl would be created again.
    assert kept == [
        *(r["rule"] for r in spec["x-kubernetes-validations"] if "oldSelf" not in r["rule"]),
        "!has(self.ttlSecondsAfterFinished)",
    ]
