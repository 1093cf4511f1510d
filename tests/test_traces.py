"""The traces family against real servers: nested spans with events and attributes, tags,
metadata, assessments (an override included) and run links survive pack rows -> unpack with
every id kept; a second unpack creates nothing; a trace the target has elsewhere is not moved;
lineage tags only with an origin; an unpack cut between spans and info is finished by the next."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlflow
import mlflow.tracking._tracking_service.utils as tracking_utils
import mlflow.tracking.fluent as fluent
import pytest
from conftest import MlflowServer, NewStore
from mlflow import MlflowClient
from mlflow.entities import AssessmentSource, SpanEvent
from mlflow.tracing.client import TracingClient

from exim_archive import traces
from exim_archive.errors import SourceError, TargetError
from exim_archive.families import PackScope, Rows, UnpackScope
from exim_archive.lineage import Origin
from exim_archive.mlflow_errors import Caller
from exim_archive.traces import read_traces, write_traces

ORIGIN = Origin("sha256:feed", "http://source.example", "2026-01-02T03:04:05Z")

# What the target holds differently from the source, and why:
# - tag mlflow.artifactLocation: the server sets it from the target experiment's artifact root
#   (the source's value names the source experiment); it is not written, the server's stays;
# - metadata mlflow.sourceRun: rewritten to the target run (the archive maps run ids);
# - assessment metadata mlflow.assessment.sourceRunId: rewritten the same way.
# Everything else (tags, metadata incl. mlflow.trace.infoFinalized and sizeStats, spans byte for
# byte, assessment ids, times and values) is equal.
REGENERATED_TAGS = {"mlflow.artifactLocation"}
REMAPPED_METADATA = {"mlflow.sourceRun"}


@dataclass
class Seeded:
    experiment_id: str
    run_id: str
    in_run: str
    outside: str


@contextmanager
def _fluent_on(monkeypatch: pytest.MonkeyPatch, url: str, experiment_id: str) -> Iterator[None]:
    """mlflow's fluent API on ``url`` and ``experiment_id``, restored afterwards."""
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(url)
    try:
        mlflow.set_experiment(experiment_id=experiment_id)
        yield
        mlflow.flush_trace_async_logging()
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]


def _seed(monkeypatch: pytest.MonkeyPatch, server: MlflowServer, name: str) -> Seeded:
    client = MlflowClient(server.url)
    experiment_id = client.create_experiment(name)
    with _fluent_on(monkeypatch, server.url, experiment_id):
        with mlflow.start_run() as run:
            with mlflow.start_span("root", span_type="CHAIN") as root:
                root.set_inputs({"question": "why?"})
                root.set_attributes({"custom.number": 7, "custom.dict": {"a": [1, 2]}})
                mlflow.update_current_trace(
                    tags={"team": "blue", "stage": "dev"}, metadata={"my.meta": "m1"}
                )
                with mlflow.start_span("middle") as middle:
                    middle.add_event(SpanEvent("checkpoint", attributes={"k": "v", "n": 3}))
                    middle.add_event(SpanEvent("second", attributes={"ok": True}))
                    with mlflow.start_span("leaf", span_type="LLM") as leaf:
                        leaf.set_attribute("model", "tiny")
                        leaf.add_event(SpanEvent("token", attributes={"i": 1.5}))
                        leaf.set_outputs("because")
                root.set_outputs({"answer": "because"})
            in_run = root.trace_id
            leaf_id = leaf.span_id
        with mlflow.start_span("lonely") as lonely:
            lonely.set_inputs("x")
            lonely.set_outputs("y")
        outside = lonely.trace_id
    mlflow.flush_trace_async_logging()
    with _fluent_on(monkeypatch, server.url, experiment_id):
        feedback = mlflow.log_feedback(
            trace_id=in_run,
            name="quality",
            value=0.5,
            rationale="meh",
            source=AssessmentSource(source_type="LLM_JUDGE", source_id="judge-1"),
            metadata={"mlflow.assessment.sourceRunId": run.info.run_id, "extra": "x"},
            span_id=leaf_id,
        )
        mlflow.override_feedback(
            trace_id=in_run,
            assessment_id=feedback.assessment_id,
            value=0.9,
            rationale="better",
            source=AssessmentSource(source_type="HUMAN", source_id="me@example.com"),
        )
        mlflow.log_expectation(trace_id=in_run, name="expected", value={"answer": ["because"]})
    client.link_traces_to_run([outside], run.info.run_id)
    return Seeded(experiment_id, run.info.run_id, in_run, outside)


def _pack(server: MlflowServer, seeded: Seeded) -> tuple[Rows, list[str]]:
    scope = PackScope(
        client=MlflowClient(server.url),
        call=Caller(SourceError, server.url, "check the source"),
        tracking_uri=server.url,
        experiment_ids=[seeded.experiment_id],
        run_ids=frozenset({seeded.run_id}),
        everything=False,
    )
    return read_traces(scope), scope.notes


def _target(
    server: MlflowServer, name: str, seeded: Seeded, origin: Origin | None = None
) -> UnpackScope:
    client = MlflowClient(server.url)
    experiment_id = client.create_experiment(name)
    run = client.create_run(experiment_id)
    return UnpackScope(
        client=client,
        call=Caller(TargetError, server.url, "fix it and run again"),
        tracking_uri=server.url,
        experiments={seeded.experiment_id: experiment_id},
        runs={seeded.run_id: run.info.run_id},
        origin=origin,
    )


def _spans(trace: Any) -> list[dict[str, Any]]:
    return sorted((span.to_dict() for span in trace.data.spans), key=lambda d: d["span_id"])


def _assessments(info: Any) -> dict[str, dict[str, Any]]:
    return {a.assessment_id: a.to_dictionary() for a in info.assessments}


@pytest.mark.server
def test_traces_round_trip_keep_ids_spans_and_assessments(
    source_server: MlflowServer,
    target_server: MlflowServer,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded = _seed(monkeypatch, source_server, f"{unique}-traces")
    rows, notes = _pack(source_server, seeded)
    assert notes == []
    assert sorted(r["trace_id"] for r in rows["traces"]) == sorted([seeded.in_run, seeded.outside])
    assert rows["trace_runs"] == [{"trace_id": seeded.outside, "run_id": seeded.run_id}]
    assert len([r for r in rows["spans"] if r["trace_id"] == seeded.in_run]) == 3
    assert len(rows["assessments"]) == 3
    assert _pack(source_server, seeded)[0] == rows  # same source, same rows

    scope = _target(target_server, f"{unique}-traces-target", seeded)
    target_experiment = scope.experiments[seeded.experiment_id]
    target_run = scope.runs[seeded.run_id]
    counts = write_traces(scope, rows)
    assert counts == {
        "traces_created": 2,
        "traces_resumed": 0,
        "traces_skipped": 0,
        "spans": 4,
        "assessments": 3,
        "run_links": 1,
    }
    assert scope.notes == []

    source, target = TracingClient(source_server.url), TracingClient(target_server.url)
    for trace_id in (seeded.in_run, seeded.outside):
        want, got = source.get_trace(trace_id), target.get_trace(trace_id)
        assert got.info.experiment_id == target_experiment
        # Spans: ids, parents, names, times, status, attributes, events, links, byte for byte.
        assert _spans(got) == _spans(want)
        for field in (
            "request_time",
            "execution_duration",
            "state",
            "request_preview",
            "response_preview",
            "client_request_id",
        ):
            assert getattr(got.info, field) == getattr(want.info, field), field
        differ = {
            k
            for k in set(want.info.tags) | set(got.info.tags)
            if want.info.tags.get(k) != got.info.tags.get(k)
        }
        assert differ <= REGENERATED_TAGS  # equal when both experiments have the same id
        location = got.info.tags["mlflow.artifactLocation"]
        assert location.endswith(f"/{target_experiment}/traces/{trace_id}/artifacts")
        assert not any(k.startswith("mlflow_exim.") for k in got.info.tags)
        want_meta, got_meta = dict(want.info.trace_metadata), dict(got.info.trace_metadata)
        if trace_id == seeded.in_run:
            assert want_meta.pop("mlflow.sourceRun") == seeded.run_id
            assert got_meta.pop("mlflow.sourceRun") == target_run
        assert got_meta == want_meta

    want_a = _assessments(source.get_trace_info(seeded.in_run))
    got_a = _assessments(target.get_trace_info(seeded.in_run))
    assert set(got_a) == set(want_a)
    for assessment_id, want_one in want_a.items():
        got_one = got_a[assessment_id]
        meta = want_one.get("metadata", {})
        if "mlflow.assessment.sourceRunId" in meta:
            assert meta["mlflow.assessment.sourceRunId"] == seeded.run_id
            meta["mlflow.assessment.sourceRunId"] = target_run
        assert got_one == want_one
    assert {a["valid"] for a in got_a.values() if "feedback" in a} == {True, False}

    # Both run links hold in the target: the metadata one and the link_traces_to_run one.
    linked = target.search_traces(
        locations=[target_experiment],
        filter_string=f"attribute.run_id = '{target_run}'",
        include_spans=False,
    )
    assert sorted(t.info.trace_id for t in linked) == sorted([seeded.in_run, seeded.outside])

    # A second unpack creates nothing.
    again = write_traces(scope, rows)
    assert again["traces_created"] == again["traces_resumed"] == again["spans"] == 0
    assert again["traces_skipped"] == 2
    assert len(target.search_traces(locations=[target_experiment], include_spans=False)) == 2

    # The same traces into another experiment: start_trace would move them; they stay put.
    elsewhere = _target(target_server, f"{unique}-traces-elsewhere", seeded)
    moved = write_traces(elsewhere, rows)
    assert moved["traces_created"] == 0 and moved["traces_skipped"] == 2
    assert len(elsewhere.notes) == 1 and "2 traces" in elsewhere.notes[0]
    assert target.get_trace_info(seeded.in_run).experiment_id == target_experiment


@pytest.mark.server
def test_lineage_tags_with_origin(
    source_server: MlflowServer,
    target_server: MlflowServer,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded = _seed(monkeypatch, source_server, f"{unique}-lineage")
    rows, _ = _pack(source_server, seeded)
    # Longer than the 4096 chars MLflow's client sends in start_trace, and than the 8000 allowed.
    for key, size in (("long", 6000), ("too.long", 9000)):
        rows["trace_tags"].append({"trace_id": seeded.in_run, "key": key, "value": "x" * size})
    rows["trace_metadata"].append({"trace_id": seeded.in_run, "key": "meta", "value": "y" * 300})
    scope = _target(target_server, f"{unique}-lineage-target", seeded, origin=ORIGIN)
    write_traces(scope, rows)
    assert sorted(scope.notes) == [
        f"trace {seeded.in_run}: metadata 'meta' is over 250 chars: "
        "MLflow's client cuts it to that",
        f"trace {seeded.in_run}: tag 'too.long' value cut from 9000 to 8000 chars",
    ]
    # The server answers with tag values cut to 4096; its database has them whole.
    stored = TracingClient(f"sqlite:///{target_server.db}").get_trace_info(seeded.in_run).tags
    assert stored["long"] == "x" * 6000
    assert stored["too.long"] == "x" * 8000
    answered = TracingClient(target_server.url).get_trace_info(seeded.in_run)
    assert len(answered.tags["long"]) == 4096
    stored_meta = TracingClient(f"sqlite:///{target_server.db}").get_trace_info(seeded.in_run)
    assert stored_meta.trace_metadata["meta"] == "y" * 250

    want = TracingClient(source_server.url).get_trace_info(seeded.in_run)
    tags = TracingClient(target_server.url).get_trace_info(seeded.in_run).tags
    lineage = {k: v for k, v in tags.items() if k.startswith("mlflow_exim.")}
    assert lineage["mlflow_exim.field.trace_id"] == seeded.in_run
    assert lineage["mlflow_exim.field.request_time"] == str(want.request_time)
    assert lineage["mlflow_exim.field.execution_duration"] == str(want.execution_duration)
    assert lineage["mlflow_exim.field.state"] == "OK"
    assert lineage["mlflow_exim.field.request_preview"] == want.request_preview
    assert '"experiment_id":"' + seeded.experiment_id in lineage["mlflow_exim.field.trace_location"]
    assert "mlflow_exim.field.client_request_id" not in lineage  # null: no tag
    assert lineage["mlflow_exim.field.trace_metadata.mlflow.sourceRun"] == seeded.run_id
    for key, value in want.tags.items():
        if key.startswith("mlflow."):
            assert lineage[f"mlflow_exim.mlflow_tag.{key[len('mlflow.') :]}"] == value
    assert "mlflow_exim.mlflow_tag.team" not in lineage
    for key, value in ORIGIN.tags().items():
        assert lineage[key] == value
    assert tags["team"] == "blue"


@pytest.mark.server
def test_unpack_cut_between_spans_and_info_is_finished_next_time(
    source_server: MlflowServer,
    target_server: MlflowServer,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded = _seed(monkeypatch, source_server, f"{unique}-cut")
    rows, _ = _pack(source_server, seeded)
    scope = _target(target_server, f"{unique}-cut-target", seeded)

    def crash(*args: object) -> None:
        raise TargetError("cut")

    with monkeypatch.context() as patched:
        patched.setattr(traces, "_start", crash)
        with pytest.raises(TargetError):
            write_traces(scope, rows)
    target = TracingClient(target_server.url)
    half = target.get_trace_info(seeded.in_run)  # log_spans made it, start_trace did not run
    assert "team" not in half.tags

    counts = write_traces(scope, rows)
    assert counts["traces_resumed"] == 2 and counts["traces_created"] == 0
    want = TracingClient(source_server.url).get_trace(seeded.in_run)
    got = target.get_trace(seeded.in_run)
    assert got.info.tags["team"] == "blue"
    assert got.info.execution_duration == want.info.execution_duration
    assert _assessments(got.info).keys() == _assessments(want.info).keys()
    assert _spans(got) == _spans(want)
    assert write_traces(scope, rows)["traces_skipped"] == 2


@pytest.mark.server
def test_unpack_into_a_database_uri(
    source_server: MlflowServer,
    new_sqlite: NewStore,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database target takes spans and info through the store in-process (no OTLP, no
    client-side cuts); the result is the same."""
    seeded = _seed(monkeypatch, source_server, f"{unique}-db")
    rows, _ = _pack(source_server, seeded)
    uri = new_sqlite("target")
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(f"{unique}-db-target")
    run = client.create_run(experiment_id)
    scope = UnpackScope(
        client=client,
        call=Caller(TargetError, "target.db", "fix it and run again"),
        tracking_uri=uri,
        experiments={seeded.experiment_id: experiment_id},
        runs={seeded.run_id: run.info.run_id},
    )
    assert write_traces(scope, rows)["traces_created"] == 2
    source, target = TracingClient(source_server.url), TracingClient(uri)
    for trace_id in (seeded.in_run, seeded.outside):
        assert _spans(target.get_trace(trace_id)) == _spans(source.get_trace(trace_id))
    got = target.get_trace_info(seeded.in_run)
    assert got.trace_metadata["mlflow.sourceRun"] == run.info.run_id
    assert _assessments(got).keys() == _assessments(source.get_trace_info(seeded.in_run)).keys()
    assert write_traces(scope, rows)["traces_skipped"] == 2

    # Packing the database gives the same span rows and assessment ids, and the run link.
    again = read_traces(
        PackScope(
            client=client,
            call=Caller(SourceError, "target.db", "check it"),
            tracking_uri=uri,
            experiment_ids=[experiment_id],
            run_ids=frozenset({run.info.run_id}),
            everything=False,
        )
    )
    assert sorted(again["spans"], key=str) == sorted(rows["spans"], key=str)
    assert {r["assessment_id"] for r in again["assessments"]} == {
        r["assessment_id"] for r in rows["assessments"]
    }
    assert again["trace_runs"] == [{"trace_id": seeded.outside, "run_id": run.info.run_id}]


def test_spans_of_a_trace_whose_id_is_not_its_otel_id_are_rekeyed() -> None:
    legacy = "tr-" + "ab" * 16
    row = {
        "trace_id": legacy,
        "span_id": "AAAAAAAAAAE=",
        "source_json": json.dumps(
            {"trace_id": "AAAAAAAAAAAAAAAAAAAAAQ==", "attributes": {"a": '"b"'}}
        ),
    }
    raw, moved = traces._span(legacy, row)
    assert moved
    assert base64.b64decode(raw["trace_id"]).hex() == "ab" * 16
    assert raw["attributes"] == {"a": '"b"', "mlflow.traceRequestId": json.dumps(legacy)}


def test_non_finite_event_values_become_strings() -> None:
    value = {"events": [{"attributes": {"x": float("nan"), "y": [float("-inf"), 1.0]}}]}
    plain, changed = traces._finite(value)
    assert changed
    assert plain == {"events": [{"attributes": {"x": "NaN", "y": ["-Infinity", 1.0]}}]}
    assert traces._finite({"a": [1, "b"]}) == ({"a": [1, "b"]}, False)
