"""One search worker: open the shared study, probe once, then run trials, each measured for real.

Workers may be threads of one call, local processes (`workers=N`) or separate machines running the same
`condense search --storage URL --study NAME`: everything they share (baseline, probes, trials) lives in the study.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import socket
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from torch import nn

from condense import progress
from condense.core import artifact
from condense.core.transforms import apply_
from condense.errors import CondenseError
from condense.measurement.api import MeasureConfig, Measurement, measure
from condense.searching.budget import budget_verdict
from condense.searching.knobs import Knob, Space, select_knobs
from condense.searching.sensitivity import probe, space_from_dict, space_to_dict
from condense.searching.storage import open_storage
from condense.version import __version__

INTERRUPTED = "interrupted: its worker was stopped or died before the trial finished"


class _Stop:
    """Stop requests (SIGTERM, Ctrl-C) raise KeyboardInterrupt only while the worker runs models, never inside a
    database write: an interrupted write can leave a SQLite lock held and the next write waiting on it."""

    safe = True  # outside run_worker nothing writes to the study
    pending = False


def request_stop(signum: int, frame: Any) -> None:
    if _Stop.safe:
        raise KeyboardInterrupt
    _Stop.pending = True  # raised at the next safe point (the start of model work, or after the trial is stored)


@contextmanager
def interruptible() -> Iterator[None]:
    """Model work (building, measuring, probing): a stop request may interrupt it right away."""
    if _Stop.pending:
        raise KeyboardInterrupt
    old, _Stop.safe = _Stop.safe, True
    try:
        yield
    finally:
        _Stop.safe = old


def install_stop_handler() -> Callable[[], None]:
    """SIGTERM and SIGINT stop a search cleanly (the running trial is marked failed); returns a function that
    restores the previous handlers. Main thread only."""
    import signal

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in old:
        signal.signal(sig, request_stop)
    return lambda: [signal.signal(sig, h) for sig, h in old.items()] and None


def trial_measure_config(cfg: Any) -> MeasureConfig:
    """The cheap measurement every trial (and the baseline it is compared with) gets during the search."""
    return MeasureConfig(batch_sizes=(cfg.batch_size,), warmup=1, repeats=cfg.timing_repeats,
                         min_time_s=cfg.timing_min_s, threads=cfg.threads, memory=False, macs=False)


def summary(m: Measurement, batch_size: int) -> dict[str, Any]:
    return {"latency_s": m.p50(batch_size), "size_bytes": m.size_bytes, "metric": m.primary,
            "quality": dict(m.quality), "params_total": m.params_total}


class StageCache:
    """Models after each prefix of steps, keyed by the steps' configs: trials that share an expensive prefix
    (e.g. the same pruning + recovery, or the same distilled student) build it once. Keeps the `size` most
    recently used in memory (per worker; 0: none). With `directory`, a prefix whose build took at least `min_build_s` is
    also saved there as an artifact, so other workers on this machine and a resumed or repeated search load it
    instead of training it again. The disk key covers the task (name and options), the steps' configs and the
    condense version; delete the folder after changing training code within one version."""

    def __init__(self, size: int = 3, directory: str | os.PathLike | None = None, min_build_s: float = 60.0):
        self.size = size
        self.directory = Path(directory) if directory is not None else None
        self.min_build_s = min_build_s
        self._items: OrderedDict[str, nn.Module] = OrderedDict()
        self.hits = 0
        self.disk_hits = 0

    def _disk_path(self, key: str, task: Any) -> Path | None:
        if self.directory is None:
            return None
        spec = json.dumps([task.spec or {"name": task.name}, __version__, key], sort_keys=True, default=str)
        return self.directory / hashlib.sha256(spec.encode()).hexdigest()[:20]

    def _from_disk(self, key: str, task: Any) -> nn.Module | None:
        path = self._disk_path(key, task)
        if path is None or not (path / "condense.json").exists():
            return None
        try:
            model = artifact.load(path, task=task)
        except CondenseError as e:  # unreadable or from other code: removed, then rebuilt and saved again
            progress.note(f"stage cache: rebuilding {path.name} ({str(e)[:120]})")
            shutil.rmtree(path, ignore_errors=True)
            return None
        self.disk_hits += 1
        return model

    def _to_disk(self, key: str, task: Any, model: nn.Module) -> None:
        path = self._disk_path(key, task)
        if path is None or (path / "condense.json").exists():
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.incoming")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            artifact.save(model, tmp, metadata={"stage_key": json.loads(key)})
            os.replace(tmp, path)  # atomic: another worker's copy of the same stage may already be there
        except Exception as e:  # noqa: BLE001  (a model that cannot be saved is simply not persisted)
            if not (path / "condense.json").exists():
                progress.note(f"stage cache: not saved ({type(e).__name__}: {str(e)[:120]})")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def build(self, base: nn.Module, steps: list[Any], task: Any) -> nn.Module:
        keys = [json.dumps([s.to_dict() for s in steps[:i + 1]], sort_keys=True) for i in range(len(steps))]
        start, model = 0, None
        for i in range(len(steps) - 1, -1, -1):
            if keys[i] in self._items:
                start, model = i + 1, copy.deepcopy(self._items[keys[i]])
                self._items.move_to_end(keys[i])
                self.hits += 1
                break
            model = self._from_disk(keys[i], task)
            if model is not None:
                start = i + 1
                break
        model = copy.deepcopy(base) if model is None else model
        for i in range(start, len(steps)):
            t0 = time.perf_counter()
            model = apply_(model, steps[i], task=task)
            if time.perf_counter() - t0 >= self.min_build_s:
                self._to_disk(keys[i], task, model)
            if i < len(steps) - 1 and self.size > 0:  # the last step's model is measured, not reused
                try:
                    self._items[keys[i]] = copy.deepcopy(model)
                except Exception:  # noqa: BLE001  (a model that cannot be copied is simply not cached)
                    continue
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return model


def open_study(cfg: Any, task: Any, url: str | None, study_name: str, storage: Any = None) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported by the objective, in one line
    storage = storage if storage is not None else open_storage(url, cfg.heartbeat_s)
    direction = "maximize" if task.higher_is_better else "minimize"
    return optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True,
                               directions=["minimize", "minimize", direction])


def prepare(study: Any, cfg: Any, task: Any, base_model: nn.Module) -> tuple[list[Knob], Space]:
    """Baseline measurement, knob choice and sensitivity probes, computed once per study (then read back)."""
    attrs = study.user_attrs
    with interruptible():  # each knob checks that it applies to this model (may build a copy)
        knobs, skipped = select_knobs(cfg.knobs, model=base_model, task=task, cfg=cfg)
    if "baseline" not in attrs:
        progress.note("measuring the baseline")
        with interruptible():
            m = measure(base_model, task, trial_measure_config(cfg), label="baseline")
        study.set_user_attr("baseline", summary(m, cfg.batch_size))
        study.set_user_attr("config", cfg.to_dict())
        study.set_user_attr("task", task.spec or {"name": task.name})
        study.set_user_attr("skipped_knobs", skipped)
    if "space" not in attrs:
        base = study.user_attrs["baseline"]["metric"]
        with interruptible():
            space, record = probe(base_model, task, cfg, knobs, base)
        study.set_user_attr("sensitivity", record)
        study.set_user_attr("space", space_to_dict(space))
        if not study.trials:
            first = {k.name + ".use": False for k in knobs if k.name not in ("prune", "quantize")}
            for scheme in space.quant_schemes:  # a sure first point: each quantization scheme alone
                study.enqueue_trial({**first, "prune.kind": "none", "quantize.scheme": scheme,
                                     "quantize.keep_sensitive": True}, skip_if_exists=True)
    space = space_from_dict(cfg, study.user_attrs["space"])
    return knobs, space


def counts(trial: Any) -> bool:
    """Whether a trial counts toward `SearchConfig.trials`: it ran to its end (completed, pruned, or failed on its
    own, which records an "error"). A trial cut short (Ctrl-C, kill, SIGKILL, a dead machine) failed without one:
    it tells nothing about its steps, so a resumed search runs another in its place."""
    name = trial.state.name
    return name in ("COMPLETE", "PRUNED") or (name == "FAIL" and trial.user_attrs.get("error") is not None)


def finished_count(study: Any) -> int:
    """Trials that count toward `SearchConfig.trials` (see `counts`)."""
    return sum(counts(t) for t in study.get_trials(deepcopy=False))


def _process_id() -> str:
    """This machine and PID namespace: a PID means the same process only where this matches."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}|{boot}|{ns}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def fail_stale_trials(study: Any) -> list[int]:
    """Mark failed the RUNNING trials whose worker is gone; returns their numbers.

    Gone: its heartbeat is older than the storage's grace period (optuna's heartbeat: any machine), or it ran on
    this machine in a process that no longer exists (a SIGKILLed search restarted at once, before the grace period
    ends). They fail without an "error", so they do not count toward the trial total (see `counts`).
    """
    import optuna

    running = lambda: {t.number for t in study.get_trials(deepcopy=False,  # noqa: E731
                                                          states=(optuna.trial.TrialState.RUNNING,))}
    before = running()
    if not before:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    here = _process_id()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        proc, pid = t.user_attrs.get("process"), t.user_attrs.get("pid")
        if proc == here and isinstance(pid, int) and pid != os.getpid() and not _alive(pid):
            try:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            except (ValueError, RuntimeError):  # finished meanwhile by another worker
                pass
    gone = sorted(before - running())
    if gone:
        progress.note(f"trial(s) {gone} were left running by a worker that is gone: marked failed ({INTERRUPTED}); "
                      "they do not count toward --trials")
    return gone


def run_worker(task: Any, cfg: Any, url: str | None, study_name: str, *, worker: int = 0,
               storage: Any = None) -> int:
    """Run trials until the study has `cfg.trials` finished trials; returns how many this worker ran."""
    _Stop.safe, _Stop.pending = False, False
    try:
        return _run(task, cfg, url, study_name, worker, storage)
    finally:
        _Stop.safe = True
        if _Stop.pending:
            _Stop.pending = False
            raise KeyboardInterrupt


def _run(task: Any, cfg: Any, url: str | None, study_name: str, worker: int, storage: Any) -> int:
    import optuna

    study = open_study(cfg, task, url, study_name, storage)
    with interruptible():
        base_model = task.build_model()
    knobs, space = prepare(study, cfg, task, base_model)
    baseline = study.user_attrs["baseline"]
    with warnings.catch_warnings():  # multivariate/group TPE (conditional knobs) are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + 1000 * worker, multivariate=True, group=True,
                                                   n_startup_trials=min(8, cfg.trials // 3 + 1))
    cache = StageCache(directory=cfg.stage_dir)
    mcfg = trial_measure_config(cfg)
    fail_stale_trials(study)
    remaining = cfg.trials - finished_count(study)
    if remaining <= 0:
        return 0
    ran = [0]
    here = _process_id()

    def objective(trial: Any) -> tuple[float, float, float]:
        ran[0] += 1
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}:{worker}")
        trial.set_user_attr("process", here)  # with "pid": a restarted search sees that this process is gone
        trial.set_user_attr("pid", os.getpid())
        try:
            steps = [c for c in (k.suggest(trial, space) for k in knobs) if c is not None]
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {str(e)[:300]}")
            raise
        trial.set_user_attr("steps", [s.to_dict() for s in steps])
        if not steps:  # the untouched model: the baseline, already measured; don't spend a measurement on it
            for k, v in baseline.items():
                trial.set_user_attr(k, v)
            trial.set_user_attr("within_budget", True)
            trial.set_user_attr("speedup", 1.0)
            return baseline["latency_s"], float(baseline["size_bytes"] or 0), baseline["metric"]
        try:
            with interruptible():
                model = cache.build(base_model, steps, task)
                m = measure(model, task, mcfg, label=f"trial {trial.number}")
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {str(e)[:300]}")
            progress.note(f"trial {trial.number} failed: {type(e).__name__}: {str(e)[:200]}")
            raise
        s = summary(m, cfg.batch_size)
        pm = task.primary_metric
        ok, why = budget_verdict(task, {pm: s["metric"], **s["quality"]},
                                 {pm: baseline["metric"], **baseline.get("quality", {})}, cfg.budget)
        for k, v in s.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("within_budget", bool(ok))
        trial.set_user_attr("rejected", why)
        trial.set_user_attr("speedup", baseline["latency_s"] / s["latency_s"])
        om = task.offsource_metric
        off = f", {om} {s['quality'][om]:.4f}" if om in s["quality"] else ""
        progress.note(f"trial {trial.number}: {', '.join(type(c).__name__ for c in steps) or 'baseline'} -> "
                      f"{s['latency_s'] * 1e3:.3g} ms, {task.primary_metric} {s['metric']:.4f}{off}"
                      f"{'' if ok else ' (over budget: ' + str(why) + ')'}")
        if not math.isfinite(s["metric"]):  # optuna fails the trial: it failed on its own, so it counts
            trial.set_user_attr("error", f"the {task.primary_metric} is not finite ({s['metric']})")
            return s["latency_s"], float(s["size_bytes"] or 0), float("nan")
        return s["latency_s"], float(s["size_bytes"] or 0), s["metric"]

    def stop(study: Any, trial: Any) -> None:  # the study's total is reached (other workers' trials count too)
        if finished_count(study) >= cfg.trials:
            study.stop()

    def stop_if_asked(study: Any, trial: Any) -> None:  # the trial is stored: a safe point to stop
        if _Stop.pending:
            _Stop.pending = False
            raise KeyboardInterrupt

    study.optimize(objective, n_trials=remaining, callbacks=[stop, stop_if_asked], catch=(Exception,),
                   gc_after_trial=True)
    return ran[0]
