"""The gateways claimed for one patient (issue 19): what the workspace's patient page shows with its candidates
and the claim-code form. Authorised and audited as every patient route with the ``readings`` scope (the care
team with the patient's consent, or the patient themself), so opening a patient's page reads — and audits —
that patient alone, not every patient of the caller's fleet (``GET /v1/gateways`` would). Each gateway is
summarised by the fleet view's own code (``cloud/api/fleet_view.py``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from cloud.api.deps import DbConn, ReadingsAccess
from cloud.api.fleet_models import FleetGateway
from cloud.api.fleet_view import fleet
from cloud.api.problems import problem_responses

router = APIRouter(tags=["gateways"], responses=problem_responses(401, 403, 404, 422, 503, "default"))

# Claims in force for the patient (migration 0600): a released claim's gateway is no longer theirs.
_CLAIMED = "SELECT gateway_id FROM gateway_claims WHERE patient_id = %s AND released_at IS NULL ORDER BY gateway_id"


class PatientGateways(BaseModel):
    patient_id: str
    gateways: list[FleetGateway]
    online_within_s: float


@router.get("/v1/patients/{patient_id}/gateways", response_model=PatientGateways,
            summary="The gateways claimed for the patient, each as in the fleet view (online state and since when, "
                    "versions, backlog, devices and their problems, candidates count)")
def patient_gateways(request: Request, access: ReadingsAccess, conn: DbConn) -> dict[str, Any]:
    within = timedelta(seconds=request.app.state.settings.gateway_online_within_s)
    claimed = [row[0] for row in conn.execute(_CLAIMED, (access.patient_id,))]
    # A patient has one or two gateways: one fleet row each, the caller already authorised on the patient.
    gateways = [g for gateway_id in claimed
                for g in fleet(conn, admin=True, care_teams=(), within=within, gateway_id=gateway_id, limit=1)]
    return {"patient_id": access.patient_id, "gateways": gateways, "online_within_s": within.total_seconds()}
