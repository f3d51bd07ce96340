"""How long each command line takes to tell a user mistake (README: one line, exit 2,
within ~3 s, nothing made): the bad invocations of ``tests/cli_mistakes.py``, each a fresh
``python`` process in a folder of its own, without CUDA or cloud credentials.

Per mistake: the median over ``--repeats`` runs of the wall clock and of the process's CPU
time (user + system; on a shared machine other processes inflate the wall clock, not the
CPU time), and whether it kept the promise (exit 2, one line, nothing made).

    python -m benchmarks.cli_errors [--repeats 3] [--only train-]

Ends with ``RESULT cli_error_max_wall_s=<slowest median wall> goal<=3`` and the slowest
median CPU time.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from pathlib import Path

from benchmarks.timing import Stopwatch
from tests.cli_mistakes import MISTAKES, Mistake, run_mistake, user_env, write_inputs


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(mistake: Mistake) -> tuple[float, float, bool]:
    """(wall s, CPU s, kept the promise) of one run in a fresh folder."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        write_inputs(work)
        before = sorted(work.rglob("*"))
        cpu, clock = children_cpu(), Stopwatch("cpu")
        clock.start()
        result = run_mistake(mistake, work, user_env(Path(tmp)))
        wall, cpu = clock.elapsed(), children_cpu() - cpu
        lines = result.stderr.splitlines()
        kept = (result.returncode == 2 and len(lines) == 1
                and all(w in lines[0] for w in mistake.words)
                and sorted(work.rglob("*")) == before)
        return wall, cpu, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="mistakes whose name starts with this")
    args = parser.parse_args()
    walls, cpus = {}, {}
    for name, mistake in sorted(MISTAKES.items()):
        if not name.startswith(args.only):
            continue
        runs = [measure(mistake) for _ in range(args.repeats)]
        walls[name] = statistics.median(r[0] for r in runs)
        cpus[name] = statistics.median(r[1] for r in runs)
        kept = "ok" if all(r[2] for r in runs) else "BROKEN"
        print(f"{name:34s} wall {walls[name]:5.2f} s  cpu {cpus[name]:5.2f} s  {kept}",
              flush=True)
    slowest = max(walls, key=walls.get)
    print(f"RESULT cli_error_max_wall_s={walls[slowest]:.2f} goal<=3 ({slowest}); "
          f"max cpu {max(cpus.values()):.2f} s ({max(cpus, key=cpus.get)})")


if __name__ == "__main__":
    main()
