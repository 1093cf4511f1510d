"""One unpack at a time per target server.

MLflow offers one atomic "create if absent" that can also be removed for good: registering a
model name. ``unpack`` holds the registered model :data:`LOCK_NAME` while it writes; a second
unpack waits for it. The holder refreshes a heartbeat tag; a lock whose heartbeat is older than
:data:`STALE_AFTER` seconds (its holder was killed) is taken over. A lock whose ``process`` tag
names a process of this machine (same Linux boot and PID namespace) that no longer runs is taken
over at once: an unpack killed here and run again does not wait for the heartbeat to age. Where
the target has no model registry, unpack goes on without the lock and says so.

Taking a lock over removes it only if it still holds the owner and heartbeat that were judged
stale: two unpacks waiting on the same dead holder must not remove each other's fresh lock. On a
database written with plain SQL that check and the removal are one transaction. Through MLflow's
client they are a read and a delete, with a moment between them; so an unpack that took a lock
over looks again :data:`SETTLE` seconds after it made its own, and if another unpack's lock is
there instead (it removed ours in that moment), waits for that one.

A holder can lose its lock while it still runs: if no heartbeat reached the target for over
:data:`STALE_AFTER` seconds (the machine or process was suspended, the target out of reach),
another unpack takes it over. So each heartbeat is written only while the lock still names its
holder as ``owner`` (one conditional transaction with plain SQL; through MLflow's client a read
then a write, see :meth:`_ClientModels.beat_if_owner`), and a heartbeat that finds another
owner's lock, or none, stops beating and records it (:attr:`TargetLock.lost`). The writes call
:meth:`TargetLock.check` before each run and unpack once more after them: the unpack stops with
a :class:`.TargetError` rather than write beside the new holder. Writes already under way when
the heartbeat finds out (up to one :data:`HEARTBEAT` period, the run in flight) still land.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Protocol

from .errors import TargetError
from .sink import MlflowSink

__all__ = ["LOCK_NAME", "TargetLock"]

LOCK_NAME = "mlflow_exim.unpack-lock"
STALE_AFTER = 120.0
HEARTBEAT = 20.0
SETTLE = 2.0
"""Seconds after a takeover before the new holder checks the lock is still its own (client only)."""
BEAT_THREAD = "exim-archive unpack lock heartbeat"
"""The heartbeat thread's name."""
_DESCRIPTION = "held by exim-archive unpack while it writes; removed when done"


class _Models(Protocol):
    """The four registered-model calls the lock makes."""

    atomic_delete: bool
    """Whether :meth:`delete_model_if` checks and removes as one step."""

    def model_tags(self, name: str) -> dict[str, str] | None:
        """The model's tags; None if there is no such model."""

    def create_model(self, name: str, tags: Mapping[str, str], description: str) -> bool:
        """Register ``name``; False if the name is taken."""

    def beat_if_owner(self, name: str, owner: str, value: str) -> bool:
        """Set the model's ``heartbeat`` tag to ``value`` if its ``owner`` tag is ``owner``;
        False if it is not or there is no such model."""

    def delete_model_if(self, name: str, expected: Mapping[str, str]) -> bool:
        """Remove the model if its tags hold ``expected``; True if it was removed."""


class _ClientModels:
    """:class:`_Models` through MLflow's client (any tracking URI)."""

    def __init__(self, sink: MlflowSink) -> None:
        self.sink = sink

    def model_tags(self, name: str) -> dict[str, str] | None:
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.sink.client.get_registered_model(name).tags)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def create_model(self, name: str, tags: Mapping[str, str], description: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.sink.client.create_registered_model(name, tags=dict(tags), description=description)
            return True
        except MlflowException as exc:
            # MLflow's store answers a taken name by reading the model it collided with; a
            # holder that removed it in between turns that read into RESOURCE_DOES_NOT_EXIST.
            # Either way the name was taken a moment ago: the caller looks again.
            if exc.error_code in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                return False
            raise

    def beat_if_owner(self, name: str, owner: str, value: str) -> bool:
        """MLflow has no conditional write: a read, then the write. A takeover landing in the
        moment between them gets this one heartbeat, a current time, on its fresh lock (its
        holder is alive, so nothing is judged wrongly), and the next beat finds the lock not
        ours."""
        from mlflow.exceptions import MlflowException

        tags = self.model_tags(name)
        if tags is None or tags.get("owner") != owner:
            return False
        try:
            self.sink.client.set_registered_model_tag(name, "heartbeat", value)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return False  # removed since the read
        return True

    atomic_delete = False

    def delete_model_if(self, name: str, expected: Mapping[str, str]) -> bool:
        from mlflow.exceptions import MlflowException

        tags = self.model_tags(name)
        if tags is None or any(tags.get(k) != v for k, v in expected.items()):
            return False
        try:  # another unpack may take the lock between the read and this delete: see SETTLE
            self.sink.client.delete_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return False
        return True


class TargetLock:
    """The target's unpack lock; use as a context manager around the writes."""

    def __init__(self, sink: MlflowSink, say: Callable[[str], None]) -> None:
        self.sink = sink
        self.say = say
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held = False
        self.note: str | None = None
        self.lost: str | None = None
        """How the lock stopped being ours while held (``taken over by <owner>``, ``removed``),
        as the heartbeat found it; None while it is ours."""
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.models: _Models = sink.direct or _ClientModels(sink)
        """Where the lock's registered model is kept: the database with plain SQL
        (:class:`.sql_target.SqlTarget`) or MLflow's client."""

    def _tags(self) -> dict[str, str] | None:
        return self.sink.call("reading the unpack lock", partial(self.models.model_tags, LOCK_NAME))

    def _try_create(self) -> bool:
        tags = {
            "owner": self.owner,
            "heartbeat": str(time.time()),
            **({"process": f"{_MACHINE}/{os.getpid()}"} if _MACHINE else {}),
        }

        def landed() -> bool | None:
            # a lost reply may hide a lock we did take: it carries our owner tag
            found = self._tags()
            return True if found is not None and found.get("owner") == self.owner else None

        create = partial(self.models.create_model, LOCK_NAME, tags, _DESCRIPTION)
        return self.sink.call("taking the unpack lock", create, before_retry=landed)

    def acquire(self) -> None:
        waited = False
        took_over = False
        while True:
            try:
                if self._try_create():
                    if not took_over or self.models.atomic_delete:
                        break
                    time.sleep(SETTLE)
                    tags = self._tags()
                    if tags is not None and tags.get("owner") == self.owner:
                        break
                    took_over = False  # another unpack removed ours and holds its own: wait
                else:
                    tags = self._tags()
            except TargetError as exc:
                if not _no_registry(exc):
                    raise
                self.note = f"no unpack lock on this target ({exc.message}); not guarded"
                return
            if tags is None:
                continue
            age = time.time() - _beat_time(tags)
            dead = _gone(tags.get("process", ""))
            if age > STALE_AFTER or dead:
                judged: dict[str, str] = {k: tags[k] for k in ("owner", "heartbeat") if k in tags}
                if self._delete_if(judged):  # still the stale holder's: taken over
                    took_over = True
                    if dead:
                        self.say(f"taking over the unpack lock of {tags.get('owner')}: gone")
                continue
            if not waited:
                self.say(f"waiting for another unpack into this target ({tags.get('owner')})")
                waited = True
            time.sleep(1.0)
        self.held = True
        self._beat = threading.Thread(target=self._heartbeat, name=BEAT_THREAD, daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        """Refresh the heartbeat while the lock is ours. A beat that fails (the target did not
        answer) is tried again at the next; a lock found to be another owner's, or gone, is lost
        for good: recorded for :meth:`check`, and no more beats (they would be written into
        the new holder's lock)."""
        while not self._stop.wait(HEARTBEAT):
            try:
                if self.models.beat_if_owner(LOCK_NAME, self.owner, str(time.time())):
                    continue
                tags = self.models.model_tags(LOCK_NAME)
            except Exception:
                continue
            if tags is None:
                self.lost = "removed"
            elif tags.get("owner") != self.owner:
                self.lost = f"taken over by {tags.get('owner') or 'a holder without an owner tag'}"
            else:  # still ours (its heartbeat tag gone?): not a definite loss
                continue
            return

    def check(self) -> None:
        """Raise if the heartbeat found the lock lost: this unpack must not write beside the
        one that holds it now. One attribute read, cheap enough before every run."""
        if self.lost is None:
            return
        raise TargetError(
            f"the unpack lock was {self.lost} while this unpack was writing (another unpack "
            f"takes a lock over when no heartbeat reached the target for over {STALE_AFTER:g} s: "
            "was this machine or process suspended, or the target out of reach?); stopped",
            where=self.sink.safe_uri,
            hint="what landed is kept and resumable: run the same unpack again when the other "
            "one has finished, then 'exim-archive verify ARCHIVE --against URI'",
        )

    def _delete_if(self, expected: Mapping[str, str]) -> bool:
        delete = partial(self.models.delete_model_if, LOCK_NAME, expected)
        return self.sink.call("removing the unpack lock", delete)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if self.held:
            self._delete_if({"owner": self.owner})
            self.held = False

    def __enter__(self) -> TargetLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self.release()
        except TargetError:
            if exc_type is None:
                raise
            # the job already failed (often: the target went away); that error is the one to
            # report, and a lock left behind goes stale and is taken over by the next unpack


def _beat_time(tags: Mapping[str, str]) -> float:
    """When the lock's holder last beat (0 if its tag is missing or not a number: stale)."""
    try:
        return float(tags.get("heartbeat", "0") or 0)
    except ValueError:
        return 0.0


def _no_registry(exc: TargetError) -> bool:
    """Whether a failure means the target has no model registry (so: no lock to take)."""
    text = exc.message
    return any(code in text for code in ("ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED", "404"))


def _machine() -> str | None:
    """This process's machine as the kernel knows it: boot id and PID namespace (Linux only;
    containers sharing a host name have their own PID namespaces)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}"


_MACHINE = _machine()
"""A lock's ``process`` tag: this, a slash, then the holder's PID."""


def _gone(process: str) -> bool:
    """Whether a lock's ``process`` tag names a process of this machine that no longer runs
    (or is a zombie). Unknown, elsewhere, or alive: False, and the heartbeat decides."""
    machine, _, pid = process.rpartition("/")
    if not _MACHINE or machine != _MACHINE or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: it exists
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # ended between the two looks
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
