"""The operators' pages: alarms, crisis plans, interventions, bus priority, energy, audit.

Each page is a thin shell: the template lays out the tables and forms with
stable ``id`` and ``data-*`` hooks, and the page's own script
(``admin_web/static/ops-*.js``) reads the JSON API with the login session
(``cp.poll``, ETag-aware) and acts through it with the session's CSRF token
(``cp.post``). The API decides what the user may see and do (his role, his
municipalities, his desks); the shell only says who he is (``data-role``,
``data-municipalities``) so that the script offers the buttons he may use::

    /alarms         ISA-18.2 alarm list, polled every second: ack, shelve, unshelve,
                    out of service (admin), flood summaries expanded in place
    /crisis         each municipality's plan and the activation's progress; switch modes
    /interventions  interventions with their timeline, citizens' requests, the call desk
    /priority       the bus-priority pool: members, grants and refusals, latency
    /energy         street-lighting energy and savings per night and per municipality
    /audit          the audit trail (admin), filtered and paged
"""

from __future__ import annotations

from typing import Final

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

from admin_web.api import MAX_SHELVE_MINUTES
from admin_web.auth import Role
from admin_web.backend import CRISIS_MODES
from admin_web.guards import current_user, require_login
from admin_web.interventions import INTERVENTION_STATES

__all__ = ["ALARM_STATE_LABELS", "PRIORITY_ORDER", "ops_pages"]

ops_pages = Blueprint("ops_pages", __name__)

#: The alarm states as the page names them (ISA-18.2 wording), in the order it lists them.
ALARM_STATE_LABELS: Final = {
    "unacknowledged": "Unacknowledged",
    "acknowledged": "Acknowledged",
    "rtn_unacknowledged": "Returned to normal, unacknowledged",
    "shelved": "Shelved",
    "suppressed": "Suppressed by design",
    "out_of_service": "Out of service",
    "normal": "Normal",
}
#: Priorities from the most urgent.
PRIORITY_ORDER: Final = ("critical", "high", "medium", "low")


def _who() -> dict[str, str]:
    """What the page's script needs to know of the user: his role and municipalities
    (empty: all of them), as ``data-*`` attributes of the page's root."""
    user = current_user()
    return {"role": user.role.value,
            "municipalities": " ".join(sorted(user.municipalities))}


@ops_pages.get("/alarms")
@require_login(Role.VIEWER)
def alarms_page() -> ResponseReturnValue:
    """The alarm list, live."""
    return render_template("ops_alarms.html", who=_who(), states=ALARM_STATE_LABELS,
                           priorities=PRIORITY_ORDER, max_shelve=MAX_SHELVE_MINUTES)


@ops_pages.get("/crisis")
@require_login(Role.VIEWER)
def crisis_page() -> ResponseReturnValue:
    """Crisis plans in force and the switch between modes."""
    return render_template("ops_crisis.html", who=_who(),
                           modes=[m for m in CRISIS_MODES if m != "normal"])


@ops_pages.get("/interventions")
@require_login(Role.VIEWER)
def interventions_page() -> ResponseReturnValue:
    """Interventions, citizens' requests, and the form of the call desk."""
    return render_template("ops_interventions.html", who=_who(), states=INTERVENTION_STATES)


@ops_pages.get("/priority")
@require_login(Role.VIEWER)
def priority_page() -> ResponseReturnValue:
    """The bus-priority pool."""
    return render_template("ops_priority.html", who=_who())


@ops_pages.get("/energy")
@require_login(Role.VIEWER)
def energy_page() -> ResponseReturnValue:
    """Street-lighting energy report."""
    return render_template("ops_energy.html", who=_who())


@ops_pages.get("/audit")
@require_login(Role.ADMIN)
def audit_page() -> ResponseReturnValue:
    """The audit trail (admin)."""
    return render_template("ops_audit.html", who=_who())
