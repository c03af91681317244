"""What runs in the session pod: the supervisor sidecar and the quota guard, and the files they share.

Standard library only (plus psutil and anyio), and nothing of the operator: it must start fast and small
in every session pod, and `protocol.py` with `quotaguard.py` must work copied alone into a session image
(they import each other relatively for that).
"""
