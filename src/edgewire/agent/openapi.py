"""The agent's OpenAPI 3.1 document (``GET /openapi.json``), written out by hand.

Not FastAPI's generated one: that would describe whatever the handlers' signatures
happen to say, and list every route to anyone. This one says what each route takes
and answers, and nothing about how it is built; ``/openapi.json`` is behind the
management check (the token, or loopback when the agent has none).
``tests/agent/test_openapi.py`` checks that its paths and methods are the app's routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgewire import __version__
from edgewire.serve.kserve import DATATYPES, HEADER_LENGTH
from edgewire.serve.store import DEFAULT_ALIAS, NAME

Schema = dict[str, Any]

OPENAPI_PATH = "/openapi.json"

_NAME: Schema = {"type": "string", "pattern": NAME.pattern}
_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
}
_TENSOR_META: Schema = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"enum": sorted(DATATYPES)},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}
_PARAMETERS: Schema = {"type": "object", "additionalProperties": True}
_INFER_REQUEST: Schema = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_output": {"type": "boolean"}},
        },
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"enum": sorted(DATATYPES)},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                    },
                    "data": {"type": "array"},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data": {"type": "boolean"}},
                    },
                },
            },
        },
    },
}
_INFER_RESPONSE: Schema = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": {"type": "object"}},
    },
}
_JOB: Schema = {
    "type": "object",
    "required": ["id", "kind", "state", "attempts", "max_attempts"],
    "properties": {
        "id": {"type": "integer"},
        "kind": {"type": "string"},
        "state": {"enum": ["queued", "running", "succeeded", "failed"]},
        "attempts": {"type": "integer"},
        "max_attempts": {"type": "integer"},
        "error": {"type": ["string", "null"]},
    },
}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Schema:
    return _json({"$ref": "#/components/schemas/Error"}, description)


def _object(required: Sequence[str] = (), **properties: Schema) -> Schema:
    return {"type": "object", "required": list(required), "properties": properties}


def _path(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema,
            "description": description}  # fmt: skip


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}  # fmt: skip


_MODEL = _path("name", _NAME, "The model's name.")
_VERSION = _path("version", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "A version number.")
_FLAG: Schema = {"enum": ["1", "0", "true", "false", "yes", "no"]}
#: Every management route answers these too.
_GUARDED = {"401": _error("The token is missing or wrong (or, without one, a remote caller).")}
_SECURED: list[Schema] = [{"bearer": []}]


def _operation(summary: str, responses: Schema, *, guarded: bool = False, **more: Any) -> Schema:
    op: Schema = {"summary": summary, "responses": responses, **more}
    if guarded:
        op["security"] = _SECURED
        op["responses"] = {**responses, **_GUARDED}
    return op


def _kserve_paths() -> dict[str, Schema]:
    paths: dict[str, Schema] = {}
    for prefix, params in (
        ("/v2/models/{name}", [_MODEL]),
        ("/v2/models/{name}/versions/{version}", [_MODEL, _VERSION]),
    ):
        not_found = {"404": _error("No such model (or it serves another version).")}
        paths[prefix] = {"get": _operation("KServe v2 model metadata", {
            "200": _json(_object(["name", "versions", "platform", "inputs", "outputs"],
                                 name={"type": "string"},
                                 versions={"type": "array", "items": {"type": "string"}},
                                 platform={"type": "string"},
                                 inputs={"type": "array", "items": _TENSOR_META},
                                 outputs={"type": "array", "items": _TENSOR_META}),
                         "The model's inputs and outputs."),
            **not_found}, parameters=params)}  # fmt: skip
        paths[prefix + "/ready"] = {"get": _operation("Whether the model is served", {
            "200": _json(_object(["name", "ready"], name={"type": "string"},
                                 ready={"type": "boolean"}), "It is served."),
            "404": _json(_object(["name", "ready"], name={"type": "string"},
                                 ready={"type": "boolean"}), "It is not."),
        }, parameters=params)}  # fmt: skip
        paths[prefix + "/config"] = {"get": _operation("Triton's model configuration", {
            "200": _json({"type": "object", "required": ["name", "platform", "max_batch_size"]},
                         "Batching, inputs and outputs."),
            **not_found}, parameters=params)}  # fmt: skip
        paths[prefix + "/infer"] = {"post": _operation("KServe v2 inference", {
            "200": {"description": "The outputs (JSON, or JSON and binary tensor data).",
                    "content": {"application/json": {"schema": _INFER_RESPONSE},
                                "application/octet-stream": {}}},
            "400": _error("A malformed request (or data that does not fit the model)."),
            **not_found,
            "413": _error("The body is over max_request_bytes."),
            "503": _error("Busy: the queue or the shared byte budget is full; retry."),
        }, parameters=[*params, {
            "name": HEADER_LENGTH, "in": "header", "required": False,
            "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
            "description": "With binary tensor data: the byte length of the JSON part.",
        }], requestBody={"required": True, "content": {
            "application/json": {"schema": _INFER_REQUEST},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        }})}  # fmt: skip
    return paths


def _management_paths() -> dict[str, Schema]:
    refused = {"404": _error("No such model, version or alias."),
               "422": _error("The change is refused (the model does not load, ...)."),
               "400": _error("A malformed request.")}  # fmt: skip
    upload = _operation("Upload a model file as a new version (PUT and POST alike)", {
        "201": _json(_object(["name", "version", "format", "sha256"], name={"type": "string"},
                             version={"type": "integer"}, format={"type": "string"},
                             sha256={"type": "string"}, alias={"type": "string"},
                             active={"type": "boolean"}), "Stored (and serving, if activated)."),
        **refused,
        "413": _error("The file is over max_upload_bytes."),
        "507": _error("The disk budget has no room for it."),
    }, guarded=True, parameters=[
        _MODEL,
        _query("sha256", {"type": "string", "pattern": "^[0-9a-f]{64}$"},
               "The file's sha256 (hex); a mismatch is refused."),
        _query("alias", _NAME, f"The alias that moves to it (default {DEFAULT_ALIAS!r})."),
        _query("filename", {"type": "string"}, "The file's name: its suffix must fit its format."),
        _query("activate", _FLAG, "0: store it without serving it."),
        # Gated deploys (agent/gate.py): scored on gate data before the alias moves.
        _query("gate", {"type": "string", "pattern": "^[0-9a-f]{64}$"},
               "The sha256 of gate data sent to /api/gate-data: score the new version (and "
               "the served one) on it first; a worse one is refused (422) and kept unserved."),
        _query("min_accuracy", {"type": "string"}, "Gate: the least accuracy, 0..1."),
        _query("no_worse_than", {"type": "string"},
               "Gate: points (0..100) below the served version's accuracy allowed (default 0)."),
    ], requestBody={"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    )  # fmt: skip
    named = _json(_object(["name", "version", "alias"], name={"type": "string"},
                          version={"type": "integer"}, alias={"type": "string"}),
                  "What the alias names now.")  # fmt: skip
    gate_data = _operation("Send the samples for one gated upload", {
        "201": _json(_object(["gate", "size"], gate={"type": "string"}, size={"type": "integer"}),
                     "Kept until the upload that names it."),
        "400": _error("A malformed request or a sha256 that does not match."),
        "413": _error("Over the gate data's size cap."),
        "507": _error("The disk budget has no room for it."),
    }, guarded=True, operationId="putGateData", parameters=[
        {**_query("sha256", {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                  "The body's sha256 (hex)."), "required": True},
    ], requestBody={"required": True, "content": {"application/octet-stream": {"schema": {
        "type": "string", "format": "binary",
        "description": ".npz: uint8 x (N×C×H×W), int64 y, str classes; read without pickles"}}}},
    )  # fmt: skip
    return {
        "/api/gate-data": {"put": gate_data},
        "/api/models": {"get": _operation("The stored models, their versions and aliases", {
            "200": _json(_object(["models"], models={"type": "array", "items": {"type": "object"}}),
                         "Every model."),
        }, guarded=True)},
        "/api/models/{name}": {
            "put": {**upload, "operationId": "uploadModel"},
            "post": {**upload, "operationId": "uploadModelPost"},
            "delete": _operation("Delete a model, all its versions and aliases", {
                "200": _json(_object(["name", "deleted"], name={"type": "string"},
                                     deleted={"type": "array", "items": {"type": "integer"}}),
                             "Deleted."), **refused,
            }, guarded=True, parameters=[_MODEL]),
        },
        "/api/models/{name}/activate": {"post": _operation("Serve a version under an alias", {
            "200": named, **refused}, guarded=True, parameters=[_MODEL],
            requestBody={"required": True, "content": {"application/json": {"schema": _object(
                ["version"], version={"type": ["integer", "string"]}, alias=_NAME)}}})},
        "/api/models/{name}/rollback": {"post": _operation(
            "Move an alias back to the version it named before", {"200": named, **refused},
            guarded=True, parameters=[_MODEL],
            requestBody={"required": False, "content": {"application/json": {"schema": _object(
                alias=_NAME)}}})},
        "/api/models/{name}/versions/{version}": {"delete": _operation("Delete one version", {
            "200": _json(_object(["name", "deleted"], name={"type": "string"},
                                 deleted={"type": "integer"}, serving={"type": "integer"}),
                         "Deleted (and what serves instead)."), **refused,
            "422": _error("It is served, and force is not set (or nothing else could serve)."),
        }, guarded=True, parameters=[_MODEL, _VERSION,
                                     _query("force", _FLAG, "1: delete it even while served.")])},
        "/api/models/{name}/versions/{version}/file": {"get": _operation(
            "One version's model file (another agent's automation source fetches it)", {
                "200": {"description": "The model file; its sha256 in X-Edgewire-Sha256.",
                        "content": {"application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}}}},
                "400": _error("A bad version number, or a model kept in several files."),
                "404": _error("No such model or version."),
            }, guarded=True, parameters=[_MODEL, _VERSION])},
        "/api/models/{name}/aliases/{alias}": {"delete": _operation("Remove an alias", {
            "200": _json(_object(["name", "alias"], name={"type": "string"},
                                 alias={"type": "string"}, was={}), "Removed."), **refused,
        }, guarded=True, parameters=[_MODEL, _path("alias", _NAME, "The alias.")])},
    }  # fmt: skip


def _automation_paths(hooks: Sequence[str]) -> dict[str, Schema]:
    paths: dict[str, Schema] = {}
    for hook in hooks:
        paths[f"/hooks/{hook}"] = {"post": _operation(f"A webhook delivery for hook {hook!r}", {
            "200": _json(_object(["job", "status"], job={"type": ["integer", "null"]},
                                 status={"enum": ["duplicate", "ignored"]}),
                         "Seen before, or no rule matches."),
            "202": _json(_object(["job", "status"], job={"type": "integer"},
                                 status={"const": "queued"}), "Queued as a job."),
            "400": _error("A malformed delivery."),
            "401": _error("The signature (or token) is missing or wrong."),
            "403": _error("Not on the allow-list."),
            "413": _error("The body is over the hook's cap."),
            "429": _error("Over the hook's rate limit (see Retry-After)."),
            "503": _error("The queue is full; retry."),
        }, description="Signed as the hook's kind says (W&B, Standard Webhooks, GitHub).",
            requestBody={"required": True, "content": {"application/json": {
                "schema": {"type": "object"}}}})}  # fmt: skip
    paths["/api/jobs"] = {"get": _operation("The newest jobs and the count in each state", {
        "200": _json(_object(["jobs", "counts"], jobs={"type": "array", "items": _JOB},
                             counts={"type": "object",
                                     "additionalProperties": {"type": "integer"}}),
                     "The jobs, newest first."),
        "400": _error("A bad limit."),
        "503": _error("The queue is not open (starting or stopping)."),
    }, guarded=True, parameters=[
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "How many (50)."),
    ])}  # fmt: skip
    paths["/api/jobs/{id}"] = {"get": _operation("One job, with its log tail", {
        "200": _json(_JOB, "The job."),
        "400": _error("Not a job id."),
        "404": _error("No such job (finished ones are pruned in time)."),
    }, guarded=True, parameters=[
        _path("id", {"type": "integer", "minimum": 0}, "The job's id."),
    ])}  # fmt: skip
    return paths


def _train_remote_paths() -> dict[str, Schema]:
    """Remote training (``agent/train_remote.py``)."""
    sha: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
    run = _path("run_id", _NAME, "The run's id.")
    no_run = {"404": _error("No such run (or no such result file).")}
    entry = _object(["path", "sha256", "size"], path={"type": "string", "maxLength": 255},
                    sha256=sha, size={"type": "integer", "minimum": 0})  # fmt: skip
    status = _object(["run_id", "state"], run_id={"type": "string"},
                     state={"enum": ["queued", "running", "succeeded", "failed", "stopped"]})  # fmt: skip
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return {
        "/api/datasets": {"post": _operation("Send a data set's manifest; the files it lacks", {
            "200": _json(_object(["dataset", "files", "bytes", "missing", "missing_bytes"],
                                 dataset=sha, files={"type": "integer"},
                                 bytes={"type": "integer"},
                                 missing={"type": "array", "items": sha},
                                 missing_bytes={"type": "integer"}),
                         "Stored; upload the missing files next (PUT /api/blobs/SHA256)."),
            "400": _error("A malformed manifest (a path with '..', absolute, repeated, ...)."),
            "413": _error("Over max_dataset_files or max_dataset_bytes."),
            "503": _error("Busy: the shared byte budget is full; retry."),
        }, guarded=True, requestBody={"required": True, "content": {"application/json": {
            "schema": _object(["files"], files={"type": "array", "items": entry})}}})},
        "/api/blobs": {"post": _operation("Upload many small files in one body (a pack)", {
            "201": _json(_object(["files", "stored"], files={"type": "integer"},
                                 stored={"type": "integer"}), "Checked and stored."),
            "400": _error("A torn pack, no Content-Length, or a file whose sha256 differs."),
            "413": _error("Over max_dataset_bytes, or a record over 4 MiB."),
            "503": _error("Busy: the shared byte budget is full; retry."),
            "507": _error("The disk budget has no room for it."),
        }, guarded=True, description="Records of sha256 (32 bytes), size (8 bytes, big-endian) "
            "and the file's bytes, one after the other.",
            requestBody={"required": True, "content": binary})},
        "/api/blobs/{sha256}": {"put": _operation("Upload one file of a data set (or a checkpoint)", {
            "200": _json(_object(["sha256", "stored"], sha256=sha, size={"type": "integer"},
                                 stored={"type": "boolean"}), "It was there already."),
            "201": _json(_object(["sha256", "stored"], sha256=sha, size={"type": "integer"},
                                 stored={"type": "boolean"}), "Stored."),
            "400": _error("Not a sha256, no Content-Length, or the body's sha256 differs."),
            "413": _error("Over max_dataset_bytes."),
            "503": _error("Busy: the shared byte budget is full; retry."),
            "507": _error("The disk budget has no room for it."),
        }, guarded=True, parameters=[_path("sha256", sha, "The file's sha256 (hex).")],
            requestBody={"required": True, "content": binary})},
        "/api/train": {"post": _operation("Train an uploaded data set here", {
            "202": _json(_object(["run_id", "state", "events"], run_id={"type": "string"},
                                 state={"type": "string"}, events={"type": "string"}),
                         "Started (or queued behind other training)."),
            "400": _error("Bad options, an unknown data set or a taken run id."),
            "503": _error("Another run is training; wait or stop it."),
            "507": _error("The disk budget has no room for a run."),
        }, guarded=True, requestBody={"required": True, "content": {"application/json": {
            "schema": _object(["dataset"], dataset=sha, options={"type": "object"},
                              init={"type": ["string", "null"]}, run_id=_NAME)}}})},
        "/api/train/{run_id}": {"get": _operation("A run: state, last event, summary, files", {
            "200": _json(status, "The run."), **no_run}, guarded=True, parameters=[run])},
        "/api/train/{run_id}/events": {"get": _operation("The run's events (server-sent)", {
            "200": {"description": "Events (id, event, data) until a summary or an error.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "400": _error("A bad after."), **no_run,
        }, guarded=True, parameters=[run, _query(
            "after", {"type": "string", "pattern": "^[0-9]{1,18}$"},
            "Send the events after this one (a reconnect; or the Last-Event-ID header).")])},
        "/api/train/{run_id}/files/{name}": {"get": _operation("A result file of the run", {
            "200": {"description": "The file; its sha256 in X-Edgewire-Sha256.",
                    "content": binary}, **no_run,
        }, guarded=True, parameters=[run, _path("name", {"type": "string"}, "The file name.")])},
        "/api/train/{run_id}/stop": {"post": _operation("Stop the run between batches", {
            "200": _json(_object(["run_id", "state", "stopping"], run_id={"type": "string"},
                                 state={"type": "string"}, stopping={"type": "boolean"}),
                         "It stops; its report is still written."), **no_run,
        }, guarded=True, parameters=[run])},
    }  # fmt: skip


def _live_paths() -> dict[str, Schema]:
    """Live runs (``agent/live_api.py``): ``edgewire run`` and ``edgewire runs``."""
    run_id = _path("id", {"type": "string", "pattern": "^[0-9a-f]{12}$"}, "The run's id.")
    no_run = {"404": _error("No such live run (finished ones are kept a while).")}
    summary = _object(["id", "state", "frames"], id={"type": "string"},
                      state={"enum": ["running", "finished", "stopped", "failed"]},
                      frames={"type": "integer"}, per_class={"type": "object"},
                      transitions={"type": "integer"})  # fmt: skip
    actions: Schema = {"oneOf": [
        {"const": "agent"},
        _object(run=_object(threshold={"type": "number"}, debounce={"type": "integer"},
                            hold_s={"type": "number"},
                            pins={"enum": ["auto", "sim", "gpiod", "jetson"]}),
                classes={"type": "object", "additionalProperties": _object(
                    pin={"type": "integer"}, post={"type": "string"},
                    timeout_s={"type": "number"})}),
    ]}  # fmt: skip
    request = _object(["model", "source"], model=_NAME, source={"type": "string"},
                      rate={"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                      actions=actions, max_frames={"type": "integer", "minimum": 1},
                      loop={"type": "boolean"})  # fmt: skip
    return {
        "/api/runs": {
            "post": _operation("Start a live run: a source on the agent's machine (or push), a model, pins", {
                "201": _json(summary, "Started; follow /api/runs/{id}/events."),
                "400": _error("A malformed request, a bad source or bad actions."),
                "403": _error("A command from the network, a POST off run_post_allow, or a "
                              "file or URL source off run_source_allow."),
                "404": _error("The model is not served."),
                "500": _error("The model cannot take camera frames."),
                "502": _error("The camera or stream cannot be reached."),
                "503": _error("max_live_runs are running, or their pins are in use."),
                "504": _error("The stream did not answer in time."),
            }, guarded=True, requestBody={"required": True, "content": {
                "application/json": {"schema": request}}}),
            "get": _operation("The live runs, newest first", {
                "200": _json(_object(["runs"], runs={"type": "array", "items": summary}),
                             "Each with its summary so far."),
            }, guarded=True),
        },
        "/api/runs/{id}": {"get": _operation("One live run: summary, pins, actions", {
            "200": _json(summary, "With pin_levels and pin_transitions."),
            **no_run}, guarded=True, parameters=[run_id])},
        "/api/runs/{id}/events": {"get": _operation("The run's server-sent events", {
            "200": {"description": "frame and action events, then summary.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "400": _error("A bad after."), **no_run,
        }, guarded=True, parameters=[run_id, _query(
            "after", {"type": "string", "pattern": "^[0-9]{1,18}$"},
            "The last event seen: resume after it (or the Last-Event-ID header).")])},
        "/api/runs/{id}/stop": {"post": _operation("Stop a live run (its pins low)", {
            "200": _json(summary, "Stopped."), **no_run}, guarded=True, parameters=[run_id])},
        "/api/runs/{id}/frame": {
            "post": _operation("A push run's next frame (the newest wins)", {
                "202": _json(_object(["frame", "dropped"], frame={"type": "integer"},
                                     dropped={"type": "integer"}),
                             "Taken: frames pushed so far, frames never classified."),
                "400": _error("Not a push run, an ended one, or not one JPEG or PNG image."),
                "413": _error("Over 4 MiB, or over the pixel limit."), **no_run,
                "503": _error("Too many frames decoding, or bodies arriving, at once."),
                "504": _error("The body stalled."),
            }, guarded=True, parameters=[run_id], requestBody={"required": True, "content": {
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}}}}),
            "get": _operation("The run's newest classified frame", {
                "200": {"description": "A JPEG, at most 640 pixels a side.", "content": {
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                "404": _error("No such live run, or no frame of it classified yet."),
            }, guarded=True, parameters=[run_id]),
        },
    }  # fmt: skip


def _peers_paths() -> dict[str, Schema]:
    """Other agents: registry, proxy, data set pushes, deploys (``agent/peers.py``,
    ``agent/deploy_api.py``)."""
    # fmt: off
    agent = _path("name", _NAME, "The other agent's name.")
    public = _object(["name", "url"], name=_NAME, url={"type": "string"})
    no_agent = {"404": _error("No agent of that name (or no such workspace).")}
    bad = {"400": _error("A malformed body or a bad field.")}
    nullable_name: Schema = {"oneOf": [_NAME, {"type": "null"}]}
    gate = {"oneOf": [{"type": "null"}, _object(
        ["samples", "min_accuracy", "no_worse_than", "passed"], samples={"type": "integer"},
        min_accuracy={"type": ["number", "null"]}, no_worse_than={"type": ["number", "null"]},
        passed={"type": ["boolean", "null"]})]}
    result = _object(["agent", "ok", "version", "gate", "error"], agent=nullable_name,
                     ok={"type": "boolean"}, version={"type": ["integer", "null"]}, gate=gate,
                     error={"type": ["string", "null"]})
    order = _object(["workspace", "run", "model", "targets"], workspace=_NAME,
                    run=_object(["run_id"], agent=nullable_name, run_id=_NAME), model=_NAME,
                    targets={"type": "array", "minItems": 1, "maxItems": 16,
                             "items": nullable_name},
                    min_accuracy={"type": ["number", "null"], "minimum": 0, "maximum": 1},
                    no_worse_than={"type": ["number", "null"], "minimum": 0, "maximum": 100})
    proxied = {"default": {"description": "The other agent's answer, streamed back as it "
                                          "came (event streams too).",
                           "content": {"*/*": {"schema": {}}}},
               "400": _error("A path off api/, v2/ and metrics, under api/agents, or with "
                             "'..' or encoded slashes."),
               "404": _error("No agent of that name."),
               "502": _error("The other agent cannot be reached."),
               "503": _error("Too many requests to other agents in flight."),
               "504": _error("The other agent did not answer in time.")}
    proxy = {m: _operation(f"{m.upper()} on the other agent's own API, with its token",
                           proxied, guarded=True,
                           parameters=[agent, _path("path", {"type": "string"},
                                                    "Under api/ or v2/, or metrics.")])
             for m in ("get", "post", "put", "delete", "patch")}
    return {
        "/api/agents": {
            "get": _operation("The other agents this one knows (never their tokens)", {
                "200": _json(_object(["agents"], agents={"type": "array", "items": public}),
                             "Sorted by name.")}, guarded=True),
            "post": _operation("Add another agent: its name, URL and token", {
                "201": _json(public, "Added."), **bad,
            }, guarded=True, requestBody={"required": True, "content": {"application/json": {
                "schema": _object(["name", "url", "token"], name=_NAME,
                                  url={"type": "string", "pattern": "^https?://"},
                                  token={"type": "string", "minLength": 8})}}}),
        },
        "/api/agents/{name}": {"delete": _operation("Forget another agent", {
            "200": _json(_object(["deleted"], deleted=_NAME), "Forgotten."), **no_agent,
        }, guarded=True, parameters=[agent])},
        "/api/agents/{name}/proxy/{path}": proxy,
        "/api/agents/{name}/datasets": {"post": _operation(
            "Send a workspace's split to the other agent for training there", {
                "200": _json(_object(["agent", "dataset", "files", "uploaded"], agent=_NAME,
                                     dataset={"type": "string"}, files={"type": "integer"},
                                     uploaded={"type": "integer"}),
                             "On the other agent; start POST .../proxy/api/train with it."),
                **bad, **no_agent,
                "502": _error("The other agent cannot be reached or refused the upload."),
                "503": _error("Too many pushes or requests to other agents at once."),
            }, guarded=True, parameters=[agent], requestBody={"required": True, "content": {
                "application/json": {"schema": _object(["workspace"], workspace=_NAME)}}})},
        "/api/deploy": {"post": _operation(
            "Deploy a run's model to agents behind a gate on the workspace's test split", {
                "200": _json(_object(["results"], results={"type": "array", "items": result}),
                             "One result per target, each on its own."),
                **bad, **no_agent,
                "502": _error("The run's agent cannot be reached or refused the download."),
                "503": _error("A deploy is under way."),
            }, guarded=True, requestBody={"required": True, "content": {
                "application/json": {"schema": order}}})},
    }
    # fmt: on


def _dashboard_paths() -> dict[str, Schema]:
    """The dashboard (``edgewire.dashboard``): its HTML pages, login, and overview data."""
    html = {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}
    to_login = {"description": "No session: to the login form (with a token configured)."}
    page = {
        "get": _operation(
            "A dashboard page (HTML)",
            {"200": html, "303": to_login, "403": _error("Not loopback.")},
        )
    }
    form = {
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": _object(["token"], token={"type": "string"}, next={"type": "string"})
            }
        }
    }
    overview = _object(["version", "ready", "protocols", "models"])
    paths: dict[str, Schema] = {
        p: page for p in ("/", "/models", "/workspaces", "/run", "/jobs", "/agents")
    }
    paths["/workspaces/{ws}"] = {
        "get": {
            **page["get"],
            "responses": {**page["get"]["responses"], "400": _error("Not a workspace name.")},
            "parameters": [_path("ws", {"type": "string"}, "The workspace.")],
        }
    }
    paths["/login"] = {
        "get": _operation("The login form", {"200": html, "303": {"description": "No token."}}),
        "post": _operation(
            "Log in with the token: sets the HttpOnly session cookie",
            {"303": {"description": "Logged in: to the page asked for."}, "401": html, "429": html},
            requestBody=form,
        ),
    }
    paths["/logout"] = {
        "post": _operation(
            "End the session (the page's CSRF token in the form)",
            {"303": {"description": "Logged out."}, "401": _error("Not the dashboard's form.")},
        )
    }
    paths["/static/{name}"] = {
        "get": _operation(
            "A script or style of the dashboard",
            {
                "200": {
                    "description": "The file.",
                    "content": {"text/javascript": {}, "text/css": {}},
                },
                "404": {"description": "Not one of its files."},
            },
            parameters=[_path("name", {"type": "string"}, "The file name.")],
        )
    }
    paths["/api/overview"] = {
        "get": _operation(
            "Health, device, traffic per protocol, models",
            {"200": _json(overview, "The overview.")},
            guarded=True,
        )
    }
    paths["/api/overview/events"] = {
        "get": _operation(
            "The overview each second (server-sent)",
            {
                "200": {"description": "Events.", "content": {"text/event-stream": {}}},
                "503": _error("Too many overview streams."),
            },
            guarded=True,
        )
    }
    return paths


def _workspaces_paths() -> dict[str, Schema]:
    """Workspaces on the agent: classes, images, capture, split (``agent/workspaces_api.py``)."""
    # fmt: off
    ws = _path("ws", _NAME, "The workspace's name.")
    cls = _path("cls", {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
                "One of the workspace's classes.")
    file = _path("file", {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"},
                 "An image's file name, as the workspace lists it.")
    counts: Schema = {"type": "object", "additionalProperties": {"type": "integer"}}
    parts = _object(["train", "val", "test"], train={"type": "integer"},
                    val={"type": "integer"}, test={"type": "integer"})
    split: Schema = {"oneOf": [{"type": "null"}, parts]}
    names: Schema = {"type": "array", "items": {"type": "string"}}
    summary = _object(["name", "classes", "counts", "split"], name={"type": "string"},
                      classes=names, counts=counts, split=split, error={"type": "string"})
    detail = _object(["name", "classes", "counts", "images", "split"], name={"type": "string"},
                     classes=names, counts=counts, split=split,
                     images={"type": "object", "additionalProperties": names})
    bad = {"400": _error("A malformed body, a bad name or field, or an unknown class.")}
    no_ws = {"404": _error("No such workspace (or image).")}
    busy = {"503": _error("The workspace is busy (a capture or a split), or the agent is "
                          "receiving too many bodies at once.")}
    body_errors = {"413": _error("The body is over its cap."),
                   "504": _error("The body stalled or took too long."),
                   "507": _error("The disk budget has no room for it.")}
    images = {"image/jpeg": {"schema": {"type": "string", "format": "binary"}},
              "image/png": {"schema": {"type": "string", "format": "binary"}},
              "image/webp": {"schema": {"type": "string", "format": "binary"}}}
    served = {k: {"schema": {"type": "string", "format": "binary"}}
              for k in ("image/jpeg", "image/png", "image/bmp", "image/webp",
                        "application/octet-stream")}

    def body(schema: Schema) -> Schema:
        return {"required": False, "content": {"application/json": {"schema": schema}}}

    deleted = _json(_object(["deleted"], deleted={"type": "string"}), "Deleted.")
    return {
        "/api/workspaces": {
            "get": _operation("The workspaces, their classes, image counts and split", {
                "200": _json(_object(["workspaces"], workspaces={"type": "array",
                                                                  "items": summary}),
                             "Sorted by name."),
            }, guarded=True),
            "post": _operation("Make a workspace with its classes (at most 64 workspaces)", {
                "201": _json(detail, "Made."), **bad, **busy, **body_errors,
                "409": _error("A workspace of that name exists."),
            }, guarded=True, requestBody={"required": True, "content": {"application/json": {
                "schema": _object(["name", "classes"], name=_NAME, classes={
                    "type": "array", "minItems": 2, "maxItems": 256, "items": cls["schema"]})}}}),
        },
        "/api/workspaces/{ws}": {
            "get": _operation("A workspace: classes, counts, image names (newest first), split", {
                "200": _json(detail, "The workspace."), **bad, **no_ws,
            }, guarded=True, parameters=[ws, _query(
                "limit", {"type": "string", "pattern": "^[0-9]{1,6}$"},
                "List at most this many image names per class (the newest); counts stay whole.")]),
            "delete": _operation("Delete a workspace and all its images", {
                "200": deleted, **bad, **no_ws, **busy,
            }, guarded=True, parameters=[ws]),
        },
        "/api/workspaces/{ws}/images/{cls}": {"post": _operation(
            "Add one image to a class (JPEG, PNG or WebP; stored once by its content)", {
                "201": _json(_object(["file", "new", "count"], file={"type": "string"},
                                     new={"type": "boolean"}, count={"type": "integer"}),
                             "Stored (new: false when the class had it already)."),
                **bad, **no_ws, **busy, **body_errors,
            }, guarded=True, parameters=[ws, cls], requestBody={"required": True,
                                                                "content": images})},
        "/api/workspaces/{ws}/images/{cls}/{file}": {
            "get": _operation("One image (thumb=1: a JPEG at most 96 pixels a side)", {
                "200": {"description": "The image.", "content": served}, **bad, **no_ws,
                "413": _error("The image is too large to make a thumbnail of."),
            }, guarded=True, parameters=[ws, cls, file, _query("thumb", _FLAG,
                                                               "1: a small JPEG.")]),
            "delete": _operation("Delete one image", {
                "200": deleted, **bad, **no_ws, **busy,
            }, guarded=True, parameters=[ws, cls, file]),
        },
        "/api/workspaces/{ws}/capture": {"post": _operation(
            "Capture frames from the agent's own camera, stream or video into a class", {
                "200": _json(_object(["saved", "duplicates", "seen"], saved={"type": "integer"},
                                     duplicates={"type": "integer"}, seen={"type": "integer"}),
                             "Done: frames stored, frames already there, frames read."),
                **bad, **no_ws, **busy, **body_errors,
                "403": _error("A file or URL source off run_source_allow."),
                "502": _error("The camera or stream cannot be reached."),
            }, guarded=True, parameters=[ws], requestBody={"required": True, "content": {
                "application/json": {"schema": _object(
                    ["class", "source"], **{"class": cls["schema"]}, source={"type": "string"},
                    count={"type": "integer", "minimum": 1, "maximum": 1000},
                    every={"type": "number", "minimum": 0, "maximum": 60})}}})},
        "/api/workspaces/{ws}/split": {"post": _operation(
            "Split the images into train/val/test (stratified, seeded)", {
                "200": _json({**parts, "required": ["train", "val", "test", "classes"],
                              "properties": {**parts["properties"], "classes": {
                                  "type": "object", "additionalProperties": parts}}},
                             "Images in each split, in all and per class."),
                **bad, **no_ws, **busy, **body_errors,
            }, guarded=True, parameters=[ws], requestBody=body(_object(
                ratios={"type": "array", "minItems": 3, "maxItems": 3,
                        "items": {"type": "number", "minimum": 0, "maximum": 1}},
                seed={"type": "integer", "minimum": 0, "maximum": 2**32 - 1})))},
        "/api/workspaces/{ws}/dataset": {"post": _operation(
            "The split as a data set of this agent, for POST /api/train", {
                "200": _json(_object(["dataset", "files", "bytes"], dataset={"type": "string"},
                                     files={"type": "integer"}, bytes={"type": "integer"}),
                             "Its id, files and bytes."),
                **bad, **no_ws, **busy, **body_errors,
            }, guarded=True, parameters=[ws], requestBody=body(_object()))},
    }
    # fmt: on


def document(*, hooks: Sequence[str] | None) -> Schema:
    """The document of an agent whose automation has ``hooks`` (None: automation off)."""
    plain = {"description": "Text.", "content": {"text/plain": {"schema": {"type": "string"}}}}
    paths: dict[str, Schema] = {
        "/v2/health/live": {"get": _operation("Liveness", {
            "200": _json(_object(["live"], live={"type": "boolean"}), "The agent runs.")})},
        "/v2/health/ready": {"get": _operation("Readiness", {
            "200": _json(_object(["ready"], ready={"type": "boolean"}), "Serving."),
            "503": _json(_object(["ready"], ready={"type": "boolean"}), "Starting or stopping."),
        })},
        "/v2": {"get": _operation("KServe v2 server metadata", {
            "200": _json(_object(["name", "version", "extensions"], name={"type": "string"},
                                 version={"type": "string"},
                                 extensions={"type": "array", "items": {"type": "string"}}),
                         "The server.")})},
        "/metrics": {"get": _operation("Prometheus metrics", {"200": plain})},
        OPENAPI_PATH: {"get": _operation("This document", {
            "200": _json({"type": "object"}, "OpenAPI 3.1.")}, guarded=True)},
        **_kserve_paths(),
        **_management_paths(),
        **_train_remote_paths(),
        **_live_paths(),
        **_peers_paths(),
        **_workspaces_paths(),
        **_dashboard_paths(),
        **({} if hooks is None else _automation_paths(hooks)),
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgewire agent", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
