"""One job on the model at a time: a FIFO queue, a worker thread, and A1111's progress/interrupt/skip state.

Every request that uses the model or the CPU at length (generate, switch checkpoints, train, preprocess) becomes a
:class:`Job` run by the one worker thread, so concurrent HTTP and UI requests queue instead of racing on the UNet's
hypernetwork stack. ``/progress`` reads the running job's counters without waiting for the queue. Interrupt and
skip are flags on the job that was running when they were asked for, never on whichever job runs next.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.requests import Request

log = logging.getLogger("hypernet.server")


class JobCancelled(Exception):
    """The job was removed from the queue before it started (its client went away, or the server stops)."""


class ClientGone(Exception):
    """The HTTP client disconnected while its request waited for a job."""


@dataclass
class Job:
    """A unit of work on the model, with the counters A1111's ``/progress`` reports."""

    name: str
    run: Callable[[Job], Any]
    id: str
    future: Future = field(default_factory=Future)
    timestamp: str = field(default_factory=lambda: datetime.now().strftime("%Y%m%d%H%M%S"))
    job_no: int = 0
    job_count: int = 1
    sampling_step: int = 0
    sampling_steps: int = 0
    textinfo: str | None = None
    started: float | None = None
    interrupted: bool = False
    skipped: bool = False
    preview_png: bytes | None = None
    preview_wanted: bool = False  # set by /progress: someone watches, so the worker decodes previews
    extra: dict[str, Any] = field(default_factory=dict)  # job-specific live data (training: losses, step)

    def progress(self) -> float:
        """A1111's formula: 0.01 + finished share of jobs + this job's sampling share, at most 1."""
        if self.job_count <= 0:
            return 0.0
        value = 0.01 + self.job_no / self.job_count
        if self.sampling_steps > 0:
            value += self.sampling_step / self.sampling_steps / self.job_count
        return min(value, 1.0)


KEPT_TASKS = 256  # finished task ids /internal/progress still reports as completed


class JobQueue:
    """FIFO of jobs run one at a time by a daemon worker thread (started on first use, stopped by ``close``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._current: Job | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._ids = itertools.count(1)
        self._finished: OrderedDict[str, Job] = OrderedDict()  # recent task ids, for /internal/progress
        self.completed = 0
        self.cancelled = 0

    # ------------------------------------------------------------------ submitting
    def submit(self, name: str, run: Callable[[Job], Any], *, task_id: str | None = None) -> Job:
        """Queue ``run(job)``; its return value or exception lands in ``job.future``."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            job = Job(name, run, task_id or f"task({next(self._ids)})")
            self._pending.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="hypernet-jobs", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return job

    def run(self, name: str, run: Callable[[Job], Any], *, timeout: float | None = None) -> Any:
        """Submit and wait (for callers already on a thread, like the web UI's handlers)."""
        return self.submit(name, run).future.result(timeout)

    def abandon(self, job: Job) -> None:
        """The client of ``job`` went away: drop it if still queued, interrupt it if running."""
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                self.cancelled += 1
                job.future.set_exception(JobCancelled())
                return
        job.interrupted = True

    # ------------------------------------------------------------------ control and state
    @property
    def current(self) -> Job | None:
        return self._current

    @property
    def pending(self) -> int:
        return len(self._pending)

    def interrupt(self) -> None:
        job = self._current
        if job is not None:
            job.interrupted = True

    def skip(self) -> None:
        job = self._current
        if job is not None:
            job.skipped = True

    def snapshot(self, *, want_image: bool) -> dict[str, Any]:
        """``GET /progress``'s body for the running job, or the idle answer (progress 0, job_count 0)."""
        job = self._current
        if job is None:
            state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
                     "job_count": 0, "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
        if want_image:
            job.preview_wanted = True
        progress = job.progress()
        elapsed = time.monotonic() - (job.started or time.monotonic())
        eta = elapsed / progress - elapsed if progress > 0 else 0.0
        state = {
            "skipped": job.skipped,
            "interrupted": job.interrupted,
            "stopping_generation": False,
            "job": job.name,
            "job_count": job.job_count,
            "job_timestamp": job.timestamp,
            "job_no": job.job_no,
            "sampling_step": job.sampling_step,
            "sampling_steps": job.sampling_steps,
        }
        image = base64.b64encode(job.preview_png).decode() if want_image and job.preview_png else None
        body: dict[str, Any] = {"progress": progress, "eta_relative": eta, "state": state,
                                "current_image": image, "textinfo": job.textinfo}
        if "training" in job.extra:
            body["training"] = dict(job.extra["training"])
        return body

    def task(self, task_id: str, *, want_image: bool) -> dict[str, Any]:
        """A1111's ``/internal/progress`` answer for one task id: active, queued (with its place) or completed."""
        with self._cond:
            current = self._current
            pending = list(self._pending)
            completed = task_id in self._finished
        if current is None or current.id != task_id:
            queued = next((i for i, job in enumerate(pending) if job.id == task_id), None)
            text = "Waiting..." if queued is None else f"In queue: {queued + 1}/{len(pending)}"
            return {"active": False, "queued": queued is not None, "completed": completed, "progress": None,
                    "eta": None, "live_preview": None, "id_live_preview": -1, "textinfo": text}
        if want_image:
            current.preview_wanted = True
        progress = current.progress()
        elapsed = time.monotonic() - (current.started or time.monotonic())
        image = current.preview_png if want_image else None
        return {"active": True, "queued": False, "completed": False, "progress": progress,
                "eta": elapsed / progress - elapsed if progress > 0 else None,
                "live_preview": "data:image/png;base64," + base64.b64encode(image).decode() if image else None,
                "id_live_preview": current.sampling_step + current.job_no * max(current.sampling_steps, 1),
                "textinfo": current.textinfo}

    def close(self, timeout: float = 120.0) -> None:
        """Refuse new jobs, cancel queued ones, interrupt the running one and wait for it (an interrupted
        training run saves its network first)."""
        with self._cond:
            self._closed = True
            while self._pending:
                self._pending.popleft().future.set_exception(JobCancelled())
            self._cond.notify_all()
        self.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed and not self._pending:
                    return
                job = self._pending.popleft()
                job.started = time.monotonic()
                self._current = job
            outcome: tuple[bool, Any] | None = None
            try:
                if job.future.set_running_or_notify_cancel():
                    outcome = (True, job.run(job))
            except BaseException as e:  # noqa: BLE001 - the caller decides; the worker must survive
                outcome = (False, e)
            finally:
                with self._cond:  # idle before the answer goes out: a client's next /progress sees it so
                    self._current = None
                    self.completed += 1
                    self._finished[job.id] = job
                    while len(self._finished) > KEPT_TASKS:
                        self._finished.popitem(last=False)
            if outcome is not None:
                ok, value = outcome
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)


async def wait_for_job(request: Request | None, queue: JobQueue, job: Job, *, abandon: bool = True) -> Any:
    """Await ``job`` for an HTTP request; if the client disconnects meanwhile and ``abandon`` is set, drop the job
    (still queued) or interrupt it (running) and raise :class:`ClientGone`. Training passes ``abandon=False``:
    A1111 keeps training when a client with a short timeout goes away, and so do we."""
    future = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({future}, timeout=0.25)
        if done:
            return future.result()
        if abandon and request is not None and await request.is_disconnected():
            queue.abandon(job)
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # consumed: nobody awaits it
            log.info("client of %s %s went away; job %s abandoned", request.method, request.url.path, job.id)
            raise ClientGone()
