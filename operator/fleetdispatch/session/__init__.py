"""What runs in the session pod: the supervisor sidecar and the quota guard, and the files they share.

`protocol` (the names and files a session, the supervisor and the quota guard share), `config` (the
supervisor's configuration and command line), `deadline` (the policy), `probes` (measuring the session),
`heartbeat` (the Lease), `supervisor` (the loop that acts) and `quotaguard`.

The standard library only, and of the rest of fleet-dispatch only the API's names (`api.names`): it must
start fast and small in every session pod (`fleetdispatch supervise` peaks at 25 MiB at most), and
`protocol.py` with `quotaguard.py` must work copied alone into a session image (the quota guard imports
the protocol relatively for that). Neither anyio nor psutil: measured, anyio's event loop would take the
supervisor over its budget and psutil costs more on the hot path (see `supervisor` and `probes`).
"""
