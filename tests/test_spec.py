"""spec/: released schema files are pinned, equal the code, and hold for real archives."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exim_archive.bundle_writer import FAMILY_COUNTS
from exim_archive.container import MEMBER_NAME_RE
from exim_archive.demo import seed_sample_store
from exim_archive.manifest import MANIFEST_DIGEST_MEMBER, MANIFEST_MEMBER, canonical_json
from exim_archive.pack import pack
from exim_archive.tables import schema_to_json

SPEC = Path(__file__).resolve().parent.parent / "spec"
V1 = SPEC / "1.0"
V11 = SPEC / "1.1"

RELEASED_SHA256 = {
    "1.0/manifest.schema.json": "13ffa60588603a23dfecf025d25776008a46fa30d7bdffe521c78d5bf1e63d31",
    "1.0/tables.json": "50e75ca070cb64dd8800edca511cccf9687ae51c241fd01a040eecf675adca60",
    "1.1/tables.json": "a2ae0ec98a23248f9124920c2162ef91345ffbff40d9853ab1806e41cac0cc39",
}
"""Released schema files never change; a new format version gets new files (spec/README.md)."""

ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64()}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _load(name: str) -> Any:
    return json.loads((V1 / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, migrated_db: Path) -> Path:
    """A real archive packed from the demo's sample store."""
    root = tmp_path_factory.mktemp("spec")
    shutil.copyfile(migrated_db, root / "s.db")  # conftest.py: a store with migrations applied
    uri = f"sqlite:///{root / 's.db'}"
    old = os.getcwd()
    os.chdir(root)  # MLflow puts the default experiment's artifacts under the working directory
    try:
        seed_sample_store(uri, root / "art")
        pack(root / "a.exim", tracking_uri=uri)
    finally:
        os.chdir(old)
    return root / "a.exim"


@pytest.fixture(scope="module")
def manifest(archive: Path) -> dict[str, Any]:
    with zipfile.ZipFile(archive) as zf:
        doc: dict[str, Any] = json.loads(zf.read(MANIFEST_MEMBER))
    return doc


def _parquet_members(archive: Path, manifest: dict[str, Any]) -> Iterator[tuple[str, str, bytes]]:
    with zipfile.ZipFile(archive) as zf:
        for table, entry in sorted(manifest["tables"].items()):
            for member in entry["members"]:
                yield table, member, zf.read(member)


# -- (a) tables.json is the code's tables ---------------------------------------------------------


def test_tables_json_equals_the_code() -> None:
    text = (V11 / "tables.json").read_text(encoding="utf-8")
    expected = schema_to_json()
    assert json.loads(text) == expected
    assert text == json.dumps(expected, indent=2, sort_keys=True) + "\n"


def test_minor_version_only_adds_tables() -> None:
    """1.1 keeps every 1.0 table as it was (spec/README.md: minor versions only add)."""
    old = json.loads((V1 / "tables.json").read_text(encoding="utf-8"))["tables"]
    new = json.loads((V11 / "tables.json").read_text(encoding="utf-8"))["tables"]
    for name, table in old.items():
        assert {k: v for k, v in new[name].items() if k != "since"} == table
        assert new[name]["since"] == "1.0"
    assert all(new[name]["since"] == "1.1" for name in set(new) - set(old))


# -- (b) released files are pinned ---------------------------------------------------------------


def test_released_schema_files_are_pinned() -> None:
    present = {p.relative_to(SPEC).as_posix() for p in SPEC.glob("*/*.json")}
    assert present == set(RELEASED_SHA256), "pin every released schema file in RELEASED_SHA256"
    for name, pinned in RELEASED_SHA256.items():
        actual = hashlib.sha256((SPEC / name).read_bytes()).hexdigest()
        assert actual == pinned, f"{name} changed; released files never change (spec/README.md)"


def test_spec_gives_the_code_member_name_grammar() -> None:
    anchored = "^" + MEMBER_NAME_RE.pattern.removeprefix("^").removesuffix("$") + "$"
    assert anchored in (V1 / "format.md").read_text(encoding="utf-8")
    schema = _load("manifest.schema.json")
    assert schema["$defs"]["member_path"]["pattern"] == anchored


# -- (c) a real archive against the machine-readable schemas -------------------------------------


def test_manifest_validates_against_schema(manifest: dict[str, Any]) -> None:
    schema = _load("manifest.schema.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(manifest)
    # A 1.1 writer writes the 1.0 fields; 1.1 adds only counts (the schema allows more).
    assert set(manifest) == set(schema["required"])
    added = set(FAMILY_COUNTS) | {"prompts"}
    assert set(manifest["counts"]) == set(schema["properties"]["counts"]["required"]) | added
    spec: Any = schema_to_json()
    assert set(manifest["tables"]) == set(spec["tables"])
    assert manifest["format_version"] == "1.1"
    assert manifest["features"] == []


def _bad(manifest: dict[str, Any], change: str) -> dict[str, Any]:
    doc = copy.deepcopy(manifest)
    if change == "major 2":
        doc["format_version"] = "2.0"
    elif change == "leading zero":
        doc["format_version"] = "1.01"
    elif change == "uppercase sha":
        doc["members"][0]["sha256"] = doc["members"][0]["sha256"].upper()
    elif change == "negative count":
        doc["counts"]["runs"] = -1
    elif change == "unsafe path":
        doc["members"][0]["path"] = "../etc/passwd"
    elif change == "manifest listed":
        doc["members"].append({"path": MANIFEST_MEMBER, "size": 1, "sha256": "0" * 64})
    elif change == "credentials":
        doc["source"]["tracking_uri"] = "http://bob:secret@host:5000"
    elif change == "query":
        doc["source"]["tracking_uri"] = "postgresql://host/db?password=x"
    elif change == "parent in 1.0":
        doc["format_version"] = "1.0"
        doc["parent"] = "0" * 64
    elif change == "missing table":
        del doc["tables"]["metrics"]
    elif change == "bool count":
        doc["counts"]["runs"] = True
    return doc


@pytest.mark.parametrize(
    "change",
    [
        "major 2",
        "leading zero",
        "uppercase sha",
        "negative count",
        "unsafe path",
        "manifest listed",
        "credentials",
        "query",
        "parent in 1.0",
        "missing table",
        "bool count",
    ],
)
def test_schema_rejects_invalid_manifests(manifest: dict[str, Any], change: str) -> None:
    validator = jsonschema.Draft202012Validator(_load("manifest.schema.json"))
    assert not validator.is_valid(_bad(manifest, change))


def test_schema_accepts_a_newer_minor(manifest: dict[str, Any]) -> None:
    doc = copy.deepcopy(manifest)
    doc["format_version"] = "1.7"
    doc["parent"] = "0" * 64
    doc["features"] = [{"name": "incremental", "must_understand": True}]
    doc["tables"]["traces"] = {
        "members": ["tables/traces.parquet"],
        "rows": 0,
        "schema_version": "1.7",
    }
    doc["members"][0]["compression"] = "none"
    jsonschema.Draft202012Validator(_load("manifest.schema.json")).validate(doc)


def _sort_key(row: dict[str, Any], columns: list[str]) -> tuple[Any, ...]:
    out: list[Any] = []
    for c in columns:
        v = row[c]
        if isinstance(v, float):
            out.append((math.isnan(v), 0.0 if math.isnan(v) else v))
        elif isinstance(v, str):
            out.append(v.encode("utf-8"))
        else:
            out.append(v)
    return tuple(out)


def test_parquet_members_match_tables_json(archive: Path, manifest: dict[str, Any]) -> None:
    spec: Any = schema_to_json()
    tables: dict[str, Any] = spec["tables"]
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in tables}
    for table, member, data in _parquet_members(archive, manifest):
        want = tables[table]
        pf = pq.ParquetFile(pa.BufferReader(data))
        schema = pf.schema_arrow
        assert schema.names == [c["name"] for c in want["columns"]], member
        for field, col in zip(schema, want["columns"], strict=True):
            assert field.type == ARROW_TYPES[col["type"]], (member, field.name)
            assert field.nullable == col["nullable"], (member, field.name)
        meta = schema.metadata
        assert meta[b"exim.table"] == table.encode(), member
        assert meta[b"exim.schema_version"] == spec["schema_version"].encode(), member
        for i in range(pf.metadata.num_row_groups):
            group = pf.metadata.row_group(i)
            assert group.num_rows <= 65_536, member
            for j in range(group.num_columns):
                assert group.column(j).compression == "ZSTD", member
        rows[table].extend(pf.read().to_pylist())
    for name, want in tables.items():
        got = rows[name]
        assert len(got) == manifest["tables"][name]["rows"], name
        keys = [_sort_key(r, want["sort_key"]) for r in got]
        assert keys == sorted(keys), f"{name} is not in sort_key order"
        if want["primary_key"]:
            ids = [tuple(r[c] for c in want["primary_key"]) for r in got]
            assert len(ids) == len(set(ids)), f"{name} repeats a primary key"
        for ref in want["references"]:
            allowed = {r[ref["table_column"]] for r in rows[ref["table"]]}
            assert {r[ref["column"]] for r in got} <= allowed, (name, ref)
    assert rows["metrics"], "the sample store has metric points"


def test_metrics_parts_and_encodings(archive: Path, manifest: dict[str, Any]) -> None:
    parts = manifest["tables"]["metrics"]["members"]
    assert parts == [f"tables/metrics/part-{i:05d}.parquet" for i in range(len(parts))]
    with zipfile.ZipFile(archive) as zf:
        pf = pq.ParquetFile(pa.BufferReader(zf.read(parts[0])))
    assert pf.metadata.num_row_groups <= 64
    group = pf.metadata.row_group(0)
    columns = {group.column(j).path_in_schema: group.column(j) for j in range(group.num_columns)}
    assert columns["run_id"].has_dictionary_page and columns["key"].has_dictionary_page
    assert not columns["value"].has_dictionary_page
    assert "DELTA_BINARY_PACKED" in columns["step"].encodings
    # timestamp: whichever of the two is smaller for the part's first row group (§6.2)
    assert {"DELTA_BINARY_PACKED", "PLAIN"} & set(columns["timestamp"].encodings)
    assert "BYTE_STREAM_SPLIT" in columns["value"].encodings
    assert columns["value"].has_column_index and columns["value"].has_offset_index


def test_artifact_blobs_are_content_addressed(archive: Path, manifest: dict[str, Any]) -> None:
    listed = {m["path"] for m in manifest["members"]}
    with zipfile.ZipFile(archive) as zf:
        table = pq.read_table(pa.BufferReader(zf.read("tables/artifacts.parquet")))
    rows = table.to_pylist()
    assert rows, "the sample store has artifacts"
    for row in rows:
        suffix = {"none": "", "zstd": ".zst"}[row["compression"]]
        assert row["member"] == f"blobs/{row['sha256']}{suffix}"
        assert row["member"] in listed


# -- (d) the container ---------------------------------------------------------------------------


def test_zip_layout_accounts_for_every_byte(archive: Path) -> None:
    data = archive.read_bytes()
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
    offset = 0
    for info in infos:
        assert info.header_offset == offset, info.filename
        assert data[offset : offset + 4] == b"PK\x03\x04"
        name_len, extra_len = struct.unpack_from("<HH", data, offset + 26)
        offset += 30 + name_len + extra_len + info.file_size
    assert data[offset : offset + 4] == b"PK\x01\x02"  # the central directory follows at once
    assert data[-22:-18] == b"PK\x05\x06"  # and the end record, without comment, ends the file


def test_zip_members_order_and_properties(archive: Path, manifest: dict[str, Any]) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names[:2] == [MANIFEST_MEMBER, MANIFEST_DIGEST_MEMBER]
        rest = names[2:]
        assert rest == sorted(rest, key=lambda n: n.encode("utf-8"))
        assert len(set(names)) == len(names)
        for info in infos:
            assert MEMBER_NAME_RE.fullmatch(info.filename) and len(info.filename) <= 255
            assert not info.is_dir()
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.compress_size == info.file_size
            assert info.date_time == ZIP_DATE
            assert info.external_attr >> 16 == 0o100644
            assert info.create_system == 3
            assert info.create_version in (20, 45) and info.extract_version in (20, 45)
            assert info.flag_bits == 0 and info.extra == b"" and info.comment == b""
        assert zf.comment == b""
        raw = zf.read(MANIFEST_MEMBER)
        digest_line = zf.read(MANIFEST_DIGEST_MEMBER)
        assert raw == canonical_json(json.loads(raw))
        assert digest_line == f"{hashlib.sha256(raw).hexdigest()}  manifest.json\n".encode()
        listed = manifest["members"]
        assert [m["path"] for m in listed] == rest
        for entry in listed:
            data = zf.read(entry["path"])
            assert len(data) == entry["size"]
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_directory_form_is_an_archive(archive: Path, tmp_path: Path) -> None:
    from exim_archive.verify import verify

    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    for form in (archive, folder):
        report = verify(form)
        assert report.ok, report.problems
    assert verify(folder).digest == verify(archive).digest
