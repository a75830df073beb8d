"""Open the Store a configuration names. Each backend's module is imported only here,
only when chosen, so the CNI plugin loads nothing (ssl, http.client) it will not use."""

from __future__ import annotations

import os
from typing import Mapping

from ..config import IPAMConfig
from ..errors import StoreError
from .base import Store


def open_store(cfg: IPAMConfig, env: Mapping[str, str] = os.environ) -> Store:
    # Lazy imports below are the point of this module: one backend per process.
    if cfg.datastore == "file":
        from .file import FileStore

        return FileStore(cfg.data_dir)
    if cfg.datastore == "etcd":
        if cfg.etcd is None or not cfg.etcd.host:
            raise StoreError("datastore is etcd but etcd_host is not set")
        from .etcd import EtcdStore

        return EtcdStore(cfg.etcd)
    if cfg.datastore == "kubernetes":
        return _kubernetes(cfg, env)
    raise StoreError(f"unknown datastore {cfg.datastore!r} (kubernetes, etcd or file)")


def _kubernetes(cfg: IPAMConfig, env: Mapping[str, str]) -> Store:
    from ..kube import kubeconfig
    from ..kube.transport import HTTPTransport
    from .kubernetes import KubernetesStore

    if cfg.kubeconfig:
        access = kubeconfig.load_kubeconfig(cfg.kubeconfig)
    elif kubeconfig.in_cluster_available(env):
        access = kubeconfig.in_cluster(env)
    else:
        raise StoreError(
            "kubernetes.kubeconfig is not set and this is not a pod with a ServiceAccount "
            "(the installer writes the kubeconfig path into the flat file "
            "whereabouts.d/whereabouts.conf; set datastore to file or etcd to run without "
            "a cluster)"
        )
    return KubernetesStore(HTTPTransport(access), access.namespace)
