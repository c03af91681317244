"""`kubectl fleet`, the kubectl plugin (`kubectl-fleet` on PATH): a running dispatch seen as it is.

It runs on the user's machine, so it is small: `view` is what is shown (pure functions over the JSON the
API server returns: the budget arithmetic, durations, the tables), `kube` a thin synchronous client over
the standard library's HTTP with the credentials kubectl would use (`client.credentials`), `cli` the command
line. It imports the API's names (`api.names`), the credentials and the one time format
(`session.protocol`), and nothing of the operator: no pydantic, kopf or aiohttp (an import-linter contract).

Deliberately not here: `kubectl fleet retry` (it needs the operator to honour the annotation
`fleet.dispatch.dev/retry`, which it does not yet), and anything that changes a dispatch but `spec.suspend`.
"""
