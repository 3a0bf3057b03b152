"""The OpenAPI 3.1 document of the admin web's HTTP API, served at ``/api/v1/openapi.json``.

The document is data this module owns, written beside the views it describes
(:mod:`admin_web.api`, :mod:`admin_web.history`, :mod:`admin_web.interventions`,
:mod:`admin_web.keys`, :mod:`admin_web.users`, :mod:`admin_web.open311`) and built
from their own constants (page limits, states, kinds, name patterns, password and
label lengths), so that a bound the code enforces and the bound the document states
are one value::

    doc = openapi_document()                     # a fresh dict, JSON-ready
    doc["paths"]["/api/v1/health"]["get"]["responses"]["200"]

    app.register_blueprint(openapi)              # create_app does it
    GET /api/v1/openapi.json                     # no authentication

Every operation says its parameters, its request body (where it takes one)
and the schema of each answer it gives: ``{"error", "field"?}`` for the
API's refusals, the GeoReport v2 list ``[{"code", "description"}]`` for
Open311's. The Open311 paths are listed only when the app serves them (the
composition root mounts that blueprint once the runtime's store exists).

Authentication: ``Authorization: Bearer TOKEN`` for the API (scheme
``bearerAuth``); ``health`` and this document take none. The session cookie of
the pages (with its CSRF form field) is never read by the API, so it is no
scheme of this document. Open311 reads are public, and an Open311 POST carries
its client application's ``api_key`` as a form field, as the GeoReport v2
specification has it: it is described in that request body, since an OpenAPI
security scheme places a key only in a header, the query or a cookie.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Final

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from admin_web.api import (
    ALARM_PRIORITIES,
    ALARM_STATES,
    API_PREFIX,
    DEFAULT_EQUIPMENT_PAGE,
    ENERGY_SCOPES,
    MAX_ALARM_TEXT,
    MAX_CRISIS_MUNICIPALITIES,
    MAX_EQUIPMENT_PAGE,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_SHELVE_MINUTES,
    MAX_SLUG_LENGTH,
)
from admin_web.auth import (
    DESK_PATTERN,
    MAX_LABEL_LENGTH,
    MAX_SECRET_LENGTH,
    MAX_TOKENS,
    MIN_PASSWORD_LENGTH,
    NAME_PATTERN,
    RESERVED_NAMES,
    SLUG_PATTERN,
    TOKEN_ID_PATTERN,
    Role,
)
from admin_web.backend import CRISIS_MODES, HEALTH_STATUSES, package_version
from admin_web.city_pages import DOT_STATES
from admin_web.desks import CRISIS_MODES as DESK_CRISIS_MODES
from admin_web.guards import SESSION_COOKIE
from admin_web.history import DEFAULT_LIMIT, MAX_LIMIT, MAX_TEXT_FILTER, NEXT_HEADER
from admin_web.interventions import (
    INTERVENTION_STATES,
    MAX_CATEGORY,
    MAX_DESCRIPTION,
    VEHICLE_STATUSES,
)
from admin_web.open311 import FORMATS, OPEN311_PREFIX
from admin_web.users import IF_MATCH_PATTERN, MAX_NAME_LENGTH, MAX_NAMES
from runtime.audit import OUTCOMES as AUDIT_OUTCOMES
from runtime.commands import MAX_ACTION_LENGTH, MAX_PARAM_NAME_LENGTH, MAX_PARAMS, CommandStatus
from runtime.energy import STEPS as ENERGY_STEPS
from runtime.inventory import KINDS
from runtime.open311 import FIELD_LIMITS, MAX_APP_NAME, MAX_RESULTS, STATUSES

__all__ = ["OPENAPI_PATH", "OPENAPI_VERSION", "openapi", "openapi_document"]

OPENAPI_VERSION: Final = "3.1.0"
OPENAPI_PATH: Final = f"{API_PREFIX}/openapi.json"
JSON: Final = "application/json"
XML: Final = "text/xml"
FORM: Final = "application/x-www-form-urlencoded"
MULTIPART: Final = "multipart/form-data"

openapi = Blueprint("openapi", __name__, url_prefix=API_PREFIX)


# -- schema pieces ---------------------------------------------------------------------------


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null (JSON Schema 2020-12, as OpenAPI 3.1 uses it)."""
    if "$ref" in schema or "enum" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kind = schema["type"]
    kinds = [*kind, "null"] if isinstance(kind, list) else [kind, "null"]
    return {**schema, "type": kinds}


def _obj(properties: dict[str, Any], required: tuple[str, ...] = (), *,
         closed: bool = False, description: str | None = None) -> dict[str, Any]:
    """An object schema; ``closed`` refuses names not listed (request bodies, errors)."""
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    if description:
        out["description"] = description
    return out


def _array(items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **extra}


_STR: Final = {"type": "string"}
_INT: Final = {"type": "integer"}
_COUNT: Final = {"type": "integer", "minimum": 0}
_NUM: Final = {"type": "number"}
_BOOL: Final = {"type": "boolean"}
_TS: Final = {"type": "number", "description": "seconds since the epoch, UTC"}
_NTS: Final = _nullable(_TS)
_NSTR: Final = _nullable(_STR)
_NNUM: Final = _nullable(_NUM)
#: Free text that holds something besides white space.
_TEXT_PATTERN: Final = r"\S"
#: One line of text: no control character (a tab aside), no line break.
_LINE_PATTERN: Final = r"^[^\x00-\x08\x0a-\x1f\x7f]*$"
#: Text over lines: no control character but tabs and line breaks.
_FREE_TEXT_PATTERN: Final = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
#: A name: one line holding something besides white space.
_NAME_PATTERN: Final = r"^[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x08\x0a-\x1f\x7f]*$"


def _or_empty(schema: dict[str, Any]) -> dict[str, Any]:
    """A query argument's ``schema``, or empty (taken as not given)."""
    return {"anyOf": [schema, {"type": "string", "maxLength": 0}]}


def _schemas() -> dict[str, Any]:
    """``components.schemas``: every shape the API answers or reads."""
    command_status = {"type": "string", "enum": [s.value for s in CommandStatus]}
    reading = _obj({
        "value": _ref("JsonValue"),
        "quality": _NSTR,
        "source_ts": _NTS,
        "received_ts": _NTS,
    }, ("value", "quality", "source_ts", "received_ts"), closed=True)
    equipment_fields = {
        "id": _STR,
        "kind": {"type": "string", "enum": list(KINDS)},
        "municipality": {"type": "string", "description": "the municipality's slug (a "
                         "vehicle's home municipality)"},
        "lat": _NNUM,
        "lon": _NNUM,
        "online": {"type": "boolean", "description": "a live device session"},
        "status": {"type": ["string", "null"],
                   "description": "the entity's status on its host (``unknown`` before a host "
                                  "reported it)"},
        "host": _NSTR,
        "in_alarm": _BOOL,
        "conditions": _array(_STR),
        "reported": {"type": "object", "additionalProperties": _ref("Reading"),
                     "description": "the device's values, by field"},
        "desired": {"type": "object", "additionalProperties": _ref("JsonValue"),
                    "description": "what was last asked of the device, by field"},
        "schedule": _ref("Schedule"),
        "control": _obj({
            "precedence": _array(_STR, description="the layers, strongest first"),
            "fields": {"type": "object", "additionalProperties": _obj({
                "value": _ref("JsonValue"), "source": _NSTR, "by": _STR, "until": _NTS,
            }, ("value", "source")), "description": "each field's value in force and the "
                                                    "layer that sets it"},
            "layers": {"type": "object", "additionalProperties": _ref("JsonValue"),
                       "description": "each layer as kept: ``{\"set\", \"until\", "
                                      "\"by\"}``"},
        }, ("precedence", "fields", "layers"), description="what sets a scheduled kind's "
                                                           "fields"),
        "position": {"type": "object", "description": "a vehicle's last position",
                     "properties": {"lat": _NUM, "lon": _NUM, "stale": _BOOL}},
        "home_municipality": _STR,
        "municipality_in": _nullable({"type": "string", "description": "where a vehicle's "
                                      "usable position lies"}),
    }
    equipment = _obj(equipment_fields, ("id", "kind", "municipality", "online", "status",
                                        "host", "reported", "desired"),
                     description="One equipment (CONTRACT.md); what its kind adds to its view "
                                 "joins the record.")
    alarm = _obj({
        "id": _STR,
        "source": _STR,
        "condition": _STR,
        "priority": {"type": "string", "enum": sorted(ALARM_PRIORITIES)},
        "state": {"type": "string", "enum": sorted(ALARM_STATES)},
        "active": _BOOL,
        "municipality": _STR,
        "municipalities": _array(_STR),
        "raised_ts": _NTS,
        "cleared_ts": _NTS,
        "acked_by": _NSTR,
        "acked_ts": _NTS,
        "shelved_until": _NTS,
        "shelved_by": _NSTR,
        "shelve_reason": _NSTR,
        "out_of_service_by": _NSTR,
        "suppressed_by": _NSTR,
        "group": _nullable({"type": "string", "description": "the flood summary or incident "
                            "this alarm is grouped under"}),
        "count": {"type": "integer", "minimum": 0,
                  "description": "a flood summary: its children; an incident: itself and "
                                 "what joined it"},
        "message": _STR,
        "kind": _STR,
        "path": _NSTR,
        "escalated": _BOOL,
        "activations": _COUNT,
        "steps": _array({"type": "object", "description": "what a plan did about this "
                         "alarm", "properties": {"step": _STR, "state": _STR, "detail": _STR,
                                                  "ts": _TS}}),
        "history": _array({"type": "object", "description": "one transition",
                           "properties": {"ts": _TS, "action": _STR, "from": _STR, "to": _STR,
                                          "user": _NSTR}}),
        "children": _array(_STR),
    }, ("id", "source", "condition", "priority", "state", "active", "municipality",
        "raised_ts", "acked_by", "acked_ts", "shelved_until", "suppressed_by", "group",
        "count", "message"),
        description="An alarm and its ISA-18.2 state (CONTRACT.md).")
    command_summary = _obj({
        "command_id": _STR, "status": command_status, "action": _STR,
        "params": {"type": "object", "additionalProperties": _ref("JsonValue")},
        "caller": _STR, "created_ts": _TS, "updated_ts": _TS, "error": _NSTR,
    }, ("command_id", "status"))
    event = _obj({
        "event_id": {"type": "string", "pattern": r"^\d+-\d+$",
                     "description": "the stream id: its time in ms, then a sequence"},
        "ts": _TS,
        "entity": _STR,
        "event": _STR,
        "kind": _STR,
        "municipality": _STR,
    }, ("event_id",), description="One event as an entity or a supervisor emitted it; its "
                                   "other fields depend on the event.")
    step_row = {
        "start": _TS, "end": _TS, "night": {"type": "string", "format": "date"},
        "metered_wh": _NUM, "dimming_baseline_wh": _NUM, "legacy_baseline_wh": _NUM,
        "dimming_saving_pct": _nullable({"type": "number", "description": "null where the "
                                         "baseline is 0 (daylight)"}),
        "legacy_saving_pct": _NNUM,
        "counter_resets": _COUNT, "counter_wraps": _COUNT,
    }
    energy_row = _obj(step_row, ("start", "end", "metered_wh", "dimming_baseline_wh",
                                 "legacy_baseline_wh", "dimming_saving_pct",
                                 "legacy_saving_pct", "counter_resets", "counter_wraps"))
    intervention = _obj({
        "id": _STR,
        "request_id": _NSTR,
        "category": _STR,
        "description": _STR,
        "municipality": _STR,
        "state": {"type": "string", "enum": list(INTERVENTION_STATES)},
        "vehicle": _NSTR,
        "lat": _NNUM,
        "lon": _NNUM,
        "created_ts": _TS,
        "updated_ts": _TS,
        "assigned_ts": _NTS,
        "notes": _NSTR,
        "source": _NSTR,
        "lamps": _nullable(_array({"type": "integer", "minimum": 0},
                                  description="a lighting fault's failed lamps, by number")),
        "equipment": {**_NSTR, "description": "the lighting circuit or the building it is "
                                              "about (none for a citizen's request)"},
        "timeline": _array(_obj({"ts": _TS, "state": {"type": "string",
                                                      "enum": list(INTERVENTION_STATES)},
                                 "vehicle": _NSTR, "notes": _NSTR}, ("ts", "state")),
                           description="its last changes, oldest first"),
    }, ("id", "request_id", "category", "description", "municipality", "state", "vehicle",
        "lat", "lon", "created_ts", "updated_ts"),
        description="An intervention of the dispatch coordinator (CONTRACT.md).")
    vehicle = _obj({
        "id": _STR, "municipality": _STR, "role": _STR, "radio": _BOOL,
        "lat": _NUM, "lon": _NUM,
        "status": _STR, "online": _BOOL, "job": _STR, "job_state": _STR, "stale": _BOOL,
        "ts": _TS, "assigned": _NSTR, "excluded_until": _NTS,
    }, ("id", "municipality", "role", "status"), description="A service vehicle as dispatch "
                                                              "knows it.")
    tree_node = _obj({
        "id": {"type": "string", "description": "stable across restarts"},
        "kind": {"type": "string", "description": "a host's kind contains ``host``"},
        "status": {"type": "string",
                   "enum": ["starting", "running", "restarting", "stopped", "failed"]},
        "restarts": _COUNT,
        "pid": _nullable(_INT),
        "node": _NSTR,
        "children": _array(_ref("TreeNode")),
        "entities": _COUNT,
        "entity_restarts": _COUNT,
        "last_exit": _nullable({"type": "string", "description": "how the child's last "
                                "incarnation ended (``killed: …``, ``error: …``), null while "
                                "none ended"}),
    }, ("id", "kind", "status", "restarts", "pid", "node", "children"),
        description="A node of the supervision tree, down to the host actors.")
    connection = _obj({"url": _nullable({"type": "string", "description": "any password "
                                         "redacted"}),
                       "status": _STR, "pid": _nullable(_INT), "broker": _STR},
                      ("url", "status"))
    audit_entry = _obj({
        "id": {"type": "string", "description": "the entry's cursor (a stream id)"},
        "ts": _TS,
        "user": _STR,
        "role": _STR,
        "source": {"type": "string", "description": "the client's address"},
        "action": _STR,
        "target": _STR,
        "params": _ref("JsonValue"),
        "before": _ref("JsonValue"),
        "after": _ref("JsonValue"),
        "outcome": {"type": "string", "enum": ["ok", "refused"]},
        "code": _STR,
        "detail": _STR,
    }, ("id", "ts", "user", "role", "source", "action", "target", "params", "before",
        "after", "outcome", "code", "detail"), closed=True,
        description="Who did what, when, from where, with what outcome; secrets masked.")
    open311_service = _obj({
        "service_code": _STR,
        "service_name": _STR,
        "description": _STR,
        "metadata": {"type": "boolean", "const": False,
                     "description": "no service has attributes"},
        "type": {"type": "string", "enum": ["realtime", "batch", "blackbox"]},
        "keywords": {"type": "string", "description": "comma-separated"},
        "group": _STR,
    }, ("service_code", "service_name", "description", "metadata", "type", "keywords",
        "group"), closed=True)
    open311_service["xml"] = {"name": "service"}
    open311_request = _obj({
        "service_request_id": _STR,
        "status": {"type": "string", "enum": list(STATUSES)},
        "status_notes": _NSTR,
        "service_name": _STR,
        "service_code": _STR,
        "description": _NSTR,
        "agency_responsible": _NSTR,
        "service_notice": _NSTR,
        "requested_datetime": {"type": "string", "format": "date-time"},
        "updated_datetime": {"type": "string", "format": "date-time"},
        "expected_datetime": _nullable({"type": "string", "format": "date-time"}),
        "address": _NSTR,
        "address_id": _NSTR,
        "zipcode": _NSTR,
        "lat": _NNUM,
        "long": _NNUM,
        "media_url": _NSTR,
    }, ("service_request_id", "status", "service_name", "service_code", "requested_datetime",
        "updated_datetime"), closed=True,
        description="A service request's public GeoReport v2 fields, never the citizen's "
                    "own details.")
    open311_request["xml"] = {"name": "request"}
    return {
        "JsonValue": {
            "type": ["object", "array", "string", "number", "boolean", "null"],
            "description": "any JSON value (what the field holds depends on the device, the "
                           "action or the record)",
        },
        "Error": _obj({
            "error": {"type": "string", "description": "what is wrong, for a person"},
            "field": {"type": "string", "description": "the body or query field at fault"},
        }, ("error",), closed=True, description="A refusal of the API."),
        "Open311Errors": _array(_obj({
            "code": {"type": "integer", "description": "the HTTP status"},
            "description": _STR,
        }, ("code", "description"), closed=True) | {"xml": {"name": "error"}},
            minItems=1, xml={"name": "errors", "wrapped": True},
            description="GeoReport v2's error list."),
        "Health": _obj({
            "status": {"type": "string", "enum": sorted(HEALTH_STATUSES),
                       "description": "ok: every supervised child running and every entity "
                                      "started; degraded: Redis or the broker unreachable, "
                                      "or a host failed"},
            "entities": _COUNT,
            "online": {"type": "integer", "minimum": 0,
                       "description": "entities with a live device session"},
            "redis": {"type": "string", "enum": ["ok", "unreachable"]},
            "mqtt": {"type": "string", "enum": ["ok", "unreachable"]},
        }, ("status", "entities", "online")),
        "TreeNode": tree_node,
        "System": _obj({
            "version": _STR,
            "ray": _obj({"address": _NSTR, "nodes": _COUNT}, ("address", "nodes")),
            "redis": connection,
            "mqtt": connection,
            "simulators": _array(_obj({"kind": _STR, "endpoint": _STR, "devices": _COUNT},
                                      ("kind", "endpoint", "devices"))),
        }, ("version", "ray", "redis", "mqtt", "simulators")),
        "Reading": reading,
        "Schedule": _obj({
            "name": _STR, "step": _NSTR, "since": _NTS,
            "next": _nullable(_obj({"step": _STR, "at": _TS}, ("step", "at"))),
        }, ("name",), description="The schedule an equipment follows and its step in force."),
        "Equipment": equipment,
        "EquipmentDetail": {"allOf": [_ref("Equipment"), _obj({
            "events": _array(_ref("Event")),
            "commands": _array(_ref("CommandSummary")),
            "alarms": _array(_ref("Alarm")),
        }, ("events", "commands", "alarms"))]},
        "CommandRequest": _obj({
            "action": {"type": "string", "minLength": 1, "maxLength": MAX_ACTION_LENGTH,
                       "description": "one of the kind's actions (``set``, ``release`` …)"},
            "params": {"type": "object", "maxProperties": MAX_PARAMS,
                       "additionalProperties": _ref("JsonValue"),
                       "propertyNames": {"minLength": 1,
                                         "maxLength": MAX_PARAM_NAME_LENGTH},
                       "description": "the action's fields; those needing a justification "
                                      "take ``reason``"},
            "idempotency_key": {"type": "string", "minLength": 1,
                                "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH,
                                "description": "a repeat with the same key answers the first "
                                               "command's id"},
        }, ("action",), closed=True),
        "CommandAccepted": _obj({"command_id": _STR, "status": command_status},
                                ("command_id", "status"), closed=True),
        "CommandSummary": command_summary,
        "Command": _obj({
            "command_id": _STR,
            "status": command_status,
            "target": _STR,
            "action": _STR,
            "params": {"type": "object", "additionalProperties": _ref("JsonValue")},
            "caller": _STR,
            "created_ts": _TS,
            "deadline_ts": _TS,
            "updated_ts": _TS,
            "sent_ts": {"type": "number", "description": "0 for a stage not reached"},
            "device_read_ts": _NUM,
            "device_write_ts": _NUM,
            "device_confirmed_ts": _NUM,
            "error": _NSTR,
        }, ("command_id", "status"), description="A command and where it stands."),
        "Alarm": alarm,
        "AckRequest": _obj({"comment": {"type": ["string", "null"], "minLength": 1,
                                        "maxLength": MAX_ALARM_TEXT,
                                        "pattern": _TEXT_PATTERN}}, closed=True),
        "ShelveRequest": _obj({
            "minutes": {"type": "number", "exclusiveMinimum": 0,
                        "maximum": MAX_SHELVE_MINUTES},
            "reason": {"type": "string", "minLength": 1, "maxLength": MAX_ALARM_TEXT,
                       "pattern": _TEXT_PATTERN},
        }, ("minutes", "reason"), closed=True),
        "NoBody": _obj({}, closed=True, description="an action that takes no field: no body, "
                                                     "or an empty object"),
        "CrisisRow": _obj({
            "mode": {"type": "string", "description": "``normal`` or the plan in force"},
            "since": _NTS,
            "by": _NSTR,
            "activation_id": _NSTR,
            "description": _STR,
            "entities": _obj({"done": _COUNT, "pending": _COUNT, "failed": _COUNT},
                             ("done", "pending", "failed")),
            "kept": _array(_obj({"entity": _STR, "field": _STR, "value": _ref("JsonValue"),
                                 "command_id": _NSTR, "reason": _STR})),
            "failures": _array(_obj({"entity": _STR, "error": _STR})),
        }, ("mode", "since", "by")),
        "CrisisRequest": _obj({
            "mode": {"type": "string", "enum": list(CRISIS_MODES),
                     "description": "``normal`` ends the plans"},
            "municipalities": _array({"type": "string", "minLength": 1,
                                      "maxLength": MAX_SLUG_LENGTH},
                                     minItems=1, maxItems=MAX_CRISIS_MUNICIPALITIES),
            "replace": {"type": "boolean", "default": False,
                        "description": "replace a plan in force instead of a 409"},
        }, ("mode", "municipalities"), closed=True),
        "CrisisAccepted": _obj({"activation_id": _STR, "status": command_status},
                               ("activation_id", "status"), closed=True),
        "Priority": _obj({
            "members": _array(_obj({
                "id": _NSTR, "pid": _nullable(_INT), "buses": _COUNT,
                "realtime": {"type": "integer", "minimum": 0, "maximum": 99,
                             "description": "the member's real-time priority (SCHED_RR), "
                                            "0 in the normal class"}},
                ("id", "pid", "buses"))),
            "requests": _obj({"granted": _COUNT,
                              "refused": {"type": "object", "additionalProperties": _COUNT,
                                          "description": "by reason"}},
                             ("granted", "refused")),
            "latency_ms": _obj({
                "p50": _NNUM, "p99": _NNUM,
                "histogram": _array({
                    "type": "array", "items": _NNUM, "minItems": 2, "maxItems": 2,
                    "description": "[upper bound in ms (null: above the last), count]"}),
            }, ("p50", "p99", "histogram")),
        }, ("members", "requests", "latency_ms")),
        "EnergyRow": energy_row,
        "Energy": _obj({
            "scope": {"type": "string", "enum": list(ENERGY_SCOPES)},
            "id": _NSTR,
            "from": _TS, "to": _TS,
            "step": {"type": "string", "enum": list(ENERGY_STEPS)},
            "unit": {"type": "string", "const": "Wh"},
            "circuits": _COUNT, "lamps": _COUNT,
            "steps": _array(_ref("EnergyRow")),
            "total": _ref("EnergyRow"),
        }, ("scope", "id", "from", "to", "step", "unit", "circuits", "lamps", "steps",
            "total"), description="Metered street-lighting energy with the dimming baseline "
                                  "(the same lamps at 100 % dusk to dawn) and the legacy "
                                  "baseline (the lamps they replaced)."),
        "Event": event,
        "AuditEntry": audit_entry,
        "CitizenRequest": _obj({
            "category": {"type": "string", "minLength": 1, "maxLength": MAX_CATEGORY,
                         "pattern": _TEXT_PATTERN, "description": "an Open311 service code"},
            "description": {"type": "string", "minLength": 1, "maxLength": MAX_DESCRIPTION,
                            "pattern": _TEXT_PATTERN},
            "lat": {"type": "number", "minimum": -90, "maximum": 90},
            "lon": {"type": "number", "minimum": -180, "maximum": 180},
            "municipality": {"type": ["string", "null"],
                             "description": "when given, the point must lie in it"},
        }, ("category", "description", "lat", "lon"), closed=True),
        "RequestOpened": _obj({"request_id": _STR, "intervention_id": _STR},
                              ("request_id", "intervention_id"), closed=True),
        "Intervention": intervention,
        "Vehicle": vehicle,
        "Open311Applications": _obj({"applications": _array(_STR)}, ("applications",),
                                    closed=True),
        "Open311KeyRequest": _obj({"application": {
            "type": "string", "minLength": 1, "maxLength": MAX_APP_NAME,
            "pattern": _NAME_PATTERN, "description": "the client application's name"}},
            ("application",), closed=True),
        "Open311KeyIssued": _obj({"application": _STR,
                                  "api_key": {"type": "string",
                                              "description": "shown once, stored as a digest"}},
                                 ("application", "api_key"), closed=True),
        "Open311Service": open311_service,
        "Open311Services": _array(_ref("Open311Service"),
                                  xml={"name": "services", "wrapped": True}),
        "Open311ServiceDefinition": _obj({
            "service_code": _STR,
            "attributes": _array(_obj({"code": _STR}), maxItems=0,
                                 description="no service has attributes"),
        }, ("service_code", "attributes"), closed=True) | {
            "xml": {"name": "service_definition"}},
        "Open311Request": open311_request,
        "Open311Requests": _array(_ref("Open311Request"),
                                  xml={"name": "service_requests", "wrapped": True}),
        "Open311Created": _array(_obj({
            "service_request_id": _STR,
            "service_notice": _NSTR,
            "account_id": {"type": "null"},
        }, ("service_request_id", "service_notice", "account_id"), closed=True) | {
            "xml": {"name": "request"}},
            minItems=1, maxItems=1, xml={"name": "service_requests", "wrapped": True}),
        "Open311NewRequest": _open311_new_request(),
        **_user_schemas(),
    }


def _user_schemas() -> dict[str, Any]:
    """The users' and desks' shapes (:mod:`admin_web.users`, :mod:`admin_web.desks`)."""
    role = {"type": "string", "enum": [r.value for r in Role]}
    name = {"type": "string", "pattern": f"^{NAME_PATTERN}$"}
    slug = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH,
            "pattern": f"^{SLUG_PATTERN}$", "description": "a municipality's slug"}
    desk = {"type": "string", "pattern": f"^{DESK_PATTERN}$",
            "description": "a desk of ``GET /api/v1/desks``"}
    password = {"type": "string", "minLength": MIN_PASSWORD_LENGTH,
                "maxLength": MAX_SECRET_LENGTH,
                "description": "chosen by a person: not one of the demo's passwords, nor "
                               "one of the usual first guesses (422)"}
    token_id = {"type": "string", "pattern": f"^{TOKEN_ID_PATTERN}$"}
    label = {"type": "string", "maxLength": MAX_LABEL_LENGTH}
    towns = _array(slug, maxItems=MAX_NAMES)
    desks = _array(desk, maxItems=MAX_NAMES)
    by_kind = {"type": "object", "propertyNames": {"enum": list(KINDS)},
               "additionalProperties": _array(_STR)}
    return {
        "UserToken": _obj({
            "id": {**token_id, "description": "what revokes it"},
            "label": label,
            "created_ts": _TS,
        }, ("id", "label", "created_ts"), closed=True,
            description="One API token of a user, never the token itself."),
        "User": _obj({
            "name": name,
            "role": role,
            "municipalities": _array({"type": "string", "pattern": f"^{SLUG_PATTERN}$"},
                                     description="the slugs of the municipalities where he "
                                                 "acts; empty: every municipality"),
            "desks": _array({"type": "string", "pattern": f"^{DESK_PATTERN}$"},
                            description="his desks; empty: none, his role and "
                                        "municipalities alone hold him (an admin is never "
                                        "held by desks)"),
            "disabled": {"type": "boolean", "description": "his sessions and tokens stopped"},
            "tokens": _array(_ref("UserToken"), maxItems=MAX_TOKENS),
            "created_ts": _TS,
            "changed_ts": _TS,
            "version": {"type": "integer", "minimum": 0,
                        "description": "up by one with each change; his ``ETag``"},
        }, ("name", "role", "municipalities", "desks", "disabled", "tokens", "created_ts",
            "changed_ts", "version"), closed=True,
            description="A user as the API shows him: never a password hash nor a token."),
        "NewUser": _obj({
            "name": {**name, "description": "not taken, and none of "
                     f"{', '.join(f'``{n}``' for n in sorted(RESERVED_NAMES))} in any case "
                     "(the runtime's own callers)"},
            "role": role,
            "municipalities": _nullable({**towns, "description": "empty or null: every "
                                                                  "municipality"}),
            "desks": _nullable({**desks, "description": "empty or null: none"}),
            "password": {**password, "description": f"{password['description']}; "
                         "generated (and answered once) when not given"},
        }, ("name", "role"), closed=True),
        "UserCreated": _obj({
            "user": _ref("User"),
            "token": {"type": "string", "description": "his first API token, shown this "
                                                       "once"},
            "password": {"type": "string", "description": "the password generated, shown "
                                                          "this once (only when none was "
                                                          "given)"},
        }, ("user", "token"), closed=True),
        "UserChange": _obj({
            "role": _nullable(role),
            "municipalities": _nullable({**towns, "description": "replaces his; empty: every "
                                                                  "municipality"}),
            "desks": _nullable({**desks, "description": "replaces his; empty: none"}),
            "disabled": {"type": ["boolean", "null"],
                         "description": "true stops his sessions and tokens at once"},
        }, closed=True, description="What changes (a field left out or null stays as "
                                    "it is)."),
        "PasswordChange": _obj({"password": {**password, "description": (
            f"{password['description']}; without it, a password is generated")}},
            closed=True),
        "PasswordSet": _obj({"password": {"type": "string", "description": (
            "the password generated, shown this once (none when one was given)")}},
            closed=True),
        "TokenRequest": _obj({"label": {**label, "default": "",
                                        "description": "what the token is for"}},
                             closed=True),
        "TokenIssued": _obj({
            "id": {**token_id, "description": "what revokes it"},
            "token": {"type": "string", "description": "shown this once, kept as a digest"},
        }, ("id", "token"), closed=True),
        "Desk": _obj({
            "name": {"type": "string", "pattern": f"^{DESK_PATTERN}$"},
            "title": _STR,
            "views": _array(_STR, description="the sensitive views it reads"),
            "commands": {**by_kind, "description": "the actions it owns, by kind"},
            "crisis": _array({"type": "string", "enum": list(DESK_CRISIS_MODES)},
                             description="the crisis modes it switches"),
            "requests": {"type": "boolean", "description": "it takes citizens' calls"},
        }, ("name", "title", "views", "commands", "crisis", "requests"), closed=True,
            description="A desk of the control room."),
        "DeskView": _obj({
            "name": _STR,
            "title": _STR,
            "kinds": _array({"type": "string", "enum": list(KINDS)},
                            description="kinds it hides whole"),
            "fields": {**by_kind, "description": "field name prefixes it hides, by kind"},
            "events": {**by_kind, "description": "events it hides, by kind"},
            "actions": {**by_kind, "description": "the actions that act on what it hides"},
        }, ("name", "title", "kinds", "fields", "events", "actions"), closed=True,
            description="A sensitive view: what a desk that does not read it keeps from its "
                        "users."),
        "Desks": _obj({"desks": _array(_ref("Desk")), "views": _array(_ref("DeskView"))},
                      ("desks", "views"), closed=True),
    }


def _open311_new_request() -> dict[str, Any]:
    """The form of ``POST requests``: each field within its limit and free of control
    characters (the description may hold line breaks); a location is required."""

    def text(name: str, **extra: Any) -> dict[str, Any]:
        return {"type": "string", "maxLength": FIELD_LIMITS[name],
                "pattern": _FREE_TEXT_PATTERN if name == "description" else _LINE_PATTERN,
                **extra}

    degrees = {"type": "string", "pattern": r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$"}
    out = _obj({
        "api_key": {"type": "string", "minLength": 1,
                    "description": "the client application's key (issued by an admin)"},
        "jurisdiction_id": text("jurisdiction_id"),
        "service_code": text("service_code", minLength=1),
        "lat": {**degrees, "description": "WGS84 degrees, -90 to 90, with ``long``"},
        "long": {**degrees, "description": "WGS84 degrees, -180 to 180, with ``lat``"},
        **{name: text(name) for name in ("address_string", "address_id", "device_id",
                                         "account_id", "first_name", "last_name", "phone",
                                         "description")},
        "email": text("email", format="email"),
        "media_url": text("media_url", format="uri"),
    }, ("api_key", "service_code"),
        description="A citizen's request: a location is required (``lat`` and ``long``, "
                    "``address_string`` or ``address_id``), within the metropolis.")
    out["anyOf"] = [{"required": ["lat", "long"]}, {"required": ["address_string"]},
                    {"required": ["address_id"]}]
    out["dependentRequired"] = {"lat": ["long"], "long": ["lat"]}
    return out


# -- operations ------------------------------------------------------------------------------


def _content(schema: dict[str, Any], *types: str) -> dict[str, Any]:
    return {t: {"schema": schema} for t in (types or (JSON,))}


def _answer(description: str, schema: dict[str, Any], *types: str,
            headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": _content(schema, *types)}
    if headers:
        out["headers"] = headers
    return out


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or _STR}


_RETRY: Final = {"Retry-After": _header("seconds to wait before trying again",
                                        {"type": "string", "pattern": r"^\d+$"})}
_CHALLENGE: Final = {"WWW-Authenticate": _header("``Bearer realm=\"commandpost\"``, with "
                                                 "``error=\"invalid_token\"`` for a token "
                                                 "that is not one")}
_LOCATION: Final = {"Location": _header("where the new resource is read")}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _answer(description, _ref("Error"), headers=headers)


def _open311_error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _answer(description, _ref("Open311Errors"), JSON, XML, headers=headers)


_UNAUTHENTICATED: Final = _error("no bearer token, or one that is no user's", _CHALLENGE)
_UNAVAILABLE: Final = _error("the runtime or its store is briefly out of reach: try again",
                             _RETRY)
_TOO_LARGE: Final = _error("the body is larger than 1 MiB")
_BAD_JSON: Final = _error("the body is not a JSON object (or not JSON, or not sent as "
                          "``application/json``)")


def _op(op_id: str, tag: str, summary: str, responses: dict[str, Any], *,
        role: str | None = "viewer", description: str | None = None,
        parameters: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One operation; ``role`` None takes no authentication."""
    out: dict[str, Any] = {"operationId": op_id, "tags": [tag], "summary": summary}
    text = description or ""
    if role is not None:
        text = f"{text}\n\nRole: {role} or above." if text else f"Role: {role} or above."
        responses = {**responses, "401": _UNAUTHENTICATED, "503": _UNAVAILABLE}
        if role != "viewer":
            responses.setdefault("403", _error(f"the user does not hold the {role} role (or "
                                               "not in that municipality)"))
    else:
        out["security"] = []
    if text:
        out["description"] = text
    if parameters:
        out["parameters"] = parameters
    if body is not None:
        out["requestBody"] = body
    out["responses"] = dict(sorted(responses.items()))
    return out


def _path_param(name: str, description: str, example: str | None = None) -> dict[str, Any]:
    out = {"name": name, "in": "path", "required": True, "description": description,
           "schema": {"type": "string", "minLength": 1}}
    if example is not None:
        out["example"] = example
    return out


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def _json_body(schema: dict[str, Any], *, required: bool = True,
               example: dict[str, Any] | None = None) -> dict[str, Any]:
    content = _content(schema)
    if example is not None:
        content[JSON]["example"] = example
    return {"required": required, "content": content}


_FLAG: Final = {"type": "string", "enum": ["true", "false"]}
_LIMIT_HISTORY: Final = _or_empty({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                    "default": DEFAULT_LIMIT})
_HISTORY_TEXT: Final = {"type": "string", "maxLength": MAX_TEXT_FILTER}
_SINCE: Final = _query("since", _or_empty({"type": "number", "minimum": 0}),
                       "epoch seconds: nothing older is listed")
_BEFORE: Final = _query("before", _or_empty({"type": "string",
                                              "pattern": r"^\d{1,20}-\d{1,20}$"}),
                        f"the cursor of the next page, from ``{NEXT_HEADER}``")
_NEXT_BEFORE: Final = {NEXT_HEADER: _header("the next page's ``before``; absent once the "
                                            "range is exhausted")}
_ALARM_ID: Final = _path_param("alarm_id", "the alarm's id (its source, then its condition)",
                               "lc-dijon-0001.lamp_failure")
_ACCEPTED_ALARM: Final = {
    "202": _answer("journaled for the alarms coordinator", _ref("CommandAccepted"),
                   headers=_LOCATION),
    "404": _error("no such alarm, or one of a municipality the user may not read"),
    "422": _error("a field is missing, unknown or out of range, or the runtime runs no "
                  "alarms coordinator"),
    "400": _BAD_JSON,
    "413": _TOO_LARGE,
}


def _alarm_action(op_id: str, summary: str, role: str, body: dict[str, Any]
                  ) -> dict[str, Any]:
    return {"post": _op(op_id, "alarms", summary, dict(_ACCEPTED_ALARM), role=role,
                        parameters=[_ALARM_ID], body=body,
                        description="Audited (``alarm.…``). Acting on a flood summary acts on "
                                    "every child: the user must hold the role in all of their "
                                    "municipalities (403).")}


def _api_paths() -> dict[str, Any]:
    p = API_PREFIX
    entity = _path_param("entity_id", "the equipment's id", "lc-dijon-0001")
    return {
        f"{p}/health": {"get": _op(
            "health", "system", "Runtime health", {
                "200": _answer("ok or starting", _ref("Health")),
                "503": _answer("degraded: Redis or the broker unreachable, or a host failed",
                               _ref("Health")),
            }, role=None)},
        f"{p}/openapi.json": {"get": _op(
            "openapi", "system", "This document", {
                "200": _answer("the OpenAPI 3.1 document of this API", {
                    "type": "object", "required": ["openapi", "info", "paths"],
                    "properties": {"openapi": {"type": "string", "pattern": r"^3\.1\."}},
                    "description": "an OpenAPI 3.1 document"}),
            }, role=None)},
        f"{p}/system": {"get": _op(
            "system", "system", "Versions and connections (URLs with passwords redacted)", {
                "200": _answer("the runtime's connections", _ref("System")),
            }, role="admin")},
        f"{p}/tree": {"get": _op(
            "tree", "system", "The supervision tree", {
                "200": _answer("the root node", _ref("TreeNode")),
            })},
        f"{p}/equipment": {"get": _op(
            "listEquipment", "equipment", "Equipment, ordered by id, a page at a time", {
                "200": _answer("a page of equipment", _array(_ref("Equipment")), headers={
                    "X-Next-After": _header("the next page's ``after``; absent on the last "
                                            "page")}),
                "422": _error("a filter or the limit is out of range"),
            }, parameters=[
                _query("kind", _or_empty({"type": "string", "enum": list(KINDS)}),
                       "one kind"),
                _query("municipality", _STR, "one municipality's slug"),
                _query("status", _STR, "the entity's status on its host"),
                _query("online", _FLAG, "with a live device session or not"),
                _query("in_alarm", _FLAG, "with an active alarm or not"),
                _query("limit", {"type": "integer", "minimum": 1,
                                 "maximum": MAX_EQUIPMENT_PAGE,
                                 "default": DEFAULT_EQUIPMENT_PAGE}, "the page's size"),
                _query("after", _STR, "the id the page starts after (``X-Next-After``)"),
            ], description="Scoped to the municipalities the user may read.")},
        f"{p}/equipment/{{entity_id}}": {"get": _op(
            "getEquipment", "equipment", "One equipment, with its recent events, commands "
            "and active alarms", {
                "200": _answer("the equipment", _ref("EquipmentDetail")),
                "404": _error("no such equipment, or one of a municipality the user may not "
                              "read"),
            }, parameters=[entity])},
        f"{p}/equipment/{{entity_id}}/commands": {"post": _op(
            "submitCommand", "commands", "Queue a command for one equipment", {
                "202": _answer("journaled durably", _ref("CommandAccepted"),
                               headers=_LOCATION),
                "400": _BAD_JSON,
                "403": _error("not an operator, or not in the equipment's municipality"),
                "404": _error("no such equipment, or one of a municipality the user may not "
                              "read"),
                "413": _TOO_LARGE,
                "422": _error("a command the kind refuses (unknown action or field, out of "
                              "range, not finite, too long), not journaled; ``field`` names "
                              "it (``params.dim``)"),
            }, role="operator", parameters=[entity], body=_json_body(
                _ref("CommandRequest"), example={"action": "set", "params": {"dim": 50},
                                                 "idempotency_key": "dim-evening-1"}),
            description="Audited (``command.submit``), accepted or refused.")},
        f"{p}/commands/{{command_id}}": {"get": _op(
            "getCommand", "commands", "One command and where it stands", {
                "200": _answer("the command with its path's timestamps", _ref("Command")),
                "404": _error("no such command"),
            }, parameters=[_path_param("command_id", "the command's id")])},
        f"{p}/alarms": {"get": _op(
            "listAlarms", "alarms", "Alarms, by priority then newest first", {
                "200": _answer("the alarms", _array(_ref("Alarm"))),
                "422": _error("an unknown state or priority"),
            }, parameters=[
                _query("state", {"type": "string", "enum": [*sorted(ALARM_STATES), "all"]},
                       "one state, or ``all``; without it, what needs an operator's eye"),
                _query("priority", {"type": "string", "enum": sorted(ALARM_PRIORITIES)},
                       "one priority"),
                _query("municipality", _STR, "one municipality's slug"),
                _query("source", _STR, "one source entity"),
                _query("group", _STR, "a flood summary's (or an incident's) id: its "
                                      "children"),
            ], description="Scoped to the municipalities the user may read.")},
        f"{p}/alarms/{{alarm_id}}": {"get": _op(
            "getAlarm", "alarms", "One alarm", {
                "200": _answer("the alarm", _ref("Alarm")),
                "404": _error("no such alarm, or one of a municipality the user may not "
                              "read"),
            }, parameters=[_ALARM_ID])},
        f"{p}/alarms/{{alarm_id}}/ack": _alarm_action(
            "ackAlarm", "Acknowledge an alarm", "operator",
            _json_body(_ref("AckRequest"), required=False,
                       example={"comment": "crew on its way"})),
        f"{p}/alarms/{{alarm_id}}/shelve": _alarm_action(
            "shelveAlarm", f"Shelve an alarm (at most {MAX_SHELVE_MINUTES} minutes)",
            "operator", _json_body(_ref("ShelveRequest"),
                                   example={"minutes": 30, "reason": "crew on site"})),
        f"{p}/alarms/{{alarm_id}}/unshelve": _alarm_action(
            "unshelveAlarm", "Show a shelved alarm again", "operator",
            _json_body(_ref("NoBody"), required=False)),
        f"{p}/alarms/{{alarm_id}}/out-of-service": _alarm_action(
            "alarmOutOfService", "Take an alarm out of service", "admin",
            _json_body(_ref("NoBody"), required=False)),
        f"{p}/alarms/{{alarm_id}}/return-to-service": _alarm_action(
            "alarmReturnToService", "Return an alarm to service", "admin",
            _json_body(_ref("NoBody"), required=False)),
        f"{p}/crisis": {
            "get": _op("getCrisis", "crisis", "The crisis mode of each municipality", {
                "200": _answer("by municipality slug, those the user may read", {
                    "type": "object", "additionalProperties": _ref("CrisisRow")}),
            }),
            "post": _op("switchCrisis", "crisis", "Switch municipalities to a crisis mode, or "
                        "back to normal", {
                            "202": _answer("journaled for the crisis coordinator",
                                           _ref("CrisisAccepted"), headers=_LOCATION),
                            "400": _BAD_JSON,
                            "409": _error("a municipality named has a plan already (and "
                                          "``replace`` is not set)"),
                            "413": _TOO_LARGE,
                            "422": _error("an unknown field, mode or municipality"),
                        }, role="operator", body=_json_body(
                            _ref("CrisisRequest"),
                            example={"mode": "snow", "municipalities": ["dijon"]}),
                        description="Every municipality must be within the operator's. "
                                    "Audited (``crisis.activate``, ``crisis.deactivate``)."),
        },
        f"{p}/priority": {"get": _op(
            "getPriority", "priority", "The bus-priority pool", {
                "200": _answer("members, requests granted and refused, latency",
                               _ref("Priority")),
            })},
        f"{p}/energy": {"get": _op(
            "getEnergy", "energy", "Metered street-lighting energy per step", {
                "200": _answer("the report", _ref("Energy")),
                "404": _error("an unknown circuit or municipality, or one out of scope"),
                "422": _error("a bad scope, step, id or range"),
            }, parameters=[
                _query("scope", {"type": "string", "enum": list(ENERGY_SCOPES),
                                 "default": "metropolis"}, "what is summed"),
                _query("id", _STR, "the circuit's id or the municipality's slug (not for the "
                                   "metropolis)"),
                _query("from", _STR, "epoch seconds, or an ISO 8601 date or time (the city's "
                                     "local time when it names no offset), from 1970 to the "
                                     "end of 9998; with ``to``"),
                _query("to", _STR, "as ``from``; at most 62 days after it"),
                _query("step", {"type": "string", "enum": list(ENERGY_STEPS),
                                "default": "hour"}, "an hour or a night per row"),
            ], description="Without ``from`` and ``to``, the last day.")},
        f"{p}/events": {"get": _op(
            "listEvents", "history", "The event history, newest first", {
                "200": _answer("a page of events", _array(_ref("Event")),
                               headers=_NEXT_BEFORE),
                "404": _error("``entity`` names equipment of a municipality the user may not "
                              "read, or nothing that is equipment"),
                "422": _error("a filter, ``since``, ``limit`` or ``before`` is malformed"),
            }, parameters=[
                _query("entity", _HISTORY_TEXT, "one entity's"),
                _query("kind", _or_empty({"type": "string", "enum": list(KINDS)}),
                       "those of equipment of one kind"),
                _query("event", _HISTORY_TEXT, "one event name"),
                _SINCE,
                _query("limit", _LIMIT_HISTORY, "the page's size"),
                _BEFORE,
            ], description="An operator limited to some municipalities sees only the events "
                           "of equipment in them.")},
        f"{p}/audit": {"get": _op(
            "listAudit", "history", "The audit trail, newest first", {
                "200": _answer("a page of the trail", _array(_ref("AuditEntry")),
                               headers=_NEXT_BEFORE),
                "422": _error("a filter, ``limit`` or ``before`` is malformed, or ``until`` "
                              "does not come after ``since``"),
            }, role="admin", parameters=[
                _query("user", _HISTORY_TEXT, "one user's"),
                _query("action", _HISTORY_TEXT, "one action (``alarm.ack``) or a family of "
                       "them by its first part (``alarm``)"),
                _query("outcome", _or_empty({"type": "string", "enum": list(AUDIT_OUTCOMES)}),
                       "``ok`` or ``refused`` entries only"),
                _SINCE,
                _query("until", _or_empty({"type": "number", "minimum": 0}),
                       "epoch seconds: only entries written before then"),
                _query("limit", _LIMIT_HISTORY, "the page's size"),
                _BEFORE,
            ])},
        f"{p}/requests": {"post": _op(
            "openRequest", "interventions", "Take a citizen's request (an operator on the "
            "phone)", {
                "201": _answer("stored and handed to dispatch", _ref("RequestOpened"),
                               headers=_LOCATION),
                "400": _BAD_JSON,
                "403": _error("not an operator, or the point is not in his municipalities"),
                "413": _TOO_LARGE,
                "422": _error("a field is missing, unknown or malformed, an unknown "
                              "category, or the point is outside the metropolis (or not in "
                              "``municipality``)"),
            }, role="operator", body=_json_body(_ref("CitizenRequest"), example={
                "category": "pothole", "description": "A deep pothole in the right lane",
                "lat": 47.322, "lon": 5.0415}),
            description="Audited (``request.create``), accepted or refused.")},
        f"{p}/interventions": {"get": _op(
            "listInterventions", "interventions", "Interventions, newest first", {
                "200": _answer("the interventions the user may read",
                               _array(_ref("Intervention"))),
                "422": _error("an unknown state"),
            }, parameters=[
                _query("state", {"type": "string", "enum": list(INTERVENTION_STATES)},
                       "one state"),
                _query("municipality", _STR, "one municipality's slug"),
            ])},
        f"{p}/interventions/{{intervention_id}}": {"get": _op(
            "getIntervention", "interventions", "One intervention", {
                "200": _answer("the intervention", _ref("Intervention")),
                "404": _error("no such intervention, or one of a municipality the user may "
                              "not read"),
            }, parameters=[_path_param("intervention_id", "the intervention's id")])},
        f"{p}/fleet": {"get": _op(
            "listFleet", "interventions", "Service vehicles as dispatch knows them", {
                "200": _answer("the vehicles the user may read, by id",
                               _array(_ref("Vehicle"))),
                "422": _error("an unknown status"),
            }, parameters=[
                _query("municipality", _STR, "one home municipality"),
                _query("role", _STR, "one crew role (``gritter`` …)"),
                _query("status", {"type": "string", "enum": list(VEHICLE_STATUSES)},
                       "one status"),
            ])},
        f"{p}/open311/keys": {
            "get": _op("listOpen311Keys", "open311", "Applications holding an Open311 key", {
                "200": _answer("their names (never the keys)", _ref("Open311Applications")),
            }, role="admin"),
            "post": _op("issueOpen311Key", "open311", "Issue an application its Open311 key", {
                "201": _answer("the key, shown this once", _ref("Open311KeyIssued"),
                               headers=_LOCATION),
                "400": _BAD_JSON,
                "413": _TOO_LARGE,
                "422": _error("an unknown field, or a name that is not one"),
            }, role="admin", body=_json_body(_ref("Open311KeyRequest"),
                                             example={"application": "ondijon"}),
                description="Replaces the application's previous key. Audited "
                            "(``open311.key_issue``), without the key."),
        },
        f"{p}/open311/keys/{{application}}": {"delete": _op(
            "revokeOpen311Key", "open311", "Revoke an application's Open311 key at once", {
                "204": {"description": "revoked"},
                "404": _error("the application holds no key"),
                "422": _error("a name that is not one"),
            }, role="admin", parameters=[_path_param("application", "the application",
                                                     "ondijon")],
            description="Audited (``open311.key_revoke``).")},
    }


_USER_NAME: Final = {**_path_param("name", "the user's name", "alice"),
                     "schema": {"type": "string", "pattern": f"^{NAME_PATTERN}$"}}
_ETAG: Final = {"ETag": _header("the user's version, quoted: what ``If-Match`` sends back",
                                {"type": "string", "pattern": r'^"[0-9]+"$'})}
_IF_MATCH: Final = {
    "name": "If-Match", "in": "header", "required": False,
    "description": "the version read (its ``ETag``: ``\"7\"``, ``W/\"7\"`` or ``7``): the "
                   "change is refused (412) if the user changed since; ``*``: any",
    "schema": {"type": "string", "pattern": rf"^\s*(?:{IF_MATCH_PATTERN})\s*$"},
}
_NOT_ADMIN: Final = _error("the user is not an admin")
_UNKNOWN_USER: Final = _error("no such user")


def _users_paths() -> dict[str, Any]:
    p = API_PREFIX
    audited = "Audited (``{}``), done or refused, with no secret in it."
    return {
        f"{p}/users": {
            "get": _op("listUsers", "users", "Every user, ordered by name", {
                "200": _answer("the users", _array(_ref("User"))),
                "403": _NOT_ADMIN,
            }, role="admin"),
            "post": _op("addUser", "users", "Add a user", {
                "201": _answer("the user, with his first API token (and his password when "
                               "none was given), shown this once", _ref("UserCreated"),
                               headers=_LOCATION),
                "400": _BAD_JSON,
                "403": _NOT_ADMIN,
                "413": _TOO_LARGE,
                "422": _error("a field is missing, unknown or malformed; a name taken or "
                              "reserved, an unknown role or desk, a slug that is not one, or "
                              "a password too short, too long or known to everyone"),
            }, role="admin", body=_json_body(_ref("NewUser"), example={
                "name": "alice", "role": "operator", "municipalities": ["dijon"],
                "desks": ["traffic"]}),
                description=audited.format("user.add")),
        },
        f"{p}/users/{{name}}": {
            "get": _op("getUser", "users", "One user", {
                "200": _answer("the user", _ref("User"), headers=_ETAG),
                "403": _NOT_ADMIN,
                "404": _UNKNOWN_USER,
            }, role="admin", parameters=[_USER_NAME]),
            "patch": _op("changeUser", "users", "Change a user's role, municipalities or "
                         "desks, or disable or enable him", {
                "200": _answer("the user as changed", _ref("User"), headers=_ETAG),
                "400": _error("the body is not a JSON object (or not JSON, or not sent as "
                              "``application/json``), or ``If-Match`` is not a version"),
                "403": _NOT_ADMIN,
                "404": _UNKNOWN_USER,
                "409": _error("it would leave no enabled admin"),
                "412": _error("``If-Match`` names a version the user is no longer at: read "
                              "him again"),
                "413": _TOO_LARGE,
                "422": _error("a field is unknown or malformed: an unknown role or desk, or "
                              "a slug that is not one"),
            }, role="admin", parameters=[_USER_NAME, _IF_MATCH],
                body=_json_body(_ref("UserChange"), example={"desks": ["traffic", "snow"]}),
                description="Disabling him ends his sessions and stops his tokens at once; a "
                            "change of role, municipalities or desks holds from his next "
                            "request. " + audited.format("user.update")),
        },
        f"{p}/users/{{name}}/password": {"post": _op(
            "setUserPassword", "users", "Set a user's password, or reset it to a generated "
            "one", {
                "200": _answer("done; a generated password is shown this once",
                               _ref("PasswordSet")),
                "400": _BAD_JSON,
                "403": _NOT_ADMIN,
                "404": _UNKNOWN_USER,
                "413": _TOO_LARGE,
                "422": _error("an unknown field, or a password too short, too long or known "
                              "to everyone"),
            }, role="admin", parameters=[_USER_NAME],
            body=_json_body(_ref("PasswordChange"), required=False),
            description="Every session of his ends; his API tokens stay. "
                        + audited.format("user.password"))},
        f"{p}/users/{{name}}/tokens": {"post": _op(
            "issueUserToken", "users", "Issue a user a new API token", {
                "201": _answer("the token, shown this once", _ref("TokenIssued"),
                               headers=_LOCATION),
                "400": _BAD_JSON,
                "403": _NOT_ADMIN,
                "404": _UNKNOWN_USER,
                "413": _TOO_LARGE,
                "422": _error(f"an unknown field, a label too long, or the user holds "
                              f"{MAX_TOKENS} tokens already"),
            }, role="admin", parameters=[_USER_NAME],
            body=_json_body(_ref("TokenRequest"), required=False,
                            example={"label": "ci"}),
            description=audited.format("user.token_issue"))},
        f"{p}/users/{{name}}/tokens/{{token_id}}": {"delete": _op(
            "revokeUserToken", "users", "Revoke one API token of a user at once", {
                "204": {"description": "revoked"},
                "403": _NOT_ADMIN,
                "404": _error("no such user, or he holds no such token"),
            }, role="admin", parameters=[
                _USER_NAME, {**_path_param("token_id", "the token's id (``tokens[].id``)"),
                             "schema": {"type": "string",
                                        "pattern": f"^{TOKEN_ID_PATTERN}$"}}],
            description=audited.format("user.token_revoke"))},
        f"{p}/desks": {"get": _op(
            "listDesks", "desks", "The control room's desks and the sensitive views they "
            "read", {
                "200": _answer("the desks and views, in the desk file's order",
                               _ref("Desks")),
            })},
    }


#: A W3C datetime with its timezone (a date alone is midnight UTC), or empty (not given).
_W3C: Final = {"type": "string", "pattern": (
    r"^\s*(?:[0-9]{4}-[0-9]{2}-[0-9]{2}(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2}))?)?\s*$")}
#: Comma-separated request statuses (blanks between commas are skipped).
_STATUS_LIST: Final = {"type": "string", "pattern": (
    r"^\s*(?:open|closed)?\s*(?:,\s*(?:open|closed)?\s*)*$")}


def _open311_paths() -> dict[str, Any]:
    p = OPEN311_PREFIX
    fmt = {"name": "fmt", "in": "path", "required": True,
           "description": "the answer's format", "schema": {"type": "string",
                                                            "enum": list(FORMATS)}}
    jurisdiction = _query("jurisdiction_id", _STR, "this city's jurisdiction (any other: 404)")
    unavailable = _open311_error("the store is briefly out of reach: try again", _RETRY)
    not_found = "an unknown format or jurisdiction"

    def read(op_id: str, summary: str, ok: dict[str, Any], missing: str,
             parameters: list[dict[str, Any]], extra: dict[str, Any] | None = None
             ) -> dict[str, Any]:
        return _op(op_id, "open311", summary, {
            "200": ok, "404": _open311_error(missing), "503": unavailable, **(extra or {}),
        }, role=None, parameters=parameters)

    return {
        f"{p}/services.{{fmt}}": {"get": read(
            "open311Services", "The service list",
            _answer("the services", _ref("Open311Services"), JSON, XML),
            not_found, [fmt, jurisdiction])},
        f"{p}/services/{{service_code}}.{{fmt}}": {"get": read(
            "open311ServiceDefinition", "A service's definition",
            _answer("its definition (no attributes)", _ref("Open311ServiceDefinition"),
                    JSON, XML),
            f"{not_found}, or an unknown service",
            [_path_param("service_code", "the service", "pothole"), fmt, jurisdiction])},
        f"{p}/requests.{{fmt}}": {
            "get": read(
                "open311Requests", "Requests by id, or by service, dates and status",
                _answer(f"the requests, newest first (90 days and {MAX_RESULTS} at most)",
                        _ref("Open311Requests"), JSON, XML),
                not_found, [
                    fmt, jurisdiction,
                    _query("service_request_id", _STR, "comma-separated ids: when given, "
                                                       "every other criterion is ignored, as "
                                                       "GeoReport v2 has it"),
                    _query("service_code", _STR, "comma-separated service codes"),
                    _query("start_date", _W3C, "a W3C datetime with a timezone"),
                    _query("end_date", _W3C, "a W3C datetime with a timezone, at most 90 "
                                             "days after ``start_date``"),
                    _query("status", _STATUS_LIST, "comma-separated: ``open``, ``closed``"),
                ], {"400": _open311_error("a malformed parameter")}),
            "post": _op(
                "open311CreateRequest", "open311", "Open a service request", {
                    "201": _answer("the new request's id", _ref("Open311Created"), JSON, XML,
                                   headers=_LOCATION),
                    "400": _open311_error("a missing or malformed parameter, no location, "
                                          "or a point outside the metropolis"),
                    "403": _open311_error("no ``api_key``, or one that is no application's"),
                    "404": _open311_error(f"{not_found}, or an unknown service"),
                    "413": _open311_error("the body is larger than 1 MiB"),
                    "503": unavailable,
                }, role=None, parameters=[fmt],
                body={"required": True, "content": {
                    FORM: {"schema": _ref("Open311NewRequest"), "example": {
                        "api_key": "the-application-key", "service_code": "pothole",
                        "lat": "47.3220", "long": "5.0415",
                        "description": "A deep pothole in the right lane"}},
                    MULTIPART: {"schema": _ref("Open311NewRequest")}}},
                description="Form-encoded, as GeoReport v2 has it; authenticated by its "
                            "``api_key`` field alone. Audited (``open311.request_create``) "
                            "with the service and the place, never the key nor the "
                            "citizen's details."),
        },
        f"{p}/requests/{{request_id}}.{{fmt}}": {"get": read(
            "open311Request", "One request, as a list of one",
            _answer("the request", _ref("Open311Requests"), JSON, XML),
            f"{not_found}, or an unknown request",
            [_path_param("request_id", "the service request's id"), fmt, jurisdiction])},
    }


_IF_NONE_MATCH: Final = {
    "name": "If-None-Match", "in": "header", "required": False,
    "description": "the ``ETag`` of the answer read before: 304 while it is unchanged",
    "schema": {"type": "string", "maxLength": 256},
}
_NOT_MODIFIED: Final = {"description": "unchanged since the ``ETag`` in ``If-None-Match``"}


def _city_schemas() -> dict[str, Any]:
    """The city map's and the command forms' shapes (:mod:`admin_web.city_pages`)."""
    counts = {name: _COUNT for name in ("total", "online", "offline", "in_alarm")}
    position = _array(_NUM, minItems=2, maxItems=2, description="``[lon, lat]``")
    param = _obj({
        "type": {"type": "string", "enum": ["boolean", "integer", "number", "string",
                                            "array"]},
        "required": {"type": "boolean", "description": "a required string must not be blank"},
        "min": {**_NUM, "description": "inclusive, unless ``exclusive_min``"},
        "max": {**_NUM, "description": "inclusive"},
        "exclusive_min": _BOOL,
        "enum": _array({"type": ["string", "integer"]}),
        "max_length": _COUNT,
        "unit": _STR,
        "description": _STR,
        "required_when": {"type": "object", "additionalProperties": _array(_ref("JsonValue")),
                          "description": "required when another parameter (the key) takes "
                                         "one of these values"},
        "names": {"type": "object", "additionalProperties": _INT,
                  "description": "names the parameter also takes, with their numbers"},
        "items": _ref("CommandParam"),
        "max_items": _COUNT,
    }, ("type",), closed=True, description="One parameter of a command, as the equipment's "
                                           "kind validates it.")
    return {
        "CityCounts": _obj({**counts, "kinds": {
            "type": "object", "additionalProperties": _obj(
                counts, tuple(counts), closed=True), "description": "the same, by kind"}},
            (*counts, "kinds"), closed=True),
        "CityDot": _obj({
            "id": _STR,
            "kind": {"type": "string", "enum": list(KINDS)},
            "lat": _NUM,
            "lon": _NUM,
            "state": {"type": "string", "enum": list(DOT_STATES),
                      "description": "``alarm`` when in alarm, else ``offline`` or ``online``"},
        }, ("id", "kind", "lat", "lon", "state"), closed=True),
        "CityMunicipality": _obj({
            "slug": _STR,
            "name": _STR,
            "centre": _nullable(position),
            "polygon": _nullable(_array(_array(position), description="GeoJSON polygon "
                                        "rings of ``[lon, lat]``, the outer one first")),
            "counts": _ref("CityCounts"),
            "equipment": _array(_ref("CityDot"), description="the equipment drawn, where "
                                "the inventory places it (vehicles are counted, not drawn)"),
        }, ("slug", "name", "centre", "polygon", "counts", "equipment"), closed=True),
        "City": _obj({
            "bbox": _nullable(_array(_NUM, minItems=4, maxItems=4,
                                     description="``[west, south, east, north]``")),
            "totals": _ref("CityCounts"),
            "municipalities": _array(_ref("CityMunicipality")),
        }, ("bbox", "totals", "municipalities"), closed=True),
        "CommandParam": param,
        "CommandForm": _obj({
            "action": _STR,
            "params": {"type": "object", "additionalProperties": _ref("CommandParam")},
            "requires_one_of": _array(_STR, description="at least one of these parameters"),
        }, ("action", "params"), closed=True),
        "EquipmentActions": _obj({
            "id": _STR,
            "kind": {"type": "string", "enum": list(KINDS)},
            "actions": _array(_ref("CommandForm")),
            "refusal": _nullable({"type": "string", "description": "why no command (or not "
                                  "every one) is offered"}),
        }, ("id", "kind", "actions", "refusal"), closed=True),
    }


def _city_paths() -> dict[str, Any]:
    p = API_PREFIX
    return {
        f"{p}/city": {"get": _op(
            "getCity", "equipment", "The city map: each municipality's area, counts and "
            "equipment", {
                "200": _answer("the municipalities the user may read", _ref("City")),
            }, description="Each municipality the user may read, with its area, its "
                           "equipment counted (in total and by kind: online, offline, in "
                           "alarm) and drawn as dots, without the kinds his desks do not "
                           "read. Built from the hosts' equipment view and the alarms' "
                           "read model, kept a second.")},
        f"{p}/equipment/{{entity_id}}/actions": {"get": _op(
            "listEquipmentActions", "commands", "The commands the user may send to one "
            "equipment", {
                "200": _answer("its kind's commands and their parameters, as the kind "
                               "validates them; none to a viewer or outside the user's "
                               "municipalities, only those his desks command",
                               _ref("EquipmentActions")),
                "403": _error("the user's desks do not read equipment of its kind"),
                "404": _error("no such equipment, or one of a municipality the user may not "
                              "read"),
            }, parameters=[_path_param("entity_id", "the equipment's id", "lc-dijon-0001")])},
    }


def _conditional_reads(paths: dict[str, Any]) -> dict[str, Any]:
    """Each authenticated JSON read of ``/api/v1`` with its ``If-None-Match`` and 304."""
    for path, item in paths.items():
        op = item.get("get")
        if not path.startswith(API_PREFIX + "/") or op is None or op.get("security") == []:
            continue
        ok = op["responses"].get("200", {})
        if JSON not in ok.get("content", {}):
            continue
        ok.setdefault("headers", {}).setdefault(
            "ETag", _header("the answer's version, for ``If-None-Match``"))
        op["parameters"] = [*op.get("parameters", []), _IF_NONE_MATCH]
        op["responses"] = dict(sorted({**op["responses"], "304": _NOT_MODIFIED}.items()))
    return paths


@functools.cache
def _document() -> dict[str, Any]:
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "commandpost admin API",
            "version": package_version(),
            "summary": "The command post's equipment, alarms, crisis plans, interventions, "
                       "history, energy, users and desks; Open311 GeoReport v2 for "
                       "citizens' apps.",
            "description": "JSON under ``/api/v1``. Roles: ``viewer`` reads, ``operator`` "
                           "commands and acts on alarms, crisis plans and requests within "
                           "his municipalities, ``admin`` does everything and manages the users. "
                           "Unauthenticated: "
                           "401; not allowed: 403; an unknown id or another municipality's: "
                           "404; a bad body: 400 or 422 with ``{\"error\", \"field\"}``; a user "
                           "changed since the ``If-Match`` version: 412. "
                           "The pages' login session (a cookie) authenticates the API too: "
                           "reads freely, changes only with the session's CSRF token in the "
                           "``X-CSRF-Token`` header. A read answers with an ``ETag``; sent "
                           "back in ``If-None-Match``, an unchanged answer is a 304 "
                           "without a body.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}, {"session": []}],
        "tags": [{"name": name} for name in (
            "system", "equipment", "commands", "alarms", "crisis", "priority", "energy",
            "history", "interventions", "users", "desks", "open311")],
        "paths": _conditional_reads({**_api_paths(), **_city_paths(), **_users_paths(),
                                     **_open311_paths()}),
        "components": {
            "schemas": {**_schemas(), **_city_schemas()},
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "a user's API token"},
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
                            "description": "the pages' login session; a change also "
                                           "needs the ``X-CSRF-Token`` header"},
            },
        },
    }


def openapi_document(*, open311: bool = True) -> dict[str, Any]:
    """The OpenAPI document, a fresh copy; without the Open311 paths unless ``open311``."""
    doc = copy.deepcopy(_document())
    if not open311:
        doc["paths"] = {path: item for path, item in doc["paths"].items()
                        if not path.startswith(OPEN311_PREFIX + "/")}
    return doc


@openapi.get("/openapi.json")
def document() -> ResponseReturnValue:
    """The OpenAPI 3.1 document of this API, without authentication."""
    return jsonify(openapi_document(open311="open311" in current_app.blueprints))
