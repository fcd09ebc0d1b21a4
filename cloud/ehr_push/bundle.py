"""One PHD transaction Bundle per batch (PHD IG, "Transaction Bundle": a PHG uploads its Observations with the
Patient and Device resources they reference, each created conditionally so a resend creates nothing twice).

Every resource comes from ``cloud.twin.fhir`` (the builders of the FHIR API and the bulk export); here it loses
its ``id`` (the EHR assigns its own), gets a ``urn:uuid`` fullUrl, and a ``POST`` with ``ifNoneExist`` on its
identifier: the Patient on ``urn:rpm:patient-id``, a measuring Device on ``urn:rpm:device-uid``, the gateway
on ``urn:rpm:gateway-id``, an Observation on the IG's de-duplication identifier (system
``…/PhdBaseObservation``; an Observation without one, such as a coincident timestamp, on
``urn:rpm:observation-id``). References between them (``Patient/…``, ``Device/…``, ``Observation/…``) become
the fullUrls, which the server replaces with the ids it assigned or found.
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud.twin import fhir

log = logging.getLogger(__name__)
OBSERVATION_ID_SYSTEM = "urn:rpm:observation-id"
"""Identifier of a pushed Observation that has no PHD de-duplication identifier (coincident timestamps)."""


@dataclass(frozen=True)
class ReadingGroup:
    """One reading's part of a Bundle: its resources, and the Patient and Devices it needs."""

    reading_id: str
    patient_id: str
    observations: list[dict[str, Any]]
    device_uid: str
    gateway_id: str | None


@dataclass
class BuiltBundle:
    bundle: dict[str, Any]
    entry_readings: list[str | None]
    """Per entry, the reading whose Observation it is (None: a Patient or a Device)."""
    reading_ids: list[str] = field(default_factory=list)
    """The readings the Bundle carries, in order; readings left over (entry cap) are not in it."""


def search_escape(value: str) -> str:
    """A search parameter value with FHIR's special characters escaped (R4 search, "Escaping Search
    Parameters": ``\\``, ``,``, ``$``, ``|``)."""
    for char in ("\\", ",", "$", "|"):
        value = value.replace(char, "\\" + char)
    return value


def _if_none_exist(system: str, value: str) -> str:
    return f"identifier={system}|{search_escape(value)}"


def _identifier(resource: Mapping[str, Any], system: str) -> str | None:
    for identifier in resource.get("identifier") or ():
        if identifier.get("system") == system and identifier.get("value"):
            return str(identifier["value"])
    return None


def observation_condition(observation: dict[str, Any]) -> str:
    """The ``ifNoneExist`` of an Observation; adds ``urn:rpm:observation-id`` where it has no PHD identifier."""
    value = _identifier(observation, fhir.CONDITIONAL_CREATE_SYSTEM)
    if value is not None:
        return _if_none_exist(fhir.CONDITIONAL_CREATE_SYSTEM, value)
    observation.setdefault("identifier", []).append({"system": OBSERVATION_ID_SYSTEM, "value": observation["id"]})
    return _if_none_exist(OBSERVATION_ID_SYSTEM, observation["id"])


def reading_group(row: Mapping[str, Any]) -> ReadingGroup:
    """A reading's Observations as the FHIR API has them (measurements, status bits, coincident timestamp)."""
    observations = fhir.observations_from_row(row)
    observations += fhir.phd_companions(row, observations)
    return ReadingGroup(row["id"], row["patient_id"], observations, row["device_uid"], row.get("gateway_id"))


def _rewrite(node: Any, references: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        out = {k: _rewrite(v, references) for k, v in node.items()}
        target = out.get("reference")
        if isinstance(target, str) and not target.startswith("urn:uuid:"):
            if target in references:
                out["reference"] = references[target]
            else:
                # A local reference to something the Bundle does not carry would name an id the EHR never
                # assigned: keep what identifies it (identifier, display), drop the literal reference.
                log.warning("EHR push: %s is not in the Bundle; its literal reference is left out", target)
                del out["reference"]
        return out
    if isinstance(node, list):
        return [_rewrite(v, references) for v in node]
    return node


def build_bundle(
    groups: Sequence[ReadingGroup],
    patients: Mapping[str, Mapping[str, Any]],
    devices: Mapping[str, Mapping[str, Any]],
    gateways: Mapping[str, Mapping[str, Any] | None],
    max_entries: int,
) -> BuiltBundle:
    """The transaction Bundle of ``groups`` in order, as many as fit in ``max_entries`` (at least the first,
    whatever its size: a reading's Observations are never split). ``devices``: uid -> a
    ``cloud.api.queries.fhir_patient_devices`` row with ``owner`` (the patient it belongs to alone, or None);
    ``gateways``: gateway id -> its last status."""
    entries: list[tuple[dict[str, Any], str | None]] = []
    references: dict[str, str] = {}
    taken: list[str] = []

    def add(resource: dict[str, Any], condition: str, reading_id: str | None) -> None:
        full_url = f"urn:uuid:{uuid.uuid4()}"
        references[f"{resource['resourceType']}/{resource['id']}"] = full_url
        entries.append(
            (
                {
                    "fullUrl": full_url,
                    "resource": resource,
                    "request": {"method": "POST", "url": resource["resourceType"], "ifNoneExist": condition},
                },
                reading_id,
            )
        )

    for group in groups:
        needed: list[tuple[dict[str, Any], str]] = []
        patient = fhir.patient_resource(patients[group.patient_id])
        if f"Patient/{patient['id']}" not in references:
            needed.append((patient, _if_none_exist(fhir.PATIENT_SYSTEM, group.patient_id)))
        device_row = devices.get(group.device_uid)
        if device_row is not None:
            device = fhir.device_resource(device_row, device_row.get("owner"))
            if f"Device/{device['id']}" not in references:
                needed.append((device, _if_none_exist(fhir.DEVICE_SYSTEM, group.device_uid)))
        if group.gateway_id:
            gateway = fhir.gateway_resource(group.gateway_id, gateways.get(group.gateway_id))
            if f"Device/{gateway['id']}" not in references:
                needed.append((gateway, _if_none_exist(fhir.GATEWAY_SYSTEM, group.gateway_id)))
        observations = [copy.deepcopy(o) for o in group.observations]
        if taken and len(entries) + len(needed) + len(observations) > max_entries:
            break
        for resource, condition in needed:
            add(resource, condition, None)
        for observation in observations:
            add(observation, observation_condition(observation), group.reading_id)
        taken.append(group.reading_id)
    bundle_entries = []
    for entry, _ in entries:
        resource = _rewrite(entry["resource"], references)
        resource.pop("id", None)
        bundle_entries.append({**entry, "resource": resource})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": bundle_entries}
    return BuiltBundle(bundle, [reading for _, reading in entries], taken)
