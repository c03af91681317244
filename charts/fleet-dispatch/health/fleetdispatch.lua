-- Argo CD health check for fleet.dispatch.dev/FleetDispatch.
--
-- Install it in argocd-cm under `resource.customizations.health.fleet.dispatch.dev_FleetDispatch`. Argo CD
-- sets `obj` to the live object; the script returns `hs` with `status` (Healthy, Progressing, Degraded,
-- Suspended, Unknown) and `message`. A FleetDispatch runs to an end, so it is Healthy only when its
-- session completed:
--
--   no status yet (the operator has not picked it up)         Progressing
--   status.observedGeneration behind metadata.generation      Progressing (a spec change not acted on yet)
--   Pending, Running, Backoff, Requeued                       Progressing, with the attempt and the message
--   Suspended (spec.suspend is true)                          Suspended
--   Succeeded                                                 Healthy
--   Failed                                                    Degraded, with status.message (else Stalled's)
--   any other phase (a newer operator)                        Unknown
--
-- Written for Lua 5.1 (Argo CD's gopher-lua) and the base library alone (no string, table or os).
-- tests/chart/test_gitops_health.py runs it over sample statuses and over statuses the real operator wrote.
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
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to pick up the dispatch"
  return hs
end

local generation = obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = nonEmpty(status.message) and status.message or "Succeeded"
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  local stalled = condition(status, "Stalled")
  if nonEmpty(status.message) then
    hs.message = status.message
  elseif stalled ~= nil and nonEmpty(stalled.message) then
    hs.message = stalled.message
  else
    hs.message = "Failed"
  end
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = nonEmpty(status.message) and status.message or "spec.suspend is true"
  return hs
end

if phase == "Pending" or phase == "Running" or phase == "Backoff" or phase == "Requeued" then
  hs.status = "Progressing"
  local message = phase
  if status.attempt ~= nil and status.attempt > 0 then
    message = message .. " (attempt " .. tostring(status.attempt) .. ")"
  end
  if nonEmpty(status.message) then
    message = message .. ": " .. status.message
  end
  hs.message = message
  return hs
end

hs.status = "Unknown"
hs.message = "unknown phase " .. tostring(phase)
return hs
