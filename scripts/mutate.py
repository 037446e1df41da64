"""Mutation testing of initlab's tests (`make mutate`; not part of CI).

cosmic-ray mutates one source file at a time (one operator at one place per mutant); each mutant
runs only the tests that execute the mutated lines, fastest first, stopping at the first failure,
in a process forked from one that has imported torch and pytest (initlab itself is imported
fresh, mutant included). Which tests execute which line comes from one coverage.py run of the
library's unit tests with a context per test.

    python scripts/mutate.py                          # the files in FILES, resuming
    python scripts/mutate.py methods/lsuv.py          # chosen files, relative to src/initlab/
    python scripts/mutate.py --report                 # scores and survivors, nothing run

Everything lives under runs/mutate/ (git-ignored): a copy of src/ and tests/ that cosmic-ray
mutates (the checkout is never touched), the coverage map, one cosmic-ray session per file
(`cr-report runs/mutate/sessions/<file>.sqlite` reads it) and the survivors' diffs. Stopped at any
point, the next run resumes: a session is kept while its file is unchanged, and when the tests
change only the surviving mutants run again. Two kinds of mutant are skipped: those inside type
annotations (with `from __future__ import annotations` never evaluated: equivalent by
construction), and arithmetic operators replaced by bitwise or shift ones (on these files'
float tensors they raise at once; they would only inflate the score).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "mutate"
TREE = WORK / "tree"
FILES = ["methods/fixup.py", "methods/skipinit.py", "methods/zero.py", "methods/tfixup.py",
         "methods/emergence.py", "methods/classic.py", "methods/gradinit/search.py",
         "methods/gradinit/scale_adam.py"]
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header"]
#: The tests that may kill a mutant: the library's own unit tests (the lab's and the
#: integrations' tests run the methods too, but slowly, and mostly in other processes).
MAP_TESTS = ["tests/methods", "tests/core", "tests/test_registry.py"]


def fingerprint() -> str:
    """What the coverage map depends on: every source and test file of the copied tree, the
    pytest settings and the tests it runs."""
    h = hashlib.sha256(",".join(MAP_TESTS).encode())
    for p in sorted([p for d in ("src", "tests") for p in (TREE / d).rglob("*.py")]
                    + [TREE / "pyproject.toml"]):
        h.update(str(p.relative_to(TREE)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def fresh_tree() -> None:
    """src/, tests/ and pyproject.toml copied anew (a killed run may have left a mutant)."""
    shutil.rmtree(TREE, ignore_errors=True)
    for name in ("src", "tests"):
        shutil.copytree(ROOT / name, TREE / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", TREE / "pyproject.toml")


def tree_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(TREE / "src"), OMP_NUM_THREADS="1")


# ---- the coverage map: line -> the tests that execute it ----------------------------------------

def coverage_map() -> dict:
    path, key = WORK / "coverage.json", fingerprint()
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["fingerprint"] == key:
            return saved
    print("mapping lines to tests (one run of the suite under coverage)...", flush=True)
    start = time.time()
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--map-into", str(path)],
                   cwd=TREE, env=tree_env(), check=True)
    saved = json.loads(path.read_text())
    saved["fingerprint"] = key
    path.write_text(json.dumps(saved))
    print(f"mapped in {time.time() - start:.0f} s", flush=True)
    return saved


def map_into(out: Path) -> None:
    """In the copied tree: run the suite with one coverage context per test; write the map."""
    import coverage
    import pytest

    cov = coverage.Coverage(data_file=None, include=[str(TREE / "src" / "*")])
    durations: dict[str, float] = {}

    class PerTest:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_protocol(self, item, nextitem):
            cov.switch_context(item.nodeid)
            yield
            cov.switch_context("")

        def pytest_runtest_logreport(self, report):
            durations[report.nodeid] = durations.get(report.nodeid, 0.0) + report.duration

    cov.start()
    pytest.main(["-q", "-p", "no:cacheprovider", *MAP_TESTS], plugins=[PerTest()])
    cov.stop()
    data = cov.get_data()
    lines = {}
    for f in data.measured_files():
        rel = str(Path(f).relative_to(TREE))
        lines[rel] = {n: sorted(c for c in ctx if c) for n, ctx in data.contexts_by_lineno(f).items()}
    out.write_text(json.dumps(dict(lines=lines, durations=durations)))


def covering_tests(cmap: dict, rel: str, first: int, last: int) -> list[str]:
    """Tests that execute any of lines first..last of `rel`, fastest first. Lines run only at
    import (definitions, decorators, defaults) count as covered by every test of the file."""
    per_line = cmap["lines"].get(rel, {})
    tests = {t for n in range(first, last + 1) for t in per_line.get(str(n), [])}
    if not tests:
        tests = {t for ts in per_line.values() for t in ts}
    return sorted(tests, key=lambda t: (cmap["durations"].get(t, 0.0), t))


# ---- one cosmic-ray session per file ----------------------------------------------------------------

def annotation_lines(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of every annotation, if they are never evaluated."""
    tree = ast.parse(source)
    lazy = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
               and any(a.name == "annotations" for a in n.names) for n in tree.body)
    if not lazy:
        return []
    spans = []
    for node in ast.walk(tree):
        notes = []
        if isinstance(node, ast.arg):
            notes = [node.annotation]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            notes = [node.returns]
        elif isinstance(node, ast.AnnAssign):
            notes = [node.annotation]
        spans += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset))
                  for a in notes if a is not None]
    return spans


BITWISE = re.compile(r"ReplaceBinaryOperator_(Add|Sub|Mul|Div|FloorDiv|Mod|Pow)_"
                     r"(BitAnd|BitOr|BitXor|LShift|RShift)$")


def skipped_because(mutation, spans) -> str | None:
    start, end = tuple(mutation.start_pos), tuple(mutation.end_pos)
    if any(a <= start and end <= b for a, b in spans):
        return "in an annotation that is never evaluated: equivalent"
    if BITWISE.search(mutation.operator_name):
        return "arithmetic replaced by a bitwise or shift operator: not run"
    return None


def session(rel: str, tests_key: str):
    """The cosmic-ray work database of `rel` (src/initlab/...), created or brought up to date."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    name = rel.replace("/", ".").removeprefix("src.initlab.").removesuffix(".py")
    folder = WORK / "sessions"
    folder.mkdir(parents=True, exist_ok=True)
    db_path, meta_path = folder / f"{name}.sqlite", folder / f"{name}.json"
    source = (ROOT / rel).read_text()
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("source") != hashlib.sha256(source.encode()).hexdigest():
        db_path.unlink(missing_ok=True)
        config = folder / f"{name}.toml"
        config.write_text(
            f'[cosmic-ray]\nmodule-path = "{TREE / rel}"\ntimeout = 600.0\nexcluded-modules = []\n'
            'test-command = "set per mutant by scripts/mutate.py"\n'
            '[cosmic-ray.distributor]\nname = "local"\n')
        subprocess.run([sys.executable, "-m", "cosmic_ray.cli", "init", str(config), str(db_path)],
                       check=True, cwd=TREE)
        meta = dict(source=hashlib.sha256(source.encode()).hexdigest(), tests=tests_key)
    elif meta.get("tests") != tests_key:  # new tests may kill what survived: run those again
        import sqlite3
        with sqlite3.connect(db_path) as con:
            con.execute("DELETE FROM work_results WHERE test_outcome != 'KILLED' "
                        "AND worker_outcome != 'SKIPPED'")
        meta["tests"] = tests_key
    spans = annotation_lines(source)
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            why = skipped_because(item.mutations[0], spans)
            if why:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED,
                                                      output=why))
    meta_path.write_text(json.dumps(meta))
    return db_path


def run_file(rel: str, cmap: dict) -> None:
    from cosmic_ray.mutating import _make_diff, use_mutation
    from cosmic_ray.plugins import get_operator
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    db_path = session(rel, cmap["fingerprint"])
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        pending = list(db.pending_work_items)
        print(f"{rel}: {db.num_work_items} mutants, {len(pending)} to run", flush=True)
        for k, item in enumerate(pending):
            m = item.mutations[0]
            tests = covering_tests(cmap, rel, m.start_pos[0], m.end_pos[0])
            budget = sum(cmap["durations"].get(t, 1.0) for t in tests)
            start = time.time()
            operator = get_operator(m.operator_name)(**(m.operator_args or {}))
            with use_mutation(Path(m.module_path), operator, m.occurrence) as (before, after):
                if after is None:
                    result = WorkResult(worker_outcome=WorkerOutcome.NO_TEST)
                else:
                    killed, output = run_forked(tests, timeout=120 + 10 * budget)
                    result = WorkResult(worker_outcome=WorkerOutcome.NORMAL, output=output,
                                        test_outcome=TestOutcome.KILLED if killed
                                        else TestOutcome.SURVIVED,
                                        diff="\n".join(_make_diff(before, after, m.module_path)))
            db.set_result(item.job_id, result)
            print(f"  {k + 1}/{len(pending)} line {m.start_pos[0]} {m.operator_name}: "
                  f"{result.test_outcome} ({len(tests)} tests, {time.time() - start:.1f} s)",
                  flush=True)


def run_forked(tests: list[str], timeout: float) -> tuple[bool, str]:
    """Run `tests` in a child of this process (torch and pytest already imported, initlab
    not): (killed, output); killed if a test fails or the run times out."""
    if not tests:
        return False, "no test executes the mutated lines"
    log = WORK / "last-mutant.log"
    pid = os.fork()
    if pid == 0:  # the child: the tree's initlab, the mutant in it
        code = 3
        try:
            os.setsid()
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(TREE)
            sys.path.insert(0, str(TREE / "src"))
            import pytest
            code = int(pytest.main([*PYTEST[2:], "-x", *tests]))
        finally:
            os._exit(code)
    deadline = time.time() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return True, "timeout"
        time.sleep(0.05)
    output = log.read_text(errors="replace")
    rc = os.waitstatus_to_exitcode(status)
    if rc == 4 and "\nERROR tests/" in output:  # the mutant broke collection (an import failed)
        return True, output[-4000:]
    if rc in (4, 5):  # a bad node id / nothing collected: a fault of this script, not a kill
        return False, f"pytest exit {rc}: the tests did not run\n{output[-4000:]}"
    return rc != 0, output[-4000:]


# ---- the report ---------------------------------------------------------------------------------

def report(files: list[str]) -> str:
    from cosmic_ray.work_db import WorkDB, use_db

    rows = ["| file | mutants | killed | survived | skipped | pending | score |",
            "|---|---|---|---|---|---|---|"]
    for rel in files:
        name = rel.replace("/", ".").removeprefix("src.initlab.").removesuffix(".py")
        db_path = WORK / "sessions" / f"{name}.sqlite"
        if not db_path.is_file():
            continue
        counts = dict(killed=0, survived=0, skipped=0)
        survivors = []
        spans = annotation_lines((ROOT / rel).read_text())
        with use_db(str(db_path), WorkDB.Mode.open) as db:
            total = db.num_work_items
            for item, result in db.completed_work_items:
                if result.worker_outcome == "skipped" or skipped_because(item.mutations[0], spans):
                    counts["skipped"] += 1
                elif result.test_outcome == "survived":
                    counts["survived"] += 1
                    survivors.append(result.diff)
                else:
                    counts["killed"] += 1
        done = counts["killed"] + counts["survived"]
        pending = total - done - counts["skipped"]
        score = f"{100 * counts['killed'] / done:.1f} %" if done else "-"
        rows.append(f"| {rel.removeprefix('src/')} | {total} | {counts['killed']} | "
                    f"{counts['survived']} | {counts['skipped']} | {pending} | {score} |")
        (WORK / f"survivors-{name}.diff").write_text("\n".join(survivors))
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", help=f"paths under src/initlab/ (default: {' '.join(FILES)})")
    p.add_argument("--report", action="store_true", help="print the scores only")
    p.add_argument("--map-into", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.map_into:
        map_into(Path(a.map_into))
        return 0
    files = [f"src/initlab/{f}" for f in (a.files or FILES)]
    for rel in files:
        if not (ROOT / rel).is_file():
            p.error(f"no file {rel}")
    if not a.report:
        WORK.mkdir(parents=True, exist_ok=True)
        fresh_tree()
        cmap = coverage_map()
        sys.dont_write_bytecode = True   # each child compiles the mutated file afresh
        os.environ["OMP_NUM_THREADS"] = "1"
        import hypothesis  # noqa: F401  (imported once here, inherited by every child)
        import pytest  # noqa: F401
        import torch
        torch.set_num_threads(1)
        for rel in files:
            run_file(rel, cmap)
    table = report(files)
    (WORK / "report.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
