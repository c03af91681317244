"""The Kubernetes API client the operator and the dev cluster's node agent share: credentials, resource
paths, requests and watches."""
