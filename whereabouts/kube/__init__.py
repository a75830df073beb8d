"""Talking to the Kubernetes API: where it is (kubeconfig), how requests travel
(``api.Transport``, with a stdlib and an official-client implementation), and the YAML
subset kubeconfigs are written in. Nothing here is imported unless the kubernetes
datastore or a controller is used."""
