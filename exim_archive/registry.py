"""The model registry and prompts: the family's MLflow edge, both directions.

Prompts are registered models tagged ``mlflow.prompt.is_prompt=true`` (their versions hold the
template in tags); they travel in the same tables with ``kind = "prompt"``.

Pack: without ``--experiment`` every registered model and prompt; with it, the models that have a
version whose run or logged model is in the archive (then all of that model's versions, so the
numbers stay whole), and the prompts whose ``_mlflow_experiment_ids`` name a selected experiment.
A version whose run is not in the archive is kept with ``run_scope = "outside"``.

Unpack, per model: create it if missing; then for each version number 1..max in order, create
the versions the target lacks with every reference remapped (run id, logged model id, source URI).
When the target's next number is lower than the source's (deleted versions left gaps), the created
version is deleted again and creation repeats until the numbers meet, so ``models:/name/3`` means
the same model on both sides. A version is recognised on a later unpack by its bookkeeping tag
``mlflow_exim.unpack.source_version``. Stages and aliases are set last (idempotent).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from typing import Any

from .families import PackScope, Rows, UnpackScope, compact_json, get_or_none
from .lineage import PREFIX, object_source_tags
from .pages import iter_pages
from .sink import REGISTRY_TAG_VALUE_LIMIT, fit_tags
from .target_lock import LOCK_NAME

__all__ = ["SOURCE_VERSION_TAG", "read_registry", "write_registry"]

IS_PROMPT = "mlflow.prompt.is_prompt"
PROMPT_EXPERIMENTS = "_mlflow_experiment_ids"
SOURCE_VERSION_TAG = f"{PREFIX}.unpack.source_version"
_PROMPT_FILTER = f"tag.`{IS_PROMPT}` = 'true'"
_MODEL_FIELDS = ("name", "description", "creation_timestamp", "last_updated_timestamp", "user_id")
_VERSION_FIELDS = (
    "name",
    "version",
    "description",
    "source",
    "run_id",
    "run_link",
    "model_id",
    "current_stage",
    "status",
    "status_message",
    "user_id",
    "creation_timestamp",
    "last_updated_timestamp",
)


def _proto(entity: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict  # ~45 ms: a pack from SQL skips it

    raw: dict[str, Any] = MessageToDict(entity.to_proto(), preserving_proto_field_name=True)
    return raw


def _pages(scope: PackScope, what: str, fn: Any, **kwargs: Any) -> list[Any]:
    return [item for page in iter_pages(scope.call, what, fn, **kwargs) for item in page]


def _model_id_of(version: Any) -> str | None:
    """The logged model a version was made from: its field, or a ``models:/m-...`` source
    (open-source MLflow does not always keep the field)."""
    if version.model_id:
        return str(version.model_id)
    source = version.source or ""
    if source.startswith("models:/m-") and "/" not in source[len("models:/") :]:
        return source[len("models:/") :]
    return None


def read_registry(scope: PackScope, model_ids: frozenset[str]) -> Rows:
    """The registered models and prompts that belong to the selection (see the module doc)."""
    registry = scope.client._get_registry_client()
    models = _pages(
        scope,
        "listing registered models",
        registry.search_registered_models,
        filter_string=None,
        max_results=1000,
    )
    prompts = _pages(
        scope,
        "listing prompts",
        registry.search_registered_models,
        filter_string=_PROMPT_FILTER,
        max_results=1000,
    )
    kinds = {m.name: "model" for m in models}
    kinds.update({p.name: "prompt" for p in prompts})
    versions: dict[str, list[Any]] = defaultdict(list)
    for filt in (None, _PROMPT_FILTER):
        for v in _pages(
            scope,
            "listing model versions",
            registry.search_model_versions,
            filter_string=filt,
            max_results=200_000,
        ):
            if not any(int(v.version) == int(w.version) for w in versions[v.name]):
                versions[v.name].append(v)
    selected_experiments = set(scope.experiment_ids)
    rows: Rows = defaultdict(list)
    for rm in sorted([*models, *prompts], key=lambda m: m.name):
        if rm.name == LOCK_NAME:
            continue  # exim-archive's own unpack lock, not the user's
        kind = kinds[rm.name]
        mine = sorted(versions.get(rm.name, []), key=lambda v: int(v.version))
        if not scope.everything and not _selected(rm, kind, mine, scope, model_ids):
            continue
        if not scope.everything and kind == "prompt":
            linked = set(filter(None, rm.tags.get(PROMPT_EXPERIMENTS, "").split(",")))
            if not linked & selected_experiments:
                continue
        raw = _proto(rm)
        raw.pop("latest_versions", None)
        rows["registered_models"].append(
            {
                "name": rm.name,
                "kind": kind,
                "description": rm.description,
                "creation_timestamp": rm.creation_timestamp,
                "last_updated_timestamp": rm.last_updated_timestamp,
                "user_id": getattr(rm, "user_id", None),
                "source_json": compact_json(raw),
            }
        )
        for key, value in sorted(rm.tags.items()):
            rows["registered_model_tags"].append({"name": rm.name, "key": key, "value": value})
        for alias, number in sorted(rm.aliases.items()):
            rows["registered_model_aliases"].append(
                {"name": rm.name, "alias": alias, "version": int(number)}
            )
        for v in mine:
            model_id = _model_id_of(v)
            rows["model_versions"].append(
                {
                    "name": v.name,
                    "version": int(v.version),
                    "description": v.description,
                    "source": v.source,
                    "run_id": v.run_id or None,
                    "run_scope": _scope_of(v.run_id or None, scope.run_ids),
                    "run_link": v.run_link or None,
                    "model_id": model_id,
                    "model_scope": _scope_of(model_id, model_ids),
                    "current_stage": v.current_stage,
                    "status": v.status,
                    "status_message": v.status_message or None,
                    "user_id": v.user_id or None,
                    "creation_timestamp": v.creation_timestamp,
                    "last_updated_timestamp": v.last_updated_timestamp,
                    "source_json": compact_json(_proto(v)),
                }
            )
            for key, value in sorted(v.tags.items()):
                rows["model_version_tags"].append(
                    {"name": v.name, "version": int(v.version), "key": key, "value": value}
                )
    return dict(rows)


def _scope_of(value: str | None, inside: frozenset[str]) -> str:
    if value is None:
        return "none"
    return "archive" if value in inside else "outside"


def _selected(
    rm: Any, kind: str, versions: list[Any], scope: PackScope, model_ids: frozenset[str]
) -> bool:
    if kind == "prompt":
        return True  # decided by its experiment links
    return any(v.run_id in scope.run_ids or _model_id_of(v) in model_ids for v in versions)


# -- unpack ----------------------------------------------------------------------------------


class _RegistryWriter:
    def __init__(self, scope: UnpackScope, rows: Rows) -> None:
        self.scope = scope
        self.registry = scope.client._get_registry_client()
        self.rows = rows
        self.counts = {
            "registered_models_created": 0,
            "model_versions_created": 0,
            "model_versions_skipped": 0,
            "model_versions_refused": 0,
            "aliases": 0,
        }
        self.version_map: dict[str, dict[str, int]] = {}
        self._outside_runs: dict[str, str | None] = {}

    def notes(self, text: str) -> None:
        self.scope.notes.append(text)

    def run(self) -> dict[str, int]:
        tags: dict[str, dict[str, str]] = defaultdict(dict)
        for t in self.rows.get("registered_model_tags", []):
            tags[t["name"]][t["key"]] = t["value"]
        vtags: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
        for t in self.rows.get("model_version_tags", []):
            vtags[(t["name"], t["version"])][t["key"]] = t["value"]
        versions: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for v in self.rows.get("model_versions", []):
            versions[v["name"]].append(v)
        aliases: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for a in self.rows.get("registered_model_aliases", []):
            aliases[a["name"]].append(a)
        for model in sorted(self.rows.get("registered_models", []), key=lambda m: m["name"]):
            name = model["name"]
            if not self.place_model(model, tags[name]):
                continue
            numbers = self.place_versions(
                model, sorted(versions[name], key=lambda v: v["version"]), vtags
            )
            self.version_map[name] = {str(k): v for k, v in sorted(numbers.items())}
            self.set_aliases(name, aliases[name], numbers)
        return self.counts

    # -- models -----------------------------------------------------------------------------

    def model_tags(self, model: dict[str, Any], tags: dict[str, str]) -> dict[str, str]:
        out = dict(tags)
        if model["kind"] == "prompt":
            out[IS_PROMPT] = "true"  # MLflow's reads hide it; the kind column keeps it
        if PROMPT_EXPERIMENTS in out:
            out[PROMPT_EXPERIMENTS] = self.remap_experiment_list(out[PROMPT_EXPERIMENTS])
        if self.scope.origin is not None:
            out.update(
                object_source_tags(
                    {f: model[f] for f in _MODEL_FIELDS},
                    model["source_json"],
                    tuple(sorted(tags.items())),
                    self.scope.origin,
                )
            )
        fitted = fit_tags(out, REGISTRY_TAG_VALUE_LIMIT, f"registered model {model['name']!r}")
        self.scope.notes.extend(fitted.notes)
        return fitted.tags

    def remap_experiment_list(self, text: str) -> str:
        ids = [i for i in text.split(",") if i]
        mapped = [self.scope.experiments[i] for i in ids if i in self.scope.experiments]
        return "," + ",".join(mapped) + "," if mapped else ""

    def place_model(self, model: dict[str, Any], tags: dict[str, str]) -> bool:
        name = model["name"]
        found = get_or_none(
            self.scope,
            f"looking up registered model {name!r}",
            lambda: self.registry.get_registered_model(name),
        )
        wanted = self.model_tags(model, tags)
        if found is None:

            def landed() -> Any:
                return get_or_none(
                    self.scope,
                    f"looking up registered model {name!r}",
                    lambda: self.registry.get_registered_model(name),
                )

            self.scope.call(
                f"creating registered model {name!r}",
                lambda: self.registry.create_registered_model(
                    name, tags=wanted, description=model["description"]
                ),
                before_retry=landed,
            )
            self.counts["registered_models_created"] += 1
            return True
        is_prompt = bool(found._is_prompt())  # reads hide the prompt tag from .tags
        if is_prompt != (model["kind"] == "prompt"):
            self.notes(
                f"registered model {name!r}: the target has a "
                f"{'prompt' if is_prompt else 'model'} of that name, the archive a "
                f"{model['kind']}: left as it is, nothing of it was written"
            )
            return False
        for key, value in sorted(wanted.items()):
            if found.tags.get(key) != value:
                self.scope.call(
                    f"tagging registered model {name!r}",
                    partial(self.registry.set_registered_model_tag, name, key, value),
                )
        return True

    # -- versions ---------------------------------------------------------------------------

    def target_versions(self, name: str, kind: str, top: int) -> list[Any]:
        """The model's live versions in the target."""
        if "'" in name:
            # MLflow's filter grammar has no escape for a quote: look numbers up one by one
            found = (self.get_version(name, n) for n in range(1, top + 64))
            return [v for v in found if v is not None]
        filt = f"name = '{name}'" + (f" AND {_PROMPT_FILTER}" if kind == "prompt" else "")
        what = f"listing versions of {name!r}"
        pages = iter_pages(
            self.scope.call,
            what,
            self.registry.search_model_versions,
            filter_string=filt,
            max_results=200_000,
        )
        return [v for page in pages for v in page]

    def get_version(self, name: str, number: int) -> Any:
        return get_or_none(
            self.scope,
            f"looking up version {number} of {name!r}",
            lambda: self.registry.get_model_version(name, str(number)),
        )

    def place_versions(
        self,
        model: dict[str, Any],
        versions: list[dict[str, Any]],
        vtags: dict[tuple[str, int], dict[str, str]],
    ) -> dict[int, int]:
        """Create the missing versions; returns source number -> target number."""
        name = model["name"]
        numbers: dict[int, int] = {}
        wanted = {v["version"]: v for v in versions}
        present: dict[str, int] = {}  # source number (its tag) -> target number
        others: dict[int, Any] = {}  # versions no unpack made, by number
        foreign = False
        homes: list[int] = []
        for current in self.target_versions(name, model["kind"], max(wanted, default=0)):
            number, tag = int(current.version), current.tags.get(SOURCE_VERSION_TAG)
            if tag is None:
                foreign = True
                others[number] = current
            elif tag.isdigit() and number < int(tag):
                # a gap placeholder an interrupted unpack left behind (only those are
                # ever created below their source number)
                self.delete_version(name, number)
            elif tag not in present:
                present[tag] = number
        for number in sorted(wanted):
            if str(number) in present:
                numbers[number] = present[str(number)]
                self.counts["model_versions_skipped"] += 1
                continue
            home = self.home_version(model, wanted[number], vtags[(name, number)], others)
            if home is not None:
                numbers[number] = home
                homes.append(number)
                self.counts["model_versions_skipped"] += 1
                continue
            made = self.create_version(model, wanted[number], vtags[(name, number)], number)
            if made is not None:
                numbers[number] = made
                foreign = foreign or made != number
        if homes:
            self.notes(
                f"registered model {name!r}: {len(homes)} version(s) (first: {homes[0]}) are "
                "copies of versions of this target that no unpack made (the archive came back "
                "to its source): those are left as they are and stand for them"
            )
        if foreign:
            moved = {k: v for k, v in numbers.items() if k != v}
            if moved:
                shown = ", ".join(f"{k}->{v}" for k, v in sorted(moved.items()))
                self.notes(
                    f"registered model {name!r}: the target already had other versions, so "
                    f"numbers differ (source->target: {shown})"
                )
        for number, target in sorted(numbers.items()):
            stage = wanted[number]["current_stage"]
            if stage and stage != "None":
                self.set_stage(name, target, stage)
        return numbers

    def home_version(
        self, model: dict[str, Any], v: dict[str, Any], tags: dict[str, str], others: dict[int, Any]
    ) -> int | None:
        """The target version ``v`` was itself copied from, if it is here: the archive was
        packed from an earlier unpack's target and comes back to the source (A -> B -> A). It
        is the version its bookkeeping tag numbers, made by no unpack, with the run and the
        source a copy of ``v`` would get (the run and logged model ``v``'s stand for)."""
        origin = tags.get(SOURCE_VERSION_TAG, "")
        current = others.get(int(origin)) if origin.isdigit() else None
        if current is None:
            return None
        if model["kind"] == "prompt":
            return int(current.version) if current.source == v["source"] else None
        run_id = self.target_run(v["run_id"])
        if (current.run_id or None) != run_id:
            return None
        model_id = self.scope.logged_models.get(v["model_id"] or "")
        same = current.source == self.rewrite_source(v, run_id, model_id)
        return int(current.version) if same else None

    def delete_version(self, name: str, number: int) -> None:
        def gone() -> bool | None:
            return True if self.get_version(name, number) is None else None

        self.scope.call(
            f"deleting placeholder version {number} of {name!r}",
            lambda: self.registry.delete_model_version(name, str(number)),
            before_retry=gone,
        )

    def set_stage(self, name: str, number: int, stage: str) -> None:
        current = self.get_version(name, number)
        if current is None or current.current_stage == stage:
            return
        self.scope.call(
            f"moving version {number} of {name!r} to stage {stage}",
            lambda: self.registry.transition_model_version_stage(name, str(number), stage, False),
        )

    def target_run(self, run_id: str | None) -> str | None:
        """The target run of a source run: unpacked from this archive, or from another one."""
        if run_id is None:
            return None
        if run_id in self.scope.runs:
            return self.scope.runs[run_id]
        if run_id not in self._outside_runs:
            self._outside_runs[run_id] = self.find_unpacked_run(run_id)
        return self._outside_runs[run_id]

    def target_artifact_uri(self, run_id: str) -> str | None:
        run = self.scope.call(f"reading run {run_id}", partial(self.scope.client.get_run, run_id))
        uri: str | None = run.info.artifact_uri
        return uri

    def find_unpacked_run(self, run_id: str) -> str | None:
        from mlflow.entities import ViewType

        from .lineage import SOURCE_RUN_TAG

        client = self.scope.client
        exps = self.scope.call(
            "listing target experiments",
            lambda: client.search_experiments(view_type=ViewType.ALL, max_results=50_000),
        )
        ids = [e.experiment_id for e in exps]
        for start in range(0, len(ids), 100):
            chunk = ids[start : start + 100]
            found = self.scope.call(
                f"looking for the target copy of run {run_id}",
                partial(
                    client.search_runs,
                    chunk,
                    filter_string=f"tags.`{SOURCE_RUN_TAG}` = '{run_id}'",
                    run_view_type=ViewType.ALL,
                    max_results=1,
                ),
            )
            if found:
                return str(found[0].info.run_id)
        return None

    def rewrite_source(self, v: dict[str, Any], run_id: str | None, model_id: str | None) -> str:
        source: str = v["source"] or ""
        old_run, old_model = v["run_id"], v["model_id"]
        if old_model and model_id and source == f"models:/{old_model}":
            return f"models:/{model_id}"
        if old_run and run_id and source.startswith(f"runs:/{old_run}/"):
            return f"runs:/{run_id}/" + source[len(f"runs:/{old_run}/") :]
        if old_run in self.scope.run_artifact_uris:
            before, after = self.scope.run_artifact_uris[old_run]
            if before and after and source.startswith(before.rstrip("/") + "/"):
                return after.rstrip("/") + source[len(before.rstrip("/")) :]
        marker = f"/{old_run}/artifacts"
        if old_run and run_id and marker in source:
            # a run from another archive: its source artifact URI is not here, but MLflow's
            # run artifact URIs end in <run_id>/artifacts on every store
            after = self.target_artifact_uri(run_id)
            rest = source.split(marker, 1)[1]
            if after and (rest == "" or rest.startswith("/")):
                return after.rstrip("/") + rest
        if old_model in self.scope.model_locations:
            before, after = self.scope.model_locations[old_model]
            if before and after and (source == before or source.startswith(before + "/")):
                return after + source[len(before) :]
        return source

    def version_tags(self, model: dict[str, Any], v: dict[str, Any], tags: dict[str, str]) -> Any:
        out = dict(tags)
        if self.scope.origin is not None:
            out.update(
                object_source_tags(
                    {f: v[f] for f in _VERSION_FIELDS},
                    v["source_json"],
                    tuple(sorted(tags.items())),
                    self.scope.origin,
                )
            )
        out[SOURCE_VERSION_TAG] = str(v["version"])
        return fit_tags(
            out, REGISTRY_TAG_VALUE_LIMIT, f"version {v['version']} of {model['name']!r}"
        )

    def create_version(
        self, model: dict[str, Any], v: dict[str, Any], tags: dict[str, str], fill_to: int
    ) -> int | None:
        """Create version ``v``; while the target's number comes out lower than ``fill_to``,
        delete it again (a placeholder for a deleted source version) and repeat."""
        name = model["name"]
        prompt = model["kind"] == "prompt"
        run_id = None if prompt else self.target_run(v["run_id"])
        model_id = self.scope.logged_models.get(v["model_id"] or "") if not prompt else None
        source = v["source"] if prompt else self.rewrite_source(v, run_id, model_id)
        if not prompt and v["run_id"] and run_id is None and model_id is None:
            self.notes(
                f"version {v['version']} of {name!r}: its run {v['run_id']} is in neither this "
                "archive nor the target; the version is created without a run and keeps its "
                f"source {source!r}"
            )
        fitted = self.version_tags(model, v, tags)
        self.scope.notes.extend(fitted.notes)
        while True:

            def create(tag_set: dict[str, str]) -> Any:
                return self.registry.create_model_version(
                    name,
                    source,
                    run_id=run_id,
                    tags=tag_set,
                    run_link=v["run_link"],
                    description=v["description"],
                    await_creation_for=0,
                    model_id=model_id,
                )

            try:
                made = self.scope.call(
                    f"creating version {v['version']} of {name!r}",
                    partial(create, fitted.tags),
                )
            except Exception as exc:
                if v["run_scope"] == "outside" or v["model_scope"] == "outside":
                    self.notes(
                        f"version {v['version']} of {name!r} was not created: {exc}; unpack "
                        "the archive that holds its run first, then this one again"
                    )
                    self.counts["model_versions_refused"] += 1
                    return None
                raise
            number = int(made.version)
            if number >= fill_to:
                self.counts["model_versions_created"] += 1
                return number
            self.delete_version(name, number)

    # -- aliases ----------------------------------------------------------------------------

    def set_aliases(
        self, name: str, aliases: list[dict[str, Any]], numbers: dict[int, int]
    ) -> None:
        for a in aliases:
            target = numbers.get(a["version"])
            if target is None:
                self.notes(
                    f"registered model {name!r}: alias {a['alias']!r} names version "
                    f"{a['version']}, which was not created: alias not set"
                )
                continue
            self.scope.call(
                f"setting alias {a['alias']!r} of {name!r}",
                partial(self.registry.set_registered_model_alias, name, a["alias"], str(target)),
            )
            self.counts["aliases"] += 1


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's database registry store resolves a ``models:/m-...`` source through the
    *global* tracking URI (``MlflowClient()``), not its own: point it at the target meanwhile."""
    from mlflow.tracking._tracking_service import utils

    before = getattr(utils, "_tracking_uri", None)
    setattr(utils, "_tracking_uri", uri)  # noqa: B010 (typed None in MLflow)
    try:
        yield
    finally:
        setattr(utils, "_tracking_uri", before)  # noqa: B010


def write_registry(scope: UnpackScope, rows: Rows) -> tuple[dict[str, int], dict[str, Any]]:
    """Write the archive's registered models and prompts; returns counts and the version map
    (model name -> source number -> target number)."""
    writer = _RegistryWriter(scope, rows)
    with _global_tracking_uri(scope.tracking_uri):
        counts = writer.run()
    return counts, dict(writer.version_map)
