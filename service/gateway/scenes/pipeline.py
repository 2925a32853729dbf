"""The scene pipeline: tiles read and prepared ahead in a thread (bounded), run in batches by an ``Executor``,
blended and written in raster order; state checkpointed per tile row so that ``resume`` redoes no finished
tile row, and the output renamed into place only when complete.

Memory is bounded by the settings, not the area: ``max_in_flight_tiles`` prepared tiles, one batch, and the
blender's strip (one tile row of output rows)."""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scene.errors import SceneError
from scene.grid import Tile
from scene.layers import SceneReader
from service.gateway.errors import ApiError
from service.gateway.prepare import prepare_tile
from service.gateway.scenes.executor import Executor, TileRequest
from service.gateway.scenes.job import SceneLimits
from service.gateway.scenes.outputs import Output, RasterOutput, TableOutput
from service.gateway.scenes.plan import ScenePlan
from service.gateway.scenes.tiles import tile_input

Progress = Callable[[int, int], None]  # (tiles finished, including skipped and resumed; tiles in all)


@dataclass(frozen=True)
class SceneResult:
    out: Path
    tiles_total: int
    tiles_run: int  # through the model in this run
    tiles_skipped: int  # no valid input: nodata in the output
    tiles_resumed: int  # finished by an earlier run (``resume``)
    seconds: float


def state_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _load_state(plan: ScenePlan, where: Path, resume: bool) -> dict[str, Any]:
    fresh = {"fingerprint": plan.fingerprint(), "rows_done": 0, "run": 0, "skipped": 0}
    state_file = where / "state.json"
    if resume and state_file.is_file():
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") != fresh["fingerprint"]:
            raise SceneError("resume", f"{where} holds a run of other inputs or options; run without --resume to "
                                       f"start over")
        return state
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    return fresh


def _save_state(where: Path, state: dict[str, Any]) -> None:
    tmp = where / "state.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(where / "state.json")


# Events from the reader thread, in raster order: ("start", row) ("tile", Tile, TileRequest, weight, dates)
# ("skip", Tile) ("end", row) ("done",) ("error", exception).
Event = tuple[Any, ...]


def _produce(plan: ScenePlan, first_row: int, events: queue.Queue[Event], stop: threading.Event) -> None:
    def put(event: Event) -> bool:
        while not stop.is_set():
            try:
                events.put(event, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        grid = plan.grid
        with SceneReader(plan.job.sources, grid) as reader:
            for row in range(first_row, grid.nrows):
                if not put(("start", row)):
                    return
                for col in range(grid.ncols):
                    tile = grid.tile(row, col)
                    got = tile_input(plan, reader.read(tile))
                    if got is None:
                        event: Event = ("skip", tile)
                    else:
                        try:
                            prepared = prepare_tile(got[0], plan.query, plan.settings, f"tile {tile.id}")
                        except ApiError as exc:
                            raise SceneError(f"tile {tile.id}: {exc.field}", exc.message) from None
                        request = TileRequest(tile.id, prepared.config.key(), prepared.tensors)
                        event = ("tile", tile, request, got[1], got[2])
                    if not put(event):
                        return
                if not put(("end", row)):
                    return
        put(("done",))
    except BaseException as exc:  # handed to the consumer, which re-raises it in the caller's thread
        put(("error", exc))


def _events(events: queue.Queue[Event]) -> Iterator[Event]:
    while True:
        event = events.get()
        if event[0] == "error":
            raise event[1]
        if event[0] == "done":
            return
        yield event


def run_scene(plan: ScenePlan, executor: Executor, *, batch_size: int = 8, resume: bool = False,
              progress: Progress | None = None, limits: SceneLimits | None = None) -> SceneResult:
    """Run the planned job through ``executor``; returns when the output is in place at ``plan.job.out``."""
    if batch_size < 1:
        raise SceneError("batch_size", f"at least 1, got {batch_size}")
    limits = limits or SceneLimits()
    t0 = time.monotonic()
    where = state_dir(plan.job.out)
    state = _load_state(plan, where, resume)
    grid = plan.grid
    resumed = state["rows_done"] * grid.ncols
    out: Output = (TableOutput if plan.out_px is None else RasterOutput)(plan, where, resume and resumed > 0)
    events: queue.Queue[Event] = queue.Queue(maxsize=max(limits.max_in_flight_tiles, 2))
    stop = threading.Event()
    reader = threading.Thread(target=_produce, args=(plan, state["rows_done"], events, stop), daemon=True,
                              name="scene-reader")
    reader.start()
    written: set[str] = set()
    pending: list[Event] = []  # events in order since the last submit: replayed once their batch has results
    n_requests = 0
    counts = {"run": state["run"], "skipped": state["skipped"]}

    def report() -> None:
        if progress is not None:
            progress(resumed + len(written) + counts["skipped"] - state["skipped"], grid.n_tiles)

    def drain() -> None:
        nonlocal n_requests
        batch = [e[2] for e in pending if e[0] == "tile"]
        results = executor.submit(batch) if batch else {}
        for event in pending:
            kind = event[0]
            if kind == "start":
                out.start_row(event[1])
            elif kind == "tile":
                tile: Tile = event[1]
                if tile.id in written:  # a redelivered tile: its result is already in the output
                    continue
                if tile.id not in results:
                    raise RuntimeError(f"the executor returned no result for tile {tile.id}")
                out.add(tile, results[tile.id], event[3], event[4])
                written.add(tile.id)
                counts["run"] += 1
                report()
            elif kind == "skip":
                counts["skipped"] += 1
                report()
            elif kind == "end":
                out.end_row(event[1])
                state.update(rows_done=event[1] + 1, **counts)
                _save_state(where, state)
        pending.clear()
        n_requests = 0

    try:
        report()
        for event in _events(events):
            if event[0] == "tile":
                # a full batch runs when the next tile arrives, so that the row ends and skips after its last
                # tile are applied with it (and a stopped run has checkpointed every row it finished)
                if n_requests >= batch_size:
                    drain()
                n_requests += 1
            pending.append(event)
        drain()
        path = out.finish()
    except BaseException:
        stop.set()
        out.close()
        raise
    finally:
        stop.set()
        reader.join(timeout=10)
    shutil.rmtree(where, ignore_errors=True)
    return SceneResult(path, grid.n_tiles, len(written), counts["skipped"], resumed, time.monotonic() - t0)
