"""The API: the CRDs (`crds/`, links to the repository's `crds/`), the models the operator reads specs with
(`models`), and the operator's own settings (`settings`)."""
