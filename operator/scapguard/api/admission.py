"""The admission webhook's failure policy: one definition for the settings, the webhook
configuration builder and the webhook server, which must all agree (docs/admission.md)."""

from __future__ import annotations

from typing import Final, Literal

from scapguard.api.errors import SpecError

#: admissionregistration/v1's failurePolicy: refuse (Fail) or admit (Ignore) when the webhook
#: cannot answer.
FailurePolicy = Literal["Fail", "Ignore"]
FAILURE_POLICIES: Final[tuple[FailurePolicy, ...]] = ("Fail", "Ignore")
DEFAULT_FAILURE_POLICY: Final[FailurePolicy] = "Fail"


def parse_failure_policy(value: str, field: str) -> FailurePolicy:
    """``value`` as a failure policy; SpecError naming ``field`` unless it is Fail or Ignore."""
    for policy in FAILURE_POLICIES:
        if value == policy:
            return policy
    raise SpecError(field, f"must be Fail or Ignore, not {value!r}")
