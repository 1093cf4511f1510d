"""The command line: a thin layer over the library. Each command parses, calls, renders."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from .errors import ArchiveError

app = typer.Typer(
    name="exim-archive",
    help="Pack MLflow tracking data into one verifiable archive file, and unpack it elsewhere.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state = {"debug": False}
_INTERRUPTED = 130

ArchiveArg = Annotated[
    Path, typer.Argument(help="The archive file (.exim).", show_default=False, metavar="ARCHIVE")
]
TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (http(s)://, sqlite:///, postgresql://, mysql://, file path). "
        "Default: $MLFLOW_TRACKING_URI.",
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _say(text: str) -> None:
    typer.echo(text, err=True)


def _emit(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str))


def _version(value: bool) -> None:
    if value:
        import pyarrow as pa

        pool = pa.default_memory_pool().backend_name
        typer.echo(f"exim-archive {__version__} (pyarrow {pa.__version__}, memory pool {pool})")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Pack MLflow tracking data into one verifiable archive file, and unpack it elsewhere."""
    _state["debug"] = debug


ArtifactsDestination = Annotated[
    str | None,
    typer.Option(
        "--artifacts-destination",
        metavar="PATH_OR_URI",
        help="With a database URI: where the server that uses this database keeps served "
        "(mlflow-artifacts:/) artifacts, as its own --artifacts-destination (a path or URI).",
        show_default=False,
    ),
]


@app.command()
def pack(
    archive: ArchiveArg,
    tracking_uri: TrackingUri = None,
    experiment: Annotated[
        list[str] | None,
        typer.Option(
            "--experiment",
            "-e",
            metavar="NAME_OR_ID",
            help="Experiment name or id to pack; repeat for more. Default: every experiment, "
            "deleted ones included.",
            show_default=False,
        ),
    ] = None,
    no_artifacts: Annotated[
        bool, typer.Option("--no-artifacts", help="Leave run artifacts out.")
    ] = False,
    artifacts_destination: ArtifactsDestination = None,
    leave_out: Annotated[
        list[str] | None,
        typer.Option(
            "--leave-out",
            metavar="FAMILY",
            help="Leave a family out: logged-models, registry, prompts, traces or "
            "evaluation-datasets; repeat for more. Default: all that belong to the selection.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace ARCHIVE if it exists.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Read a tracking server into one archive file (written atomically)."""
    from .pack import pack as do_pack

    report = do_pack(
        archive,
        tracking_uri=tracking_uri,
        experiments=experiment,
        artifacts=not no_artifacts,
        artifacts_destination=artifacts_destination,
        overwrite=force,
        leave_out=frozenset(leave_out or ()),
    )
    for warning in report.warnings:
        _say(f"note: {warning}")
    if as_json:
        _emit(report.__dict__)
        return
    c = report.counts
    _say(
        f"packed {c['experiments']} experiments, {c['runs']} runs, {c['metric_points']:,} metric "
        f"points, {c['artifacts']} artifacts"
        + "".join(f", {c[k]} {label}" for k, label in _FAMILY_LABELS if c.get(k))
        + f" into {report.archive} ({report.bytes:,} bytes) "
        f"in {report.seconds:.1f} s"
        + (f" ({report.retries} retried calls)" if report.retries else "")
    )
    typer.echo(f"sha256:{report.digest}")


_FAMILY_LABELS = (
    ("registered_models", "registered models and prompts"),
    ("model_versions", "model and prompt versions"),
    ("logged_models", "logged models"),
    ("traces", "traces"),
    ("spans", "spans"),
    ("evaluation_datasets", "evaluation datasets"),
)


@app.command()
def unpack(
    archive: ArchiveArg,
    tracking_uri: TrackingUri = None,
    import_source_tags: Annotated[
        bool,
        typer.Option(
            "--import-source-tags",
            help="Also write the source's raw fields and system tags as mlflow_exim.* tags.",
        ),
    ] = False,
    artifacts_destination: ArtifactsDestination = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the report, with the old -> new id map, as JSON."),
    ] = False,
) -> None:
    """Write an archive into a tracking server (verifies first; safe to run again)."""
    from .unpack import unpack as do_unpack

    report = do_unpack(
        archive,
        tracking_uri=tracking_uri,
        import_source_tags=import_source_tags,
        say=_say,
        artifacts_destination=artifacts_destination,
    )
    for note in report.notes:
        _say(f"note: {note}")
    if as_json:
        _emit(report.to_json())
        return
    _say(
        f"unpacked into {report.tracking_uri}: experiments {report.experiments_created} created, "
        f"{report.experiments_reused} reused; runs {report.runs_created} created, "
        f"{report.runs_resumed} resumed, {report.runs_updated} updated, "
        f"{report.runs_already_complete} already there; "
        f"{report.metric_points:,} metric points, {report.artifacts} artifacts; "
        + "".join(f"{k.replace('_', ' ')} {v}; " for k, v in report.families.items() if v)
        + f"{report.runs_checked} runs checked against the archive "
        f"in {report.seconds:.1f} s"
        + (f" ({report.retries} retried calls)" if report.retries else "")
    )


@app.command()
def verify(
    archive: ArchiveArg,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            metavar="URI",
            help="Also check that this tracking URI holds everything in the archive "
            "(as unpack writes it).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check an archive completely, from the file alone; exit 0 only if all holds."""
    from .verify import verify as do_verify

    report = do_verify(archive)
    checked = ""
    if against is not None and report.ok:
        from .proof import check_against

        proof = check_against(archive, tracking_uri=against)
        problems = [f"target {proof.tracking_uri}: {p}" for p in proof.problems]
        report = replace(report, problems=problems)
        checked = f"; {proof.tracking_uri} holds all of it ({proof.runs_checked} runs checked)"
    if as_json:
        _emit({**report.__dict__, "ok": report.ok})
    elif report.ok:
        typer.echo(
            f"ok: {report.archive} (format {report.format_version}, "
            f"{report.members_checked} members, sha256:{report.digest}){checked}"
        )
    else:
        for problem in report.problems:
            typer.echo(f"problem: {problem}")
    if not report.ok:
        count = len(report.problems)
        more = f" (and {count - 1} more, listed on stdout)" if count > 1 else ""
        _say(f"error: {report.problems[0]}{more}")
        raise typer.Exit(3)


@app.command()
def inspect(archive: ArchiveArg, as_json: JsonFlag = False) -> None:
    """Summarize an archive without a server: versions, source, counts, experiments, sizes."""
    from .summary import inspect_archive, render_summary

    info = inspect_archive(archive)
    if as_json:
        _emit(info)
    else:
        typer.echo(render_summary(info))


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Argument(help="A new or empty folder to work in.", metavar="DIRECTORY")
    ] = Path("exim-demo"),
) -> None:
    """Seed a local sqlite store, then pack, inspect, verify and unpack it into a second one."""
    from .demo import run_demo

    run_demo(directory, typer.echo)


def _return_freed_memory() -> None:
    """Let Arrow's jemalloc pool give freed memory back at once: a long history passes through
    in pieces, and the process's peak should be what it holds, not what it once held. The CLI's
    process runs on jemalloc where it can (``exim_archive/__init__.py`` names it in
    ``ARROW_DEFAULT_MEMORY_POOL`` before pyarrow loads); under another pool this does nothing.
    """
    import pyarrow as pa

    with contextlib.suppress(NotImplementedError, AttributeError):
        pa.jemalloc_set_decay_ms(0)


class _NoPandas:
    """An import finder that says pandas is not installed (see :func:`_arrow_without_pandas`)."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"{name} left out by exim-archive's CLI", name=name)


def _arrow_without_pandas() -> None:
    """Spare every command pandas' import (0.15-0.2 s, a tenth of a small pack).

    pyarrow imports pandas at its first conversion of any value, array or scalar, only to ask
    whether the value is a pandas object (apache/arrow#34994); it has no switch for that. This
    process never hands Arrow a pandas object, so its first conversion happens here with pandas
    hidden: pyarrow then takes pandas as absent for those checks, which for anything else answer
    the same. Nothing else changes: pandas imports as usual afterwards (MLflow's, or an explicit
    ``to_pandas``, which imports it again). The library alone (``import exim_archive``) leaves
    pyarrow as it is: only the CLI owns its process.
    """
    import pyarrow as pa

    if "pandas" in sys.modules:
        return
    sys.meta_path.insert(0, _NoPandas)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(_NoPandas)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: library errors become one ``error:`` line and an exit code."""
    # MLflow logs INFO lines (database migrations) on stderr; ours are the only lines a user needs.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    _arrow_without_pandas()  # first: any use of pyarrow may import pandas
    _return_freed_memory()
    try:
        code = app(args=argv, standalone_mode=False)
        if code == _INTERRUPTED:  # typer turns Ctrl-C into a silent exit code 130
            raise KeyboardInterrupt
    except ArchiveError as exc:
        if _state["debug"]:
            traceback.print_exc()
        _say(f"error: {exc}")
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        _say("error: interrupted; run the same command again to finish the job")
        return _INTERRUPTED
    except (typer.Abort, EOFError):
        _say("error: aborted")
        return 1
    except typer.TyperException as exc:  # a usage error, from the Click that Typer carries
        ctx = getattr(exc, "ctx", None)
        helping = f"{ctx.command_path} --help" if ctx is not None else "exim-archive --help"
        _say(f"error: {exc.format_message()} (see '{helping}')")
        return int(getattr(exc, "exit_code", 2))
    except Exception as exc:  # the CLI boundary: nothing escapes as a bare traceback
        if _state["debug"]:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        _say(
            f"error: internal error: {type(exc).__name__}: {first}"
            " (run with --debug for the traceback, and please report it)"
        )
        return 70
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
