"""The operator's decisions: pure functions over plain data, no I/O, no clock of their own, no kopf.

`lifecycle.reconcile` decides the next step of a dispatch; `classify` judges an attempt's end, `backoff`
spaces retries, `conditions` builds status conditions, `quota` admits to QuotaPools, `podspec` builds an
attempt's pod and `podstatus` reads pods into the small views the rest reads.
"""
