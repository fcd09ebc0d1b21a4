"""A patient's alert rules in force, and the care team's per-patient overrides (recorded in the twin
as ``threshold_changed`` by ``cloud.alerts.service``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from cloud.alerts import service
from cloud.api.deps import AlertsAccess, DbConn, note_audit_detail
from cloud.api.models import Rule, RulesInForce
from cloud.api.problems import problem_responses

router = APIRouter(prefix="/v1/patients/{patient_id}/thresholds", tags=["thresholds"],
                   responses=problem_responses(401, 403, 404, 422, 503, "default",
                                               when={404: "No such patient (or not visible), or no such rule"}))
RuleId = Annotated[str, Path(min_length=1, max_length=100)]


class RuleOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    thresholds: dict[str, float] | None = Field(None, description='by metric, e.g. {"systolic": 170}')
    severity: str | None = Field(None, pattern="^(info|warning|critical)$")
    params: dict[str, Any] | None = None
    margin: float | None = Field(None, ge=0, le=1000)
    resolve_after: int | None = Field(None, ge=1, le=100)
    note: str | None = Field(None, max_length=2000)


@router.get("", summary="The rules in force for this patient (catalogue with overrides applied)",
            response_model=RulesInForce)
def rules_in_force(access: AlertsAccess, conn: DbConn) -> dict[str, Any]:
    return {"patient_id": access.patient_id,
            "rules": [rule.as_dict() for rule in service.get_rules(conn, access.patient_id)]}


@router.put("/{rule_id}", summary="Override a rule for this patient (only the fields given)", response_model=Rule,
            responses=problem_responses(413, 422, when={422: "The request or the override is not valid"}))
def set_override(request: Request, access: AlertsAccess, conn: DbConn, rule_id: RuleId,
                 body: RuleOverride) -> dict[str, Any]:
    note_audit_detail(request, {"rule_id": rule_id, "override": body.model_dump(exclude_none=True)})
    access.require_clinical()
    rule = service.set_rule_override(conn, access.patient_id, rule_id, by=access.principal.subject,
                                     **body.model_dump(exclude_none=True))
    return rule.as_dict()


@router.delete("/{rule_id}", summary="Back to the catalogue default for this patient", response_model=Rule)
def clear_override(request: Request, access: AlertsAccess, conn: DbConn, rule_id: RuleId) -> dict[str, Any]:
    note_audit_detail(request, {"rule_id": rule_id})
    access.require_clinical()
    return service.clear_rule_override(conn, access.patient_id, rule_id, by=access.principal.subject).as_dict()
