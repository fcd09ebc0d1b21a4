"""A generic HTTP "SMS/voice provider": one POST per message to ``RPM_PROVIDER_URL``, no vendor SDK.

The body is ``RPM_PROVIDER_TEMPLATE``, a JSON document with placeholders ``$to`` (the phone number),
``$text`` (the short text, ≤ 320 characters), ``$kind`` (alert, escalation, patient_...) and
``$delivery_id``, each replaced by its value JSON-escaped (write them inside quotes: ``"$text"``;
``$$`` is a literal ``$``). The result must be valid JSON, checked when the template is loaded.
``RPM_PROVIDER_TOKEN`` goes in ``Authorization: Bearer``; ``Idempotency-Key`` carries the delivery id
so a provider that honours it sends a retried message once. A non-2xx answer is a
:class:`ChannelError` with the status and the start of the body (4xx other than 408/429 is permanent:
the same request will not succeed later).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from string import Template

import httpx

from cloud.alerts.channels.errors import ChannelError
from cloud.settings import CloudSettings

DEFAULT_TEMPLATE = '{"to": "$to", "text": "$text", "reference": "rpm-delivery-$delivery_id"}'
PLACEHOLDERS = ("to", "text", "kind", "delivery_id")
_EXCERPT = 200


def _escaped(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)[1:-1]


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    url: str | None
    """None: the provider channel is not configured (every attempt fails with reason ``config``)."""
    token: str | None = None
    template: str = DEFAULT_TEMPLATE
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        unknown = {name for _, named, braced, _ in Template.pattern.findall(self.template)
                   for name in (named, braced) if name} - set(PLACEHOLDERS)
        if unknown:
            raise ChannelError("config", f"RPM_PROVIDER_TEMPLATE names unknown placeholders {sorted(unknown)}"
                                         f" (known: {', '.join('$' + p for p in PLACEHOLDERS)})", permanent=True)
        try:
            json.loads(self.body(to="+10000000000", text='a "quoted"\nline \\ ü', kind="alert", delivery_id=1))
        except ValueError as err:
            raise ChannelError("config", f"RPM_PROVIDER_TEMPLATE does not give JSON: {err}", permanent=True) from err

    @classmethod
    def from_settings(cls, settings: CloudSettings) -> ProviderConfig:
        return cls(url=settings.provider_url, token=settings.provider_token,
                   template=settings.provider_template or DEFAULT_TEMPLATE, timeout_s=settings.provider_timeout_s)

    def body(self, *, to: str, text: str, kind: str, delivery_id: int) -> str:
        values = {"to": to, "text": text, "kind": kind, "delivery_id": str(delivery_id)}
        try:
            return Template(self.template).substitute({k: _escaped(v) for k, v in values.items()})
        except (KeyError, ValueError) as err:
            raise ChannelError("config", f"RPM_PROVIDER_TEMPLATE: {err}", permanent=True) from err


class Provider:
    def __init__(self, config: ProviderConfig, http: httpx.Client) -> None:
        self.config = config
        self.http = http

    def send(self, to: str, text: str, *, kind: str, delivery_id: int) -> None:
        config = self.config
        if not config.url:
            raise ChannelError("config", "the SMS/voice provider is not configured (RPM_PROVIDER_URL)")
        headers = {"Content-Type": "application/json", "Idempotency-Key": f"rpm-delivery-{delivery_id}"}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        body = config.body(to=to, text=text, kind=kind, delivery_id=delivery_id).encode()
        try:
            response = self.http.post(config.url, content=body, headers=headers, timeout=config.timeout_s)
        except httpx.TimeoutException as err:
            raise ChannelError("timeout", f"the provider did not answer within {config.timeout_s:g} s") from err
        except httpx.HTTPError as err:
            raise ChannelError("refused", f"{type(err).__name__}: {err}") from err
        if 200 <= response.status_code < 300:
            return
        excerpt = " ".join(response.text[:_EXCERPT].split())
        status = response.status_code
        raise ChannelError("http", f"provider answered HTTP {status}: {excerpt}",
                           permanent=400 <= status < 500 and status not in (408, 429))
