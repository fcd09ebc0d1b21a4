"""Deep links from messages: ``POST /v1/alert-links/{token}/open`` turns the token in an e-mail's link
(``/ui/#/alerts/{id}?link=<token>``) into the alert to show, once, for a signed-in care-team member
who may see the alert's patient. It never acknowledges anything: the page shows the alert and the
person decides. The token is checked only after the caller is authorised, so a caller who may not see
the alert cannot use it up (nor learn whether it was used)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from cloud.alerts.channels import links
from cloud.api.deps import CLINICAL_ROLES, CurrentPrincipal, DbConn, authorise_patient, note_audit_detail
from cloud.api.models import AlertLinkOpened
from cloud.api.problems import ApiProblem, forbidden, not_found, problem_responses

router = APIRouter(prefix="/v1/alert-links", tags=["alerts"],
                   responses=problem_responses(401, 403, 422, 503, "default"))
Token = Annotated[str, Path(min_length=20, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")]


_WHEN = {404: "No such link, or its alert is one the caller may not see",
         410: "The link was used already or has expired"}


@router.post("/{token}/open", summary="Open a message's deep link: which alert to show (once, within its lifetime)",
             response_model=AlertLinkOpened, responses=problem_responses(404, 410, when=_WHEN))
def open_link(request: Request, principal: CurrentPrincipal, conn: DbConn, token: Token) -> dict[str, Any]:
    link = links.find_link(conn, token)
    if link is None:
        note_audit_detail(request, {"link": "unknown"})
        raise not_found("link")
    note_audit_detail(request, {"alert_id": link.alert_id, "link_recipient": link.recipient})
    try:
        authorise_patient(conn, request, principal, link.patient_id, "alerts")
    except ApiProblem:
        raise not_found("link") from None
    if principal.role not in CLINICAL_ROLES:
        raise forbidden("message links are for the care team")
    try:
        links.use_link(conn, token, principal.subject, datetime.now(UTC))
    except links.LinkGone as err:
        raise ApiProblem(410, err.detail, slug="link-gone") from None
    return {"alert_id": link.alert_id, "patient_id": link.patient_id}
