"""The gateway fleet (issue 19): signed bootstrap polls, claims, MQTT credentials (broker password lines,
client certificates) and remote config documents with their device decisions. The HTTP side is
``cloud/api/routes/bootstrap.py``, ``cloud/api/routes/gateways.py`` and the fleet view's read model
``cloud/api/fleet_view.py``; the gateway's half is ``gateway/provisioning``."""

from cloud.errors import CloudError


class FleetError(CloudError):
    """A fleet operation that cannot be done (bad input, missing set-up); the API answers it as a 4xx."""

    def __init__(self, status: int, detail: str, *, slug: str) -> None:
        super().__init__(detail)
        self.status, self.detail, self.slug = status, detail, slug
