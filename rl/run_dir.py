"""A run directory's checks, made before anything is built or written: nothing in a run is lost by mistake.

    run_dir, checkpoint = plan_run(cfg.run_dir, cfg.resume, cfg.overwrite)   # ValueError: the line that says what to do

- A directory that holds a run (a config, metrics or checkpoints) is refused unless the run
  resumes it (`resume=DIR`, or `resume=DIR@STEP` for an earlier checkpoint) or starts over
  (`overwrite=true`, which removes the old run whole).
- Resuming from an earlier checkpoint leaves one history: the abandoned branch's later
  checkpoints and episode files move to `abandoned/from_step_N/` (`abandon_after`), and
  metrics.jsonl is cut back by the trainer.
Standard library only: these checks run in about a second, before torch is imported.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "episodes",
    "checkpoints",
)  # any of these makes a directory a run's (a model alone is not)
_STEP = re.compile(r"step_(\d+)")


def holds_run(path: Path) -> bool:
    """Whether `path` holds a run: its config, metrics, episodes or checkpoints
    (what `rl view` shows and `rl train` protects)."""
    return any((path / name).exists() for name in RUN_FILES)


def checkpoints(run_dir: Path) -> dict[int, Path]:
    """The run's complete checkpoints by step (a `.tmp` one was cut off while being written)."""
    found = {}
    for path in (run_dir / "checkpoints").glob("step_*"):
        match = _STEP.fullmatch(path.name)
        if match and path.is_dir():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def parse_resume(resume: str) -> tuple[Path, int | None]:
    """`DIR` or `DIR@STEP`."""
    path, _, step = resume.rpartition("@") if "@" in resume else (resume, "", "")
    if step and not step.isdigit():
        raise ValueError(f"resume={resume!r}: the step after '@' must be a number, e.g. resume={path}@100")
    return Path(path), int(step) if step else None


def plan_run(run_dir: str, resume: str, overwrite: bool) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (None for a new run);
    ValueError with the fix when neither is safe."""
    if resume:
        if overwrite:
            raise ValueError(
                "resume= and overwrite=true contradict each other: continue the run or start it over, not both"
            )
        path, step = parse_resume(resume)
        if not path.is_dir():
            raise ValueError(f"resume={resume!r}: no such directory")
        found = checkpoints(path)
        if not found:
            raise ValueError(
                f"resume={resume!r}: no checkpoint in {path / 'checkpoints'}"
                " (a run saves every save_every steps and at its end)"
            )
        if step is None:
            step = max(found)
        if step not in found:
            raise ValueError(f"resume={resume!r}: no checkpoint of step {step}; there are {_listing(found)}")
        return path, found[step]
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"run_dir={run_dir!r} is a file")
    if holds_run(path) and not overwrite:
        hint = f"resume={run_dir} to continue it" if checkpoints(path) else "it has no checkpoint to continue from"
        raise ValueError(
            f"run_dir={run_dir!r} holds a run already: {hint}, "
            "overwrite=true to start over (removes it), or another run_dir="
        )
    return path, None


def start_over(run_dir: Path) -> None:
    """`overwrite=true`: the old run goes whole, so nothing of it mixes with the new one."""
    if holds_run(run_dir):
        shutil.rmtree(run_dir)
        log.info(f"overwrite=true: removed the run that was in {run_dir}")


def abandon_after(run_dir: Path, step: int) -> None:
    """Move the checkpoints and episode files of steps after `step` to abandoned/from_step_N/ (said in the log)."""
    later = [p for s, p in checkpoints(run_dir).items() if s > step]
    later += [
        p for p in sorted((run_dir / "episodes").glob("step_*.jsonl")) if int(_STEP.match(p.stem).group(1)) > step
    ]
    if not later:
        return
    aside = run_dir / "abandoned" / f"from_step_{step:06d}"
    for path in later:
        target = aside / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        path.rename(target)
    log.info(f"resumed at step {step}: {len(later)} later checkpoints and episode files moved to {aside}")


def load_failed(file: Path, error: Exception) -> ValueError:
    """The error for a checkpoint's file (RUN_DIR/checkpoints/step_N/FILE) that does not load: which one,
    and the run's other checkpoints."""
    others = {s: p for s, p in checkpoints(file.parent.parent.parent).items() if p != file.parent}
    choice = f"; resume=DIR@STEP picks another: {_listing(others)}" if others else ""
    return ValueError(
        f"checkpoint {file} does not load ({type(error).__name__}: {' '.join(str(error).split())[:200]}){choice}"
    )


def _listing(found: dict[int, Path]) -> str:
    return ", ".join(f"step {s}" for s in found) or "none"
