"""Argo CD's view of an object: the chart's Lua health checks, run as Argo CD runs them.

Argo CD runs a `resource.customizations.health.<group>_<kind>` script in gopher-lua (Lua 5.1) with the live
object as `obj`; here lupa's Lua 5.1 runs it with only the base library open, so a script cannot lean on
anything Argo CD might not give it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lupa import lua51

HEALTH = Path(__file__).resolve().parents[1] / "charts" / "fleet-dispatch" / "health"
DISPATCH_HEALTH = HEALTH / "fleetdispatch.lua"
CAMPAIGN_HEALTH = HEALTH / "fleetcampaign.lua"


def _lua_value(runtime: Any, value: Any) -> Any:
    """A JSON value as a Lua value, the way Argo CD hands an object to a health script (nulls left out)."""
    if isinstance(value, dict):
        return runtime.table_from({k: _lua_value(runtime, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return runtime.table_from([_lua_value(runtime, v) for v in value if v is not None])
    return value


def health(script: Path, obj: dict[str, Any]) -> tuple[str, str]:
    """Run the health `script` over `obj`: (hs.status, hs.message)."""
    runtime = lua51.LuaRuntime()
    runtime.execute("string, table, math, os, io, debug, coroutine, package, require = nil")
    runtime.globals().obj = _lua_value(runtime, json.loads(json.dumps(obj)))
    hs = runtime.execute(script.read_text(encoding="utf-8"))
    assert hs is not None, f"{script.name} must return hs"
    return str(hs["status"]), str(hs["message"])
