#!/bin/sh
# quota-hook.sh: the fleet-dispatch quota guard as an AI-agent CLI's pre-tool hook (see README.md here).
#
# Before each tool call the agent CLI runs this script. When the upstream quota is known to be exhausted,
# the script runs `fleetdispatch quota-guard`, which either waits for the reset (the budget allows it: the
# tool call then goes ahead) or writes the QuotaExhausted outcome and exits 75 (it does not: the agent is
# told to stop, the session ends, and fleet-dispatch requeues it until the reset).
#
# What it reads:
#   QUOTA_RESET_AT     the reset time (RFC 3339 or epoch seconds), when something sets it in the agent's
#                      environment. Set means exhausted.
#   QUOTA_RESET_FILE   else the first line of this file [$FLEET_STATE_DIR/quota-reset]. Written by whatever
#                      in your session learns the quota state (a usage poller, a wrapper reading the
#                      provider's rate-limit headers). The file existing means exhausted; an empty first line
#                      means "reset time unknown" (the guard waits its buffer). After a wait the script
#                      removes the file, unless it was rewritten meanwhile.
#                      Neither set: the quota is not known to be exhausted; exit 0 at once.
#   standard input     the hook's JSON, if the CLI sends one. Claude Code sends one object per call, e.g.
#                      {"session_id": "...", "transcript_path": "...", "cwd": "...",
#                       "hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {...}}
#                      Only `session_id` and `hook_event_name` are used.
#   QUOTA_HOOK_STYLE   how to tell the CLI to stop [auto]:
#                      exit         exit with the guard's code (75): for a shell loop or a CLI whose hooks
#                                   stop the agent on a non-zero exit;
#                      claude-code  print {"continue": false, ...} on standard output and exit 0: Claude Code
#                                   stops on that, while an exit code other than 2 would not even block the
#                                   tool call;
#                      auto         claude-code when the input carries `hook_event_name`, else exit.
#   QUOTA_HOOK_SESSION_TOKEN  1 [default]: write the input's `session_id` to $FLEET_STATE_DIR/resume-token
#                      before the guard runs, so the outcome carries it and the next attempt gets it as
#                      $FLEET_RESUME_TOKEN (for `claude --resume`). 0: leave the token to your session.
#   FLEET_QUOTA_GUARD  the guard command [fleetdispatch quota-guard, or python3 -m fleetdispatch.quotaguard
#                      when `fleetdispatch` is not on the PATH]; split on spaces.
#   FLEET_STATE_DIR    set by fleet-dispatch [/var/run/fleet].
#
# Exit: 0 to let the tool call go ahead (and for the claude-code style's stop), 75 to stop in the exit style,
# and any other code of the guard as it is (a usage error: 2).
set -u

state_dir=${FLEET_STATE_DIR:-/var/run/fleet}
reset_file=${QUOTA_RESET_FILE:-$state_dir/quota-reset}

input=""
if [ ! -t 0 ]; then
    input=$(cat)
fi

first_line() {
    head -n 1 "$1" 2>/dev/null | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//'
}

json_string() {
    # The value of the first "$1": "..." in the hook input (the top-level field: Claude Code sends those
    # before `tool_input`); empty when absent. Values with escapes are not needed here, and not read.
    printf '%s\n' "$input" | grep -o "\"$1\"[[:space:]]*:[[:space:]]*\"[^\"\\\\]*\"" | head -n 1 |
        sed 's/.*"\([^"]*\)"$/\1/'
}

if [ -n "${QUOTA_RESET_AT:-}" ]; then
    reset=$QUOTA_RESET_AT
    origin=environment
elif [ -f "$reset_file" ]; then
    reset=$(first_line "$reset_file")
    origin=file
else
    exit 0
fi

session_id=$(json_string session_id)
if [ "${QUOTA_HOOK_SESSION_TOKEN:-1}" = 1 ] && [ -n "$session_id" ] && [ -d "$state_dir" ]; then
    # Atomically, as the session protocol asks: a reader sees the old token or the new one.
    printf '%s\n' "$session_id" >"$state_dir/.resume-token.$$" &&
        mv -f "$state_dir/.resume-token.$$" "$state_dir/resume-token"
fi

if [ -n "${FLEET_QUOTA_GUARD:-}" ]; then
    guard=$FLEET_QUOTA_GUARD
elif command -v fleetdispatch >/dev/null 2>&1; then
    guard="fleetdispatch quota-guard"
else
    guard="python3 -m fleetdispatch.quotaguard"
fi

# The guard's standard output goes to standard error: Claude Code reads this script's standard output as
# its answer. The guard's progress lines, while it waits, are what keeps the idle-output timer quiet.
if [ -n "$reset" ]; then
    $guard --reset-at "$reset" >&2
else
    $guard >&2
fi
code=$?

if [ "$code" -eq 0 ]; then
    if [ "$origin" = file ] && [ "$(first_line "$reset_file")" = "$reset" ]; then
        rm -f "$reset_file"
    fi
    exit 0
fi
if [ "$code" -ne 75 ]; then
    exit "$code"
fi

style=${QUOTA_HOOK_STYLE:-auto}
event=$(json_string hook_event_name)
if [ "$style" = auto ]; then
    if [ -n "$event" ]; then style=claude-code; else style=exit; fi
fi
if [ "$style" = claude-code ]; then
    reason="quota exhausted; the reset does not fit this session's budget, so it ends here and fleet-dispatch requeues it (see \$FLEET_STATE_DIR/outcome.json)"
    if [ "$event" = PreToolUse ]; then
        printf '{"continue": false, "stopReason": "%s", "hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny", "permissionDecisionReason": "%s"}}\n' "$reason" "$reason"
    else
        printf '{"continue": false, "stopReason": "%s"}\n' "$reason"
    fi
    exit 0
fi
exit 75
