"""The traces family (MLflow 3 GenAI): traces, their spans, tags, metadata and assessments, and
their links to runs. This module is the family's MLflow edge in both directions.

Pack lists each selected experiment's traces (``search_traces``, 500 a page, without spans) and
fetches their spans in bulk (``batch_get_traces``); a trace whose spans cannot be read is packed
without them, with a note. Trace-to-run links made with ``link_traces_to_run`` are found with one
``attribute.run_id`` search per run of the archive; the link that metadata ``mlflow.sourceRun``
implies stays in ``trace_metadata``.

Unpack keeps every id: trace ids are client-generated (``tr-`` + the OTel trace id), so the spans
go in first over OTLP (``log_spans``, spans of many traces a call) and then ``start_trace`` writes
the trace's info (times, state, previews, tags, metadata, assessments with their ids) on top.
That order keeps ``execution_duration`` exact; the other order makes the server recompute it
from the spans. ``start_trace`` with an id the server already has *moves* that trace into the
given experiment, so every trace is looked up first: one in another experiment is left alone,
one in its own experiment is skipped when complete and finished when not (a crash between
``log_spans`` and ``start_trace``). Run and logged-model ids in metadata are remapped.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

from .families import PackScope, Rows, UnpackScope, compact_json
from .lineage import PREFIX, _fields, _system_tags
from .mlflow_errors import Caller
from .pages import iter_pages
from .pool import ordered_map
from .sink import TRACE_TAG_VALUE_LIMIT, fit_tags

__all__ = ["read_traces", "write_traces"]

T = TypeVar("T")

_CLIENT_TAG_VALUE_LIMIT = 4096
"""``TraceInfo.to_proto`` cuts tag values here (``MAX_CHARS_IN_TRACE_INFO_TAGS_VALUE``), so a
longer tag goes in again with ``set_trace_tag`` after ``start_trace``."""
_CLIENT_METADATA_LIMIT = 250
"""``TraceInfo.to_proto`` cuts metadata keys and values here (``MAX_CHARS_IN_TRACE_INFO_METADATA``)
and there is no other way to write metadata over REST."""

_PAGE = 500  # search_traces' largest page over REST
_INFO_BATCH = 100
_LINK_BATCH = 100  # link_traces_to_run takes at most 100 traces a call
_SPANS_PER_CALL = 1000
_CHARS_PER_CALL = 4_000_000  # span JSON per log_spans call, whole traces only

_SOURCE_RUN = "mlflow.sourceRun"
_MODEL_ID = "mlflow.modelId"
_ASSESSMENT_RUN = "mlflow.assessment.sourceRunId"
_REQUEST_ID_ATTRIBUTE = "mlflow.traceRequestId"
_SPANS_LOCATION = "mlflow.trace.spansLocation"
# Tags about where the source server keeps the trace's files: the target sets its own.
_SERVER_TAGS = frozenset(
    {
        "mlflow.artifactLocation",
        _SPANS_LOCATION,
        "mlflow.trace.archiveLocation",
        "mlflow.trace.archivalFailure",
    }
)
_TRACE_ID = re.compile(r"^tr-([0-9a-f]{32})$")
_TABLES = ("traces", "trace_tags", "trace_metadata", "spans", "assessments", "trace_runs")


# -- pack ---------------------------------------------------------------------------------------


def read_traces(scope: PackScope) -> Rows:
    """Every trace of the selected experiments, with its spans, tags, metadata, assessments and
    run links, as rows of the archive's trace tables."""
    rows: Rows = {name: [] for name in _TABLES}
    client = _tracing_client(scope.call, scope.tracking_uri)
    seen: set[str] = set()
    for experiment_id in scope.experiment_ids:
        for infos, spans in _pages(scope, client, experiment_id):
            for info in infos:
                if info.trace_id in seen:  # a page boundary shifted by a concurrent write
                    continue
                seen.add(info.trace_id)
                got = spans.get(info.trace_id)
                if got is None:
                    scope.notes.append(
                        f"trace {info.trace_id}: its spans could not be read: packed without spans"
                    )
                _add_trace(rows, experiment_id, info, got or [], scope.notes)
    if seen:
        rows["trace_runs"] = _run_links(scope, client, rows)
    return rows


def _pages(
    scope: PackScope, client: Any, experiment_id: str
) -> Iterator[tuple[list[Any], dict[str, list[Any]]]]:
    """(trace infos, spans by trace id), a page at a time. Infos come from the listing, so a
    trace whose spans cannot be loaded (``search_traces(include_spans=True)`` drops it without a
    word) is still packed."""
    for page in iter_pages(
        scope.call,
        f"listing the traces of experiment {experiment_id}",
        client.search_traces,
        locations=[experiment_id],
        include_spans=False,
        max_results=_PAGE,
    ):
        infos = [trace.info for trace in page]
        ids = [info.trace_id for info in infos]
        spans: dict[str, list[Any]] = {}
        if ids:
            full = scope.call(
                f"reading the spans of {len(ids)} traces of experiment {experiment_id}",
                partial(client.batch_get_traces, ids),
            )
            spans = {trace.info.trace_id: list(trace.data.spans) for trace in full}
        yield infos, spans


def _add_trace(
    rows: Rows, experiment_id: str, info: Any, spans: list[Any], notes: list[str]
) -> None:
    trace_id = info.trace_id
    rows["traces"].append(
        {
            "trace_id": trace_id,
            "experiment_id": info.experiment_id or experiment_id,
            "request_time": info.request_time,
            "execution_duration": info.execution_duration,
            "state": _state(info.state),
            "request_preview": info.request_preview,
            "response_preview": info.response_preview,
            "client_request_id": info.client_request_id,
            "source_json": compact_json(info.to_dict()),
        }
    )
    for key, value in sorted(info.tags.items()):
        rows["trace_tags"].append({"trace_id": trace_id, "key": key, "value": str(value)})
    for key, value in sorted(info.trace_metadata.items()):
        rows["trace_metadata"].append({"trace_id": trace_id, "key": key, "value": str(value)})
    for span in spans:
        raw = span.to_dict()
        plain, changed = _finite(raw)
        if changed:
            notes.append(
                f"trace {trace_id}: span {raw['span_id']}: NaN or infinite values in events or "
                "links kept as the strings 'NaN', 'Infinity', '-Infinity'"
            )
        rows["spans"].append(
            {
                "trace_id": trace_id,
                "span_id": raw["span_id"],
                "parent_span_id": raw["parent_span_id"],
                "name": raw["name"],
                "start_time_ns": span.start_time_ns,
                "end_time_ns": span.end_time_ns,
                "source_json": compact_json(plain),
            }
        )
    for assessment in info.assessments:
        if not assessment.assessment_id:
            notes.append(f"trace {trace_id}: an assessment without an id was not packed")
            continue
        rows["assessments"].append(
            {
                "assessment_id": assessment.assessment_id,
                "trace_id": trace_id,
                "name": assessment.name,
                "span_id": assessment.span_id,
                "run_id": assessment.run_id,
                "source_json": compact_json(assessment.to_dictionary()),
            }
        )


def _run_links(scope: PackScope, client: Any, rows: Rows) -> list[dict[str, Any]]:
    """(trace, run) pairs that ``link_traces_to_run`` made. MLflow has no read API for them;
    ``attribute.run_id = '<run>'`` finds a run's linked traces together with the traces whose
    metadata ``mlflow.sourceRun`` names it, so the latter are left out (metadata keeps them).
    A trace that has both the metadata and a link to the same run reads as metadata only."""
    source_run = {
        row["trace_id"]: row["value"] for row in rows["trace_metadata"] if row["key"] == _SOURCE_RUN
    }
    packed = {row["trace_id"] for row in rows["traces"]}
    experiments = sorted({row["experiment_id"] for row in rows["traces"]})

    def linked(run_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for page in iter_pages(
            scope.call,
            f"listing the traces linked to run {run_id}",
            client.search_traces,
            locations=experiments,
            filter_string=f"attribute.run_id = '{run_id}'",
            include_spans=False,
            max_results=_PAGE,
        ):
            for trace in page:
                trace_id = trace.info.trace_id
                if trace_id in packed and source_run.get(trace_id) != run_id:
                    found.append({"trace_id": trace_id, "run_id": run_id})
        return found

    out: dict[tuple[str, str], dict[str, Any]] = {}
    for links in ordered_map(linked, sorted(scope.run_ids), scope.workers):
        for link in links:
            out[(link["trace_id"], link["run_id"])] = link
    return [out[key] for key in sorted(out)]


def _finite(value: Any) -> tuple[Any, bool]:
    """``value`` with NaN and infinities as strings (the archive's JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return ("NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"), True
    if isinstance(value, dict):
        changed = False
        out: dict[Any, Any] = {}
        for key, item in value.items():
            out[key], hit = _finite(item)
            changed = changed or hit
        return out, changed
    if isinstance(value, (list, tuple)):
        items = [_finite(item) for item in value]
        return [item for item, _ in items], any(hit for _, hit in items)
    return value, False


def _state(state: Any) -> str | None:
    if state is None:
        return None
    return str(getattr(state, "value", state))


# -- unpack -------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """One trace to write: its target experiment, its info as it will be written, its spans."""

    trace_id: str
    experiment_id: str
    info: Any
    spans: Sequence[Mapping[str, Any]]
    """The trace's rows of the spans table, parsed only when sent."""
    chars: int
    long_tags: dict[str, str] = field(default_factory=dict)
    overriding: list[Any] = field(default_factory=list)
    """Assessments that override another of the trace, created one by one after ``start_trace``
    (only ``create_assessment`` marks the overridden one invalid; ``start_trace`` writes every
    assessment valid), oldest first."""
    present: set[str] = field(default_factory=set)
    """Ids of the assessments the target's trace already has (a resumed trace)."""


@dataclass
class _Remap:
    """Ids that had no target, each reported once."""

    runs: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)


def write_traces(scope: UnpackScope, rows: Rows) -> dict[str, int]:
    """Create in the target every trace of ``rows`` it does not have yet, ids kept."""
    counts = {
        "traces_created": 0,
        "traces_resumed": 0,
        "traces_skipped": 0,
        "spans": 0,
        "assessments": 0,
        "run_links": 0,
    }
    traces = sorted(rows.get("traces", []), key=lambda row: str(row["trace_id"]))
    if not traces:
        return counts
    tags = _group(rows.get("trace_tags", []))
    metadata = _group(rows.get("trace_metadata", []))
    spans = _group(rows.get("spans", []))
    assessments = _group(rows.get("assessments", []))
    remap = _Remap()

    plans: list[_Plan] = []
    unmapped: dict[str, list[str]] = defaultdict(list)
    for row in traces:
        target = scope.experiments.get(row["experiment_id"])
        if target is None:
            unmapped[str(row["experiment_id"])].append(str(row["trace_id"]))
            continue
        plans.append(
            _plan(
                scope,
                row,
                target,
                tags.get(row["trace_id"], []),
                metadata.get(row["trace_id"], []),
                spans.get(row["trace_id"], []),
                assessments.get(row["trace_id"], []),
                remap,
            )
        )
    for experiment_id, ids in sorted(unmapped.items()):
        scope.notes.append(
            f"traces: experiment {experiment_id} is not unpacked: its {len(ids)} traces "
            f"(e.g. {ids[0]}) not written"
        )
        counts["traces_skipped"] += len(ids)
    for run_id in sorted(remap.runs):
        scope.notes.append(
            f"traces: run {run_id} is not in the archive: references kept as they are"
        )
    for model_id in sorted(remap.models):
        scope.notes.append(
            f"traces: logged model {model_id} was not unpacked: references kept as they are"
        )

    client = _tracing_client(scope.call, scope.tracking_uri)
    existing = _existing(scope, client, [plan.trace_id for plan in plans])
    todo: list[_Plan] = []
    ours: list[str] = []  # traces in their own target experiment, new or not
    elsewhere: dict[str, list[str]] = defaultdict(list)
    for plan in plans:
        have = existing.get(plan.trace_id)
        if have is None:
            todo.append(plan)
            ours.append(plan.trace_id)
            counts["traces_created"] += 1
        elif str(have.experiment_id) != plan.experiment_id:
            # start_trace would move it here, out of an experiment that is not ours to change.
            elsewhere[plan.experiment_id].append(plan.trace_id)
            counts["traces_skipped"] += 1
        elif _complete(have, plan):
            ours.append(plan.trace_id)
            counts["traces_skipped"] += 1
        else:
            plan.present = {a.assessment_id for a in have.assessments}
            todo.append(plan)
            ours.append(plan.trace_id)
            counts["traces_resumed"] += 1

    for experiment_id, ids in sorted(elsewhere.items()):
        scope.notes.append(
            f"traces: {len(ids)} traces for experiment {experiment_id} (e.g. {ids[0]}) are "
            "already in other experiments of the target (trace ids are unique per server): "
            "left there, not written"
        )

    for batch in _batches(todo):
        spans_sent = _log_spans(scope, client, batch)
        counts["spans"] += spans_sent
        for written in ordered_map(partial(_start, scope, client), batch, scope.workers):
            counts["assessments"] += written

    counts["run_links"] = _link_runs(scope, rows.get("trace_runs", []), set(ours))
    return counts


def _plan(
    scope: UnpackScope,
    row: Mapping[str, Any],
    experiment_id: str,
    tag_rows: list[dict[str, Any]],
    metadata_rows: list[dict[str, Any]],
    span_rows: list[dict[str, Any]],
    assessment_rows: list[dict[str, Any]],
    remap: _Remap,
) -> _Plan:
    from mlflow.entities import TraceInfo, TraceLocation, TraceState

    trace_id = str(row["trace_id"])
    what = f"trace {trace_id}"
    source_tags = {str(r["key"]): str(r["value"]) for r in tag_rows}
    metadata = {str(r["key"]): str(r["value"]) for r in metadata_rows}

    originals: dict[str, str] = {}
    for key, id_map, known in (
        (_SOURCE_RUN, scope.runs, remap.runs),
        (_MODEL_ID, scope.logged_models, remap.models),
    ):
        if key in metadata:
            old = metadata[key]
            new = id_map.get(old)
            if new is None:
                known.add(old)
            elif new != old:
                metadata[key] = new
                originals[key] = old
    for key, value in sorted(metadata.items()):
        if len(key) > _CLIENT_METADATA_LIMIT or len(value) > _CLIENT_METADATA_LIMIT:
            scope.notes.append(
                f"{what}: metadata {key[:60]!r} is over {_CLIENT_METADATA_LIMIT} chars: "
                "MLflow's client cuts it to that"
            )

    tags = {k: v for k, v in source_tags.items() if k not in _SERVER_TAGS}
    # Our spans live in the target's tracking store (log_spans says so too); a trace packed
    # without spans needs it to read as an empty trace rather than a missing artifact.
    tags[_SPANS_LOCATION] = "TRACKING_STORE"
    if scope.origin is not None:
        tags.update(_lineage(row, source_tags, originals, scope.origin.tags()))
    tags = _fit(tags, what, scope.notes)
    long_tags = {k: v for k, v in tags.items() if len(v) > _CLIENT_TAG_VALUE_LIMIT}

    state = row.get("state") or "STATE_UNSPECIFIED"
    info = TraceInfo(
        trace_id=trace_id,
        trace_location=TraceLocation.from_experiment_id(experiment_id),
        request_time=int(row.get("request_time") or 0),
        state=TraceState(state),
        request_preview=row.get("request_preview"),
        response_preview=row.get("response_preview"),
        client_request_id=row.get("client_request_id"),
        execution_duration=row.get("execution_duration"),
        trace_metadata=metadata,
        tags=tags,
    )
    every = [
        _assessment(scope, r, remap.runs)
        for r in sorted(assessment_rows, key=lambda r: str(r["assessment_id"]))
    ]
    ids = {a.assessment_id for a in every}
    overridden = {a.overrides for a in every if a.overrides in ids}
    overriding = sorted(
        (a for a in every if a.overrides in ids),
        key=lambda a: (a.create_time_ms or 0, a.assessment_id),
    )
    info.assessments = [a for a in every if a.overrides not in ids]
    for a in every:
        if a.valid is False and a.assessment_id not in overridden:
            scope.notes.append(
                f"{what}: assessment {a.assessment_id} is invalid in the source, but no "
                "assessment of the trace overrides it: MLflow writes it valid"
            )
    if span_rows and _TRACE_ID.match(trace_id) is None:
        scope.notes.append(
            f"{what}: {len(span_rows)} spans not written: the target files spans under "
            "tr-<OTel trace id>, and this trace id is not of that form"
        )
        span_rows = []
    chars = sum(len(str(r["source_json"])) for r in span_rows)
    return _Plan(trace_id, experiment_id, info, span_rows, chars, long_tags, overriding)


def _lineage(
    row: Mapping[str, Any],
    source_tags: Mapping[str, str],
    originals: Mapping[str, str],
    origin_tags: Mapping[str, str],
) -> dict[str, str]:
    """``mlflow_exim.field.<F>`` for the raw TraceInfo fields (times in epoch ms),
    ``mlflow_exim.field.trace_metadata.<key>`` for each metadata value unpack rewrote,
    ``mlflow_exim.mlflow_tag.<rest>`` for each ``mlflow.<rest>`` tag, and the archive's origin."""
    known = {
        "trace_id": row["trace_id"],
        "request_time": row.get("request_time"),
        "execution_duration": row.get("execution_duration"),
        "state": row.get("state"),
        "request_preview": row.get("request_preview"),
        "response_preview": row.get("response_preview"),
        "client_request_id": row.get("client_request_id"),
    }
    skip = frozenset({"tags", "trace_metadata", "assessments", "execution_duration_ms"})
    out = _fields(f"{PREFIX}.field", known, str(row.get("source_json") or "{}"), skip)
    for key, value in sorted(originals.items()):
        out[f"{PREFIX}.field.trace_metadata.{key}"] = value
    out.update(_system_tags(tuple(sorted(source_tags.items()))))
    out.update(origin_tags)
    return out


def _fit(tags: dict[str, str], what: str, notes: list[str]) -> dict[str, str]:
    """Unpack's one limits rule (:func:`.sink.fit_tags`) with this family's value limit."""
    fitted = fit_tags(tags, TRACE_TAG_VALUE_LIMIT, what)
    notes.extend(fitted.notes)
    return fitted.tags


def _assessment(scope: UnpackScope, row: Mapping[str, Any], missing_runs: set[str]) -> Any:
    """The assessment as packed, its run reference remapped. ``from_dictionary`` forgets
    ``rationale``, ``overrides`` and ``valid`` for some kinds, so they are set again."""
    from mlflow.entities import Assessment

    raw = json.loads(str(row["source_json"]))
    meta = raw.get("metadata")
    if isinstance(meta, dict) and _ASSESSMENT_RUN in meta:
        old = str(meta[_ASSESSMENT_RUN])
        new = scope.runs.get(old)
        if new is None:
            missing_runs.add(old)
        else:
            raw["metadata"] = {**meta, _ASSESSMENT_RUN: new}
    assessment: Any = Assessment.from_dictionary(raw)
    assessment.rationale = raw.get("rationale")
    assessment.overrides = raw.get("overrides")
    assessment.valid = raw.get("valid")
    assessment.assessment_id = raw.get("assessment_id") or str(row["assessment_id"])
    assessment.trace_id = raw.get("trace_id") or str(row["trace_id"])
    if assessment.to_dictionary() != raw:
        scope.notes.append(
            f"trace {row['trace_id']}: assessment {row['assessment_id']} does not survive "
            "MLflow's conversion unchanged"
        )
    return assessment


def _span(trace_id: str, row: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The span as packed, addressed so that the target files it under ``trace_id`` (the server
    names a span's trace ``tr-<OTel trace id>``; spans of traces made before MLflow 3, whose
    trace ids were drawn apart from the OTel ids, are re-keyed to the trace id's hex). Returns
    the dict for ``Span.from_dict`` and whether it was re-keyed."""
    match = _TRACE_ID.match(trace_id)
    assert match is not None  # _plan drops the spans of other ids
    otel_id = base64.b64encode(bytes.fromhex(match.group(1))).decode("ascii")
    raw: dict[str, Any] = json.loads(str(row["source_json"]))
    moved = raw.get("trace_id") != otel_id
    raw["trace_id"] = otel_id
    raw["attributes"] = {
        **(raw.get("attributes") or {}),
        _REQUEST_ID_ATTRIBUTE: json.dumps(trace_id),
    }
    return raw, moved


def _complete(have: Any, plan: _Plan) -> bool:
    """True when the target's trace already has what ``plan`` writes: its tags, metadata and
    assessments (a crash between ``log_spans`` and ``start_trace`` leaves a trace with the
    spans' summary only). Values are not compared: the server answers with tags cut to 4096
    chars, so a tag longer than that whose ``set_trace_tag`` was cut off stays cut."""
    if not set(plan.info.tags) <= set(have.tags):
        return False
    if not set(plan.info.trace_metadata) <= set(have.trace_metadata):
        return False
    wanted = {a.assessment_id for a in [*plan.info.assessments, *plan.overriding]}
    return wanted <= {a.assessment_id for a in have.assessments}


def _existing(scope: UnpackScope, client: Any, trace_ids: Sequence[str]) -> dict[str, Any]:
    """The target's info for each of ``trace_ids`` it has, in whatever experiment."""
    out: dict[str, Any] = {}
    for chunk in _chunks(list(trace_ids), _INFO_BATCH):
        infos = scope.call(
            f"looking up {len(chunk)} traces in the target",
            partial(_infos, client, chunk),
        )
        out.update((info.trace_id, info) for info in infos)
    return out


def _infos(client: Any, trace_ids: Sequence[str]) -> list[Any]:
    from mlflow.exceptions import MlflowException, MlflowNotImplementedException

    try:
        return list(client.store.batch_get_trace_infos(list(trace_ids)))
    except (NotImplementedError, MlflowNotImplementedException):
        pass
    except MlflowException as exc:
        if exc.error_code != "ENDPOINT_NOT_FOUND":
            raise
    found = []  # a server before batchGetInfos: one trace at a time
    for trace_id in trace_ids:
        try:
            found.append(client.get_trace_info(trace_id))
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise
    return found


def _batches(plans: list[_Plan]) -> Iterator[list[_Plan]]:
    """Whole traces of one target experiment, up to a call's worth of spans each."""
    by_experiment: dict[str, list[_Plan]] = defaultdict(list)
    for plan in plans:
        by_experiment[plan.experiment_id].append(plan)
    for experiment_id in sorted(by_experiment):
        batch: list[_Plan] = []
        spans = chars = 0
        for plan in by_experiment[experiment_id]:
            if batch and (
                spans + len(plan.spans) > _SPANS_PER_CALL or chars + plan.chars > _CHARS_PER_CALL
            ):
                yield batch
                batch, spans, chars = [], 0, 0
            batch.append(plan)
            spans += len(plan.spans)
            chars += plan.chars
        if batch:
            yield batch


def _log_spans(scope: UnpackScope, client: Any, batch: list[_Plan]) -> int:
    """Send the batch's spans: one call, or pieces of one when a single trace is too big."""
    from mlflow.entities import Span

    experiment_id = batch[0].experiment_id
    rows = [(plan.trace_id, row) for plan in batch for row in plan.spans]
    rekeyed: set[str] = set()
    sent = 0
    for chunk in _sized(rows):
        built = []
        for trace_id, row in chunk:
            raw, moved = _span(trace_id, row)
            if moved:
                rekeyed.add(trace_id)
            built.append(Span.from_dict(raw))
        scope.call(
            f"writing {len(built)} spans into experiment {experiment_id}",
            partial(_send_spans, scope, client, experiment_id, built),
        )
        sent += len(built)
    scope.notes.extend(
        f"trace {trace_id}: spans re-keyed to the OTel trace id its id names"
        for trace_id in sorted(rekeyed)
    )
    return sent


def _send_spans(scope: UnpackScope, client: Any, experiment_id: str, spans: list[Any]) -> None:
    try:
        client.log_spans(experiment_id, spans)
    except NotImplementedError as exc:
        raise scope.call.error(
            f"the target cannot take trace spans ({exc})",
            where=scope.call.where,
            hint="unpack traces into an MLflow 3.4 or newer tracking server or database",
        ) from None


def _sized(
    rows: list[tuple[str, Mapping[str, Any]]],
) -> Iterator[list[tuple[str, Mapping[str, Any]]]]:
    chunk: list[tuple[str, Mapping[str, Any]]] = []
    chars = 0
    for item in rows:
        size = len(str(item[1]["source_json"]))
        if chunk and (len(chunk) >= _SPANS_PER_CALL or chars + size > _CHARS_PER_CALL):
            yield chunk
            chunk, chars = [], 0
        chunk.append(item)
        chars += size
    if chunk:
        yield chunk


def _start(scope: UnpackScope, client: Any, plan: _Plan) -> int:
    """Write the trace's info (after its spans), then what ``start_trace`` cannot carry: tags
    longer than the client sends, and overriding assessments. Returns the assessments written.

    A resumed trace gets only the assessments it lacks: ``start_trace`` would write the others
    again as valid, undoing an override that already landed."""
    info = plan.info
    if plan.present:
        info = replace(
            info, assessments=[a for a in info.assessments if a.assessment_id not in plan.present]
        )
    scope.call(
        f"writing trace {plan.trace_id} into experiment {plan.experiment_id}",
        partial(client.start_trace, info),
    )
    for key, value in sorted(plan.long_tags.items()):
        scope.call(
            f"setting tag {key!r} of trace {plan.trace_id}",
            partial(client.set_trace_tag, plan.trace_id, key, value),
        )
    written = len(info.assessments)
    for assessment in plan.overriding:
        if assessment.assessment_id in plan.present:
            continue
        scope.call(
            f"writing assessment {assessment.assessment_id} of trace {plan.trace_id}",
            partial(client.log_assessment, plan.trace_id, assessment),
            before_retry=partial(_landed, client, plan.trace_id, assessment.assessment_id),
        )
        written += 1
    return written


def _landed(client: Any, trace_id: str, assessment_id: str) -> Any:
    """The assessment if an attempt whose answer was lost created it, else None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_assessment(trace_id, assessment_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise


def _link_runs(scope: UnpackScope, links: Iterable[Mapping[str, Any]], ours: set[str]) -> int:
    """``link_traces_to_run`` for the packed links (idempotent: the server skips known ones)."""
    by_run: dict[str, set[str]] = defaultdict(set)
    for link in links:
        trace_id, run_id = str(link["trace_id"]), str(link["run_id"])
        if trace_id not in ours:
            continue
        target = scope.runs.get(run_id)
        if target is None:
            scope.notes.append(
                f"trace {trace_id}: linked run {run_id} is not in the archive: link not written"
            )
            continue
        by_run[target].add(trace_id)
    count = 0
    for run_id in sorted(by_run):
        for chunk in _chunks(sorted(by_run[run_id]), _LINK_BATCH):
            scope.call(
                f"linking {len(chunk)} traces to run {run_id}",
                partial(scope.client.link_traces_to_run, list(chunk), run_id),
            )
            count += len(chunk)
    return count


# -- shared -------------------------------------------------------------------------------------


def _tracing_client(call: Caller, uri: str) -> Any:
    from mlflow.tracing.client import TracingClient

    return call("opening the tracing client", partial(TracingClient, uri))


def _group(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[str(row["trace_id"])].append(row)
    return out


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
