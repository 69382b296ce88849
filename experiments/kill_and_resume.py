"""Does a run that is killed again and again end exactly where an uninterrupted one ends?

Runs the command line once straight through (the reference), then again in a second workdir, where it is killed at
random moments (SIGTERM and SIGKILL in turn) and started again each time until it finishes. Each kill comes a random
delay (seeded) after the run has saved new progress, so it lands in training, in a checkpoint write or in evaluation.
Optionally the newest checkpoint is damaged (its files cut to half their length, as a write cut short leaves them) and
a half-written orbax tmp directory is left beside it before a restart. Finally both workdirs are compared: the final
training state of every fold (parameters, batch statistics, optimiser state, step), the held-out predictions, the
training history and the result tables must be equal.

  python -m experiments.kill_and_resume --workdir=runs/kill_and_resume [--interruptions=6 --seed=0 --max_delay=3
      --corrupt_after=1] [-- aujax.main flags, e.g. --epochs=2 --config.train.checkpoint_every_steps=2]

Checks on the way: a run stopped by SIGTERM exits with the TrainingStopped message and its checkpoint is at the step
the message names; the run after a damaged checkpoint warns and falls back to the older one. Prints one line per
interruption and the verdict, writes <workdir>/kill_and_resume.json; exit status 1 where anything differs.
"""

import argparse
import dataclasses
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STOPPED = re.compile(r"stopped by request in fold (\S+) at step (\d+)")
_FALLBACK = "cannot be restored"
_VOLATILE_KEYS = ("images_per_second", "seconds")  # measured, not computed: differ between any two runs
_LAUNCHER_PREFIXES = ("SLURM_", "OMPI_", "TPU_WORKER", "JAX_COORDINATOR")


@dataclasses.dataclass
class Interruption:
    """What happened to one run: the signal sent (None: left to finish), when, and how the run ended."""

    run: int
    signal: str | None
    delay_s: float | None          # after the run's first new progress
    returncode: int
    outcome: str                   # 'stopped' (TrainingStopped), 'killed', 'finished', 'failed'
    stopped_at: int | None = None  # the step the TrainingStopped message names
    checkpoint_at_stop: bool | None = None
    fell_back: bool = False        # the run warned that a checkpoint could not be restored
    tmp_dirs: int = 0              # orbax tmp directories (interrupted writes) left in the workdir afterwards
    log: str = ""


def fold_dirs(workdir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(workdir, "checkpoints", "fold_*")))


def saved_steps(checkpoint_dir: str) -> list[int]:
    """Finished checkpoint steps in an orbax manager directory (tmp directories of interrupted writes excluded)."""
    if not os.path.isdir(checkpoint_dir):
        return []
    return sorted(int(name) for name in os.listdir(checkpoint_dir) if name.isdigit())


def progress(workdir: str) -> frozenset:
    """Changes whenever the run saves a checkpoint or finishes a fold."""
    marks = set()
    for d in fold_dirs(workdir):
        marks.update((d, step) for step in saved_steps(os.path.join(d, "latest")))
        if os.path.isfile(os.path.join(d, "result.json")):
            marks.add((d, "finished"))
    return frozenset(marks)


def tmp_dirs(workdir: str) -> list[str]:
    return glob.glob(os.path.join(workdir, "checkpoints", "fold_*", "*", "*.orbax-checkpoint-tmp*"))


def unfinished_fold(workdir: str) -> str | None:
    """The fold directory being trained (checkpoints but no result yet), None if there is none."""
    for d in fold_dirs(workdir):
        if not os.path.isfile(os.path.join(d, "result.json")) and saved_steps(os.path.join(d, "latest")):
            return d
    return None


def damage_newest_checkpoint(workdir: str) -> str | None:
    """Cut every file of the unfinished fold's newest `latest` checkpoint to half its length and leave a half-written
    orbax tmp directory beside it; returns the damaged directory (None when no fold in training has an older
    checkpoint to fall back to)."""
    fold = unfinished_fold(workdir)
    if fold is None or len(saved_steps(os.path.join(fold, "latest"))) < 2:
        return None
    latest = os.path.join(fold, "latest")
    newest = saved_steps(latest)[-1]
    damaged = os.path.join(latest, str(newest))
    for root, _, names in os.walk(damaged):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    tmp = os.path.join(latest, f"{newest + 1}.orbax-checkpoint-tmp-{int(time.time())}")
    os.makedirs(os.path.join(tmp, "default"), exist_ok=True)
    with open(os.path.join(tmp, "default", "_METADATA"), "w") as f:
        f.write('{"tree_metadata": {"par')
    return damaged


def command(workdir: str, cli_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "aujax.main", f"--workdir={workdir}", *cli_args]


def child_env(compilation_cache: str) -> dict:
    """The children's environment: plain single processes (a launcher's variables, such as SLURM's, left out), the
    repository importable, compiled programs cached on disk so that restarts do not compile again (the cache
    changes how fast, not what is computed)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}
    return {**inherited, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
            "JAX_COMPILATION_CACHE_DIR": compilation_cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def run_once(workdir: str, cli_args: list[str], env: dict, log_path: str, signum: int | None, delay_s: float | None,
             timeout_s: float, run: int) -> Interruption:
    """Start the command line; `delay_s` after it first saves new progress, send `signum` (None: let it finish)."""
    before = progress(workdir)
    deadline = time.monotonic() + timeout_s
    fire_at = None
    with open(log_path, "w") as log:
        process = subprocess.Popen(command(workdir, cli_args), cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            while process.poll() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run {run} did not end within {timeout_s:.0f} s; its log: {log_path}")
                if signum is not None and fire_at is None and progress(workdir) != before:
                    fire_at = time.monotonic() + delay_s
                if fire_at is not None and time.monotonic() >= fire_at:
                    process.send_signal(signum)
                    fire_at = float("inf")
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    with open(log_path) as f:
        text = f.read()
    return _outcome(workdir, run, signum, delay_s, process.returncode, text, log_path)


def _outcome(workdir: str, run: int, signum: int | None, delay_s: float | None, returncode: int, text: str,
             log_path: str) -> Interruption:
    result = Interruption(run=run, signal=signal.Signals(signum).name if signum else None, delay_s=delay_s,
                          returncode=returncode, outcome="failed", fell_back=_FALLBACK in text,
                          tmp_dirs=len(tmp_dirs(workdir)), log=log_path)
    stopped = _STOPPED.search(text)
    if returncode == 0:
        result.outcome = "finished"
    elif stopped and returncode == 1 and signum == signal.SIGTERM:
        result.outcome, result.stopped_at = "stopped", int(stopped.group(2))
        fold = unfinished_fold(workdir)
        result.checkpoint_at_stop = fold is not None and saved_steps(os.path.join(fold, "latest"))[-1] == \
            result.stopped_at
    elif signum is not None and returncode == -signum:
        result.outcome = "killed"  # SIGKILL, or SIGTERM before training installed its handler
    return result



def _without_volatile(value):
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def _read_json(path: str):
    with open(path) as f:
        return _without_volatile(json.load(f))


def _compare_states(a: dict, b: dict, where: str, rtol: float, atol: float) -> list[str]:
    import jax

    paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
    leaves_b = jax.tree_util.tree_leaves(b)
    if len(paths_a) != len(leaves_b):
        return [f"{where}: {len(paths_a)} arrays against {len(leaves_b)}"]
    differences = []
    for (path, x), y in zip(paths_a, leaves_b):
        if x.shape != y.shape or not np.allclose(x, y, rtol=rtol, atol=atol):
            gap = np.abs(np.asarray(x, np.float64) - y).max() if x.shape == y.shape else "shape"
            differences.append(f"{where}{jax.tree_util.keystr(path)}: differs (max |a - b| = {gap})")
    return differences


def compare_workdirs(reference: str, candidate: str, rtol: float = 0.0, atol: float = 0.0) -> list[str]:
    """What differs between two finished workdirs (empty: equal): every fold's final state, held-out predictions and
    history, and the result tables.

    Exact by default: both runs execute the same compiled programs on the same device layout from bit-exact
    checkpoints, so any difference is a resume defect. States and predictions may be given a tolerance for
    platforms whose kernels are not deterministic (GPUs without --xla_gpu_deterministic_ops=true); histories and
    tables are always compared exactly.
    """
    differences = []
    folds = [os.path.basename(d) for d in fold_dirs(reference)]
    if folds != [os.path.basename(d) for d in fold_dirs(candidate)]:
        return [f"folds differ: {folds} against {[os.path.basename(d) for d in fold_dirs(candidate)]}"]
    for fold in folds:
        a, b = (os.path.join(w, "checkpoints", fold) for w in (reference, candidate))
        steps = [saved_steps(os.path.join(d, "latest"))[-1:] for d in (a, b)]
        if steps[0] != steps[1] or not steps[0]:
            differences.append(f"{fold}: final checkpoint step {steps[0]} against {steps[1]}")
            continue
        from aujax.checkpoints import restore_saved  # jax only where checkpoints are compared

        try:
            states = [restore_saved(os.path.join(d, "latest"), steps[0][0]) for d in (a, b)]
        except Exception as e:  # orbax raises many kinds for a damaged checkpoint
            differences.append(f"{fold}: final checkpoint {steps[0][0]} cannot be restored ({type(e).__name__})")
            continue
        differences += _compare_states(*states, f"{fold} state", rtol, atol)
        with np.load(os.path.join(a, "predictions.npz")) as pa, np.load(os.path.join(b, "predictions.npz")) as pb:
            if not (np.array_equal(pa["test_index"], pb["test_index"])
                    and np.allclose(pa["probabilities"], pb["probabilities"], rtol=rtol, atol=atol)):
                differences.append(f"{fold}: held-out predictions differ")
        if _read_json(os.path.join(a, "result.json")) != _read_json(os.path.join(b, "result.json")):
            differences.append(f"{fold}: result.json (subject, training history) differs")
    tables = sorted(os.path.basename(p) for p in glob.glob(os.path.join(reference, "results", "*.json")))
    if not tables:
        differences.append(f"{reference}/results holds no tables")
    for name in tables:
        other = os.path.join(candidate, "results", name)
        if not os.path.isfile(other):
            differences.append(f"results/{name} missing")
        elif _read_json(os.path.join(reference, "results", name)) != _read_json(other):
            differences.append(f"results/{name} differs")
    return differences


def run_experiment(workdir: str, cli_args: list[str], interruptions: int, seed: int, max_delay_s: float,
                   corrupt_after: int, timeout_s: float = 900.0, compilation_cache: str | None = None) -> dict:
    """The reference run, the interrupted runs and the comparison; returns the report (also written as JSON)."""
    rng = np.random.default_rng(seed)
    reference, interrupted = os.path.join(workdir, "reference"), os.path.join(workdir, "interrupted")
    logs = os.path.join(workdir, "logs")
    for path in (reference, interrupted, logs):
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(logs)
    env = child_env(compilation_cache or os.path.join(workdir, "jax_cache"))

    started = time.perf_counter()
    straight = run_once(reference, cli_args, env, os.path.join(logs, "reference.log"), None, None, timeout_s, 0)
    if straight.outcome != "finished":
        raise RuntimeError(f"the reference run failed (exit {straight.returncode}); its log: {straight.log}")
    reference_s = time.perf_counter() - started

    runs, damaged, first_run_after_damage, problems = [], None, None, []
    for k in range(interruptions):
        signum = signal.SIGTERM if k % 2 == 0 else signal.SIGKILL
        delay = float(rng.uniform(0.0, max_delay_s))
        runs.append(run_once(interrupted, cli_args, env, os.path.join(logs, f"run_{k + 1}.log"), signum, delay,
                             timeout_s, k + 1))
        _print_run(runs[-1])
        if runs[-1].outcome == "finished":
            break
        if corrupt_after and k + 1 >= corrupt_after and damaged is None:
            damaged, first_run_after_damage = damage_newest_checkpoint(interrupted), len(runs)  # index into runs
            if damaged:
                print(f"damaged {damaged} and left a half-written tmp directory beside it", flush=True)
    if not runs or runs[-1].outcome != "finished":
        runs.append(run_once(interrupted, cli_args, env, os.path.join(logs, "final.log"), None, None, timeout_s,
                             len(runs) + 1))
        _print_run(runs[-1])

    problems += [f"run {r.run} failed (exit {r.returncode}); its log: {r.log}" for r in runs if r.outcome == "failed"]
    problems += [f"run {r.run}: stopped at step {r.stopped_at} but the newest checkpoint is elsewhere"
                 for r in runs if r.outcome == "stopped" and not r.checkpoint_at_stop]
    if damaged is not None:
        if len(runs) <= first_run_after_damage or not runs[first_run_after_damage].fell_back:
            problems.append(f"the run after damaging {damaged} did not warn that it fell back to an older checkpoint")
    if runs[-1].outcome == "finished":
        problems += compare_workdirs(reference, interrupted)
    report = {"command": command("<workdir>", cli_args), "seed": seed, "reference_seconds": reference_s,
              "damaged_checkpoint": damaged, "runs": [dataclasses.asdict(r) for r in runs],
              "differences": problems, "equal": not problems}
    with open(os.path.join(workdir, "kill_and_resume.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def _print_run(r: Interruption) -> None:
    sent = f"{r.signal} {r.delay_s:.2f} s after new progress" if r.signal else "left to finish"
    detail = f", stopped at step {r.stopped_at} (checkpoint there: {r.checkpoint_at_stop})" if r.stopped_at else ""
    fallback = ", fell back from a damaged checkpoint" if r.fell_back else ""
    print(f"run {r.run}: {sent}: {r.outcome} (exit {r.returncode}){detail}{fallback}, {r.tmp_dirs} orbax tmp dirs",
          flush=True)


def main() -> None:
    argv = sys.argv[1:]
    cli_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/kill_and_resume")
    parser.add_argument("--interruptions", type=int, default=6, help="kills before the run is left to finish")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--max_delay", type=float, default=3.0,
                        help="seconds: each kill comes uniformly 0..max_delay after the run's first new checkpoint")
    parser.add_argument("--corrupt_after", type=int, default=1,
                        help="damage the newest checkpoint after this many interruptions, or the first one after that "
                        "which leaves an older checkpoint to fall back to (0: never)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one run may take")
    args = parser.parse_args(own)
    from absl import logging as absl_logging  # orbax's notes while the comparison restores checkpoints

    absl_logging.set_verbosity(absl_logging.ERROR)
    report = run_experiment(args.workdir, cli_args, args.interruptions, args.seed, args.max_delay,
                            args.corrupt_after, args.timeout)
    print("\n".join(["equal to the uninterrupted run"] if report["equal"] else
                    ["DIFFERENT from the uninterrupted run:", *report["differences"]]))
    sys.exit(0 if report["equal"] else 1)


if __name__ == "__main__":
    main()
