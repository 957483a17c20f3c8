"""Where capture and encode run their batches: in this process, or spread over Ray actors; one interface.

A job is a picklable object whose `start(device)` loads what its batches need (the model, an SAE) and
returns a worker; `worker(item)` processes one batch, writes that batch's own files under atomic,
idempotent names, and returns a small result. The driver consumes the results as they arrive and
commits them (capture writes the batch's done marker, encode stages the codes into the catalog), so
an interrupted run of either executor resumes the same way.

    with open_executor(ExecutorConfig(executor="ray")) as executor:
        for result in executor.map(job, items): commit(result)

`RayExecutor` starts Ray on first use (joining `ray_address`, or a local instance it shuts down when
closed) and keeps its actors for the executor's life: each actor starts a job once and then runs
many items, so a model is loaded once per actor, not once per batch. Items are queued `in_flight` per
actor: 2 for short batches (an actor never waits for the driver), 1 for long items such as a whole SAE's
training (an idle actor takes the next one, none waits behind a busy one). An actor that dies (out of
memory, killed) stops the run with one line naming its item.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from atlas.errors import BadInputError, UnavailableError
from atlas.pipeline.config import ExecutorConfig

if TYPE_CHECKING:
    import ray

EXECUTORS = ("local", "ray")
IN_FLIGHT = 2  # items queued per actor, so an actor never waits for the driver between batches


class Job(Protocol):
    def start(self, device: str | None) -> Callable[[Any], Any]:
        """Load what the batches need on `device` (None: the job's own choice) and return the batch worker."""


class Executor:
    """Runs a job's items and yields their results (in completion order; items carry their own ids)."""

    name = "local"

    def map(self, job: Job, items: Iterable, in_flight: int = IN_FLIGHT) -> Iterator:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (and a Ray instance this executor started)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """The items one after another in this process."""

    def map(self, job: Job, items: Iterable, in_flight: int = IN_FLIGHT) -> Iterator:
        items = list(items)
        if not items:
            return
        worker = job.start(None)
        for item in items:
            yield worker(item)


class _Host:
    """One Ray actor: holds the worker of the job it was last started with."""

    def __init__(self, device: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.device = device
        self.worker: Callable[[Any], Any] | None = None
        self.failed: Exception | None = None

    def start(self, job: Job) -> None:
        self.worker, self.failed = None, None  # free the previous job's model before loading the next
        try:
            self.worker = job.start(self.device)
        except Exception as err:  # reported by every run() of this job, where the driver waits for results
            self.failed = err

    def run(self, item: Any) -> Any:
        if self.worker is None:
            raise self.failed
        return self.worker(item)


class RayExecutor(Executor):
    """Items spread over Ray actors: GPU actors when the cluster has GPUs (or num_gpus_per_actor > 0), else CPU."""

    name = "ray"

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config
        self._actors: list = []
        self._started_ray = False

    def _start(self) -> list:
        if self._actors:
            return self._actors
        try:
            import ray
        except ImportError:
            raise UnavailableError("--executor ray needs Ray: pip install 'concept-atlas[ray]' (or 'ray>=2.9')") \
                from None
        if not ray.is_initialized():
            if self.config.ray_address:
                ray.init(address=self.config.ray_address, log_to_driver=False)
            else:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
                self._started_ray = True
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        per_gpu = self.config.num_gpus_per_actor if self.config.num_gpus_per_actor >= 0 else float(gpus > 0)
        per_cpu = self.config.num_cpus_per_actor
        room = min(math.floor(cpus / per_cpu), math.floor(gpus / per_gpu) if per_gpu else math.inf)
        count = self.config.actors or room
        if room == 0 or count > room:
            raise BadInputError(f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs: room for {room} actors of "
                                f"{per_cpu:g} CPUs and {per_gpu:g} GPUs, {count} asked; lower --actors, "
                                "--num-cpus-per-actor or --num-gpus-per-actor")
        host = ray.remote(_Host).options(num_cpus=per_cpu, num_gpus=per_gpu)
        device = "cuda" if per_gpu else "cpu"
        self._actors = [host.remote(device, max(1, int(per_cpu))) for _ in range(int(count))]
        return self._actors

    def map(self, job: Job, items: Iterable, in_flight: int = IN_FLIGHT) -> Iterator:
        items = list(items)
        if not items:  # nothing to do: do not start Ray
            return
        actors = self._start()
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        job_ref = ray.put(job)
        for actor in actors:
            actor.start.remote(job_ref)  # an actor runs its calls in order: start before its first item
        running: dict = {}
        queue = iter(items)

        def submit(actor: ray.actor.ActorHandle) -> None:
            for item in queue:
                running[actor.run.remote(item)] = actor, item
                return

        for actor in actors * in_flight:
            submit(actor)
        while running:
            (ready,), _ = ray.wait(list(running), num_returns=1)
            actor, item = running.pop(ready)
            submit(actor)
            try:
                yield ray.get(ready)
            except RayTaskError as err:  # the worker's own exception, with the remote traceback chained
                raise err.cause from err
            except RayActorError as err:
                why = next(iter(str(err).strip().splitlines()), "")
                raise UnavailableError(f"a Ray actor died while running {item} ({why}); run the command again "
                                       "to resume") from err

    def close(self) -> None:
        if not self._actors and not self._started_ray:
            return
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def open_executor(config: ExecutorConfig | None = None) -> Executor:
    """The executor `config` asks for (use it as a context manager); checks the options first."""
    config = config or ExecutorConfig()
    if config.executor not in EXECUTORS:
        raise BadInputError(f"unknown executor {config.executor!r}; use local or ray")
    if config.executor == "local":
        if config.ray_address:
            raise BadInputError("--ray-address needs --executor ray")
        return LocalExecutor()
    if config.actors < 0 or config.num_cpus_per_actor <= 0:
        raise BadInputError("--actors must be >= 0 and --num-cpus-per-actor > 0")
    return RayExecutor(config)
