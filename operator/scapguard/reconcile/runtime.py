"""What the cluster can run, decided once when the operator starts."""

from __future__ import annotations

import logging

from scapguard.builders.job import user_namespace_probe
from scapguard.config import Settings
from scapguard.k8s.api import POD, Kube, KubeError

log = logging.getLogger(__name__)


def scanner_user_namespace(kube: Kube, settings: Settings) -> tuple[bool, str]:
    """Whether scanner pods get a user namespace of their own, and why.

    ``auto`` asks the API server itself: a dry-run create of a pod shaped like a scanner pod
    with ``hostUsers: false`` in the operator's namespace (uid 0 and the capabilities of
    ``USER_NAMESPACE_CAPABILITIES`` inside it). It is admitted only when the API server has
    user namespaces (Kubernetes 1.33+ by default) and the namespace's PodSecurity admits the
    pod: ``baseline`` does, ``restricted`` never (it refuses any added capability, user
    namespace or not). An API server without the feature drops ``hostUsers`` from the answer.
    Without a user namespace the scanner runs non-root and unpacks rootless (rules whose result
    depends on owners are ``notchecked``).
    """
    mode = settings.scanner_user_namespace
    if mode != "auto":
        return mode == "pod", f"SCAPGUARD_SCANNER_USER_NAMESPACE={mode}"
    probe = user_namespace_probe(
        settings.namespace, settings.scanner_image, settings.scanner_service_account
    )
    try:
        admitted = kube.dry_run_create(POD, probe)
    except KubeError as exc:
        return False, f"a pod with hostUsers: false is not admitted in {settings.namespace}: {exc}"
    if (admitted.get("spec") or {}).get("hostUsers") is not False:
        return False, "the API server does not support hostUsers (user namespaces are off)"
    return True, f"a pod with hostUsers: false is admitted in {settings.namespace}"
