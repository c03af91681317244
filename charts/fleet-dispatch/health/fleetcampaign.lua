-- Argo CD health check for fleet.dispatch.dev/FleetCampaign.
--
-- Install it in argocd-cm under `resource.customizations.health.fleet.dispatch.dev_FleetCampaign`. A
-- campaign is one object for many dispatches, so its health is the campaign's, not its worst dispatch's:
-- a failed dispatch within `maxFailed` leaves it Healthy. Give each dispatch no health of its own in the
-- same Application (`resource.customizations.health.fleet.dispatch.dev_FleetDispatch` returning Healthy,
-- or the campaign's dispatches are not in Git at all), or one failure turns the Application Degraded.
--
--   no status yet (the operator has not picked it up)         Progressing
--   status.observedGeneration behind metadata.generation      Progressing (a spec change not acted on yet)
--   Running                                                   Progressing, with the counts
--   Suspended (spec.suspend is true)                          Suspended
--   Succeeded (every dispatch finished within maxFailed)      Healthy
--   Failed (more failed dispatches than maxFailed)            Degraded, with status.message
--   Stalled for an invalid spec                               Degraded, with the condition's message
--   any other phase (a newer operator)                        Unknown
--
-- Written for Lua 5.1 (Argo CD's gopher-lua) and the base library alone (no string, table or os).
-- tests/chart/test_campaign_health.py runs it over statuses the real operator wrote.
hs = {}

local function condition(status, conditionType)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local function nonEmpty(value)
  return value ~= nil and value ~= ""
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to pick up the campaign"
  return hs
end

local generation = obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = nonEmpty(stalled.message) and stalled.message or "Stalled"
  return hs
end

local phase = status.phase
local message = nonEmpty(status.message) and status.message or tostring(phase)
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Suspended" then
  hs.status = "Suspended"
elseif phase == "Running" or phase == nil then
  hs.status = "Progressing"
else
  hs.status = "Unknown"
  message = "unknown phase " .. tostring(phase)
end
hs.message = message
return hs
