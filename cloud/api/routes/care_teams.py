"""Care teams and their members (administrators configure them; anyone signed in can list teams, so
a patient can choose whom to grant consent)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from cloud.api import queries
from cloud.api.deps import AdminPrincipal, CurrentPrincipal, DbConn, note_audit_detail
from cloud.api.models import Team, TeamMember, TeamMembers, Teams
from cloud.api.problems import ApiProblem, not_found, problem_responses

router = APIRouter(prefix="/v1/care-teams", tags=["care teams"],
                   responses=problem_responses(401, 403, 422, 503, "default"))
TeamId = Annotated[str, Path(min_length=1, max_length=200)]


class CareTeam(BaseModel):
    id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")
    name: str = Field(min_length=1, max_length=500)


class Member(BaseModel):
    subject: str = Field(min_length=1, max_length=500)
    role: str = Field("clinician", pattern="^(clinician|care_team)$")


@router.get("", summary="All care teams", response_model=Teams)
def list_care_teams(principal: CurrentPrincipal, conn: DbConn) -> dict[str, Any]:
    return {"care_teams": queries.list_care_teams(conn)}


@router.post("", status_code=201, summary="Create a care team", response_model=Team,
             responses=problem_responses(409, 413, when={409: "A care team with this id exists"}))
def create_care_team(request: Request, principal: AdminPrincipal, conn: DbConn, body: CareTeam) -> dict[str, Any]:
    note_audit_detail(request, {"care_team_id": body.id})
    row = queries.create_care_team(conn, body.id, body.name)
    if row is None:
        raise ApiProblem(409, f"care team {body.id!r} exists", slug="conflict")
    return row


@router.get("/{team_id}/members", summary="Members of a care team", response_model=TeamMembers,
            responses=problem_responses(404))
def list_members(principal: AdminPrincipal, conn: DbConn, team_id: TeamId) -> dict[str, Any]:
    if not queries.care_team_exists(conn, team_id):
        raise not_found("care team")
    return {"care_team_id": team_id, "members": queries.list_members(conn, team_id)}


@router.post("/{team_id}/members", status_code=201, summary="Add (or change the role of) a member",
             response_model=TeamMember, responses=problem_responses(404, 413))
def add_member(request: Request, principal: AdminPrincipal, conn: DbConn, team_id: TeamId,
               body: Member) -> dict[str, Any]:
    # Membership is who the directory says is in a team: audited, with whom it added.
    note_audit_detail(request, {"care_team_id": team_id, "subject": body.subject, "role": body.role})
    if not queries.care_team_exists(conn, team_id):
        raise not_found("care team")
    return queries.add_member(conn, team_id, body.subject, body.role)
