"""Mutation testing: do the tests notice small slips in the code they cover?

Each mutant changes one thing in one module (an arithmetic or comparison operator, a number, a
boolean, a unary minus, and/or), found by walking the module's AST. Every mutant is run against the
test files mapped to its module (``MODULE_TESTS``) in a temporary copy of the repository, one at a
time, so the working tree is never touched. A mutant is *killed* when those tests fail (or time
out), *survives* when they pass. The report gives the kill rate per module and lists the survivors
(file:line, the mutated source line) to be judged by hand: equivalent, or a missing test.

Not run in CI (minutes per module). ``make mutants`` runs it with the defaults below::

    OMP_NUM_THREADS=1 python bench/mutants.py --module training/loss.py --max 30
    python bench/mutants.py --list --module svs/scaling.py      # the mutants, nothing run

Numbers inside ``raise``/``print``/logging calls, strings and docstrings are not mutated.
"""
import argparse
import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Module -> the test files that are meant to catch its bugs.
MODULE_TESTS = {
    'training/loss.py': ['tests/test_training_loss.py'],
    'training/augment.py': ['tests/test_augment.py'],
    'svs/scaling.py': ['tests/test_svs.py', 'tests/test_ddpm_svs.py'],
    'svs/spectra.py': ['tests/test_svs.py'],
    'pruning/channels.py': ['tests/test_pruning.py', 'tests/test_channels_ratio.py'],
    'pruning/dcp.py': ['tests/test_pruning_scorers.py'],
    'training/distill_math.py': ['tests/test_distill_math.py', 'tests/test_distill.py'],
    'training/distill.py': ['tests/test_distill.py', 'tests/test_fidelity.py', 'tests/test_distill_cli.py'],
    'training/student_init.py': ['tests/test_distill.py', 'tests/test_fidelity.py'],
    'metrics/frechet.py': ['tests/test_metrics.py'],
    'metrics/knn.py': ['tests/test_metrics.py'],
}

_SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
               ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.MatMult: ast.Mult, ast.BitAnd: ast.BitOr,
               ast.BitOr: ast.BitAnd, ast.LShift: ast.RShift, ast.RShift: ast.LShift}
_SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_QUIET_CALLS = {'print', 'log', 'info', 'warning', 'warn', 'error', 'debug', 'UserError', 'ValueError',
                'TypeError', 'RuntimeError', 'AssertionError'}
_COPY_IGNORE = shutil.ignore_patterns('.git', '.venv', '__pycache__', '.pytest_cache', 'runs', '*.pyc', 'out', 'cache')


def _call_name(node):
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _quiet_nodes(tree):
    """ids of nodes whose mutation cannot change behaviour worth testing (messages, docstrings)."""
    quiet = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Raise, ast.Assert, ast.JoinedStr)) or (
                isinstance(node, ast.Call) and _call_name(node) in _QUIET_CALLS):
            quiet.update(id(n) for n in ast.walk(node))
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                quiet.add(id(first.value))
    return quiet


def find_mutants(source):
    """[(index, lineno, description)] of one module; ``index`` is the node's rank in ast.walk order."""
    tree = ast.parse(source)
    quiet = _quiet_nodes(tree)
    found = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in quiet:
            continue
        line = getattr(node, 'lineno', None)
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _SWAP_BINOP:
            found.append((index, 0, line, f'{type(node.op).__name__} -> {_SWAP_BINOP[type(node.op)].__name__}'))
        elif isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in _SWAP_CMP:
                    found.append((index, k, line, f'{type(op).__name__} -> {_SWAP_CMP[type(op)].__name__}'))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            found.append((index, 0, line, f'constant {node.value!r} -> {_mutate_constant(node.value)!r}'))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            found.append((index, 0, line, f'drop unary {type(node.op).__name__}'))
        elif isinstance(node, ast.BoolOp):
            found.append((index, 0, line, f'{type(node.op).__name__} -> {"Or" if isinstance(node.op, ast.And) else "And"}'))
    return found


def _mutate_constant(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    return value * 2 if value != 0 else 1.0


class _Mutator(ast.NodeTransformer):
    def __init__(self, index, sub):
        self.target, self.sub = index, sub

    def apply(self, tree):
        nodes = list(ast.walk(tree))
        node = nodes[self.target]
        if isinstance(node, (ast.BinOp, ast.AugAssign)):
            node.op = _SWAP_BINOP[type(node.op)]()
        elif isinstance(node, ast.Compare):
            node.ops[self.sub] = _SWAP_CMP[type(node.ops[self.sub])]()
        elif isinstance(node, ast.Constant):
            node.value = _mutate_constant(node.value)
        elif isinstance(node, ast.UnaryOp):
            self._replace(tree, node, node.operand)
        elif isinstance(node, ast.BoolOp):
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        return tree

    @staticmethod
    def _replace(tree, old, new):
        for parent in ast.walk(tree):
            for field, value in ast.iter_fields(parent):
                if value is old:
                    setattr(parent, field, new)
                    return
                if isinstance(value, list):
                    for i, item in enumerate(value):
                        if item is old:
                            value[i] = new
                            return


def mutated_source(source, index, sub):
    tree = _Mutator(index, sub).apply(ast.parse(source))
    return ast.unparse(ast.fix_missing_locations(tree)) + '\n'


def run_tests(workdir, tests, timeout):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE='1', OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'),
               SVS_SHARED_DIR=os.environ.get('SVS_SHARED_DIR', str(ROOT.parent / 'shared')))
    cmd = [sys.executable, '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider', '-p', 'no:randomly', *tests]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
        rc = proc.returncode
        last = (proc.stdout.strip().splitlines() or [''])[-1]
    except subprocess.TimeoutExpired:
        rc, last = 'timeout', 'timeout'
    return rc, last, time.time() - start


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt  # SIGTERM like Ctrl-C: the running tests are killed, the temporary copy removed


def main():
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--module', action='append', help='module path (repeatable); default: every mapped module')
    parser.add_argument('--max', type=int, default=30, help='mutants per module (random sample, fixed seed); 0 = all')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--list', action='store_true', help='print the mutants and exit')
    parser.add_argument('--out', default=None, help='write the report as JSON here')
    args = parser.parse_args()
    modules = args.module or list(MODULE_TESTS)
    unknown = [m for m in modules if m not in MODULE_TESTS]
    if unknown:
        sys.exit(f'mutants: no tests mapped to {unknown[0]} (known: {", ".join(MODULE_TESTS)})')

    plan = {}
    for module in modules:
        source = (ROOT / module).read_text()
        mutants = find_mutants(source)
        if args.max and len(mutants) > args.max:
            mutants = random.Random(args.seed).sample(mutants, args.max)
        mutants = sorted(mutants, key=lambda m: (m[2] or 0, m[0], m[1]))
        plan[module] = (source, mutants)
        if args.list:
            for index, sub, line, what in mutants:
                print(f'{module}:{line}: {what}   [{index}.{sub}]')
    if args.list:
        return

    report = dict()
    with tempfile.TemporaryDirectory(prefix='mutants-') as tmp:
        work = Path(tmp) / 'repo'
        shutil.copytree(ROOT, work, ignore=_COPY_IGNORE, symlinks=True)
        for module, (source, mutants) in plan.items():
            tests = MODULE_TESTS[module]
            rc, last, base_s = run_tests(work, tests, timeout=1800)
            if rc != 0:
                print(f'{module}: the unmutated tests fail ({last}); skipped', flush=True)
                report[module] = dict(error=f'baseline fails: {last}')
                continue
            timeout = max(60.0, 3 * base_s + 30)
            print(f'{module}: {len(mutants)} mutants, tests {" ".join(tests)} ({base_s:.0f} s each)', flush=True)
            killed, survivors = 0, []
            lines = source.splitlines()
            try:
                for index, sub, line, what in mutants:
                    (work / module).write_text(mutated_source(source, index, sub))
                    rc, last, secs = run_tests(work, tests, timeout)
                    dead = rc != 0
                    killed += dead
                    text = lines[line - 1].strip() if line else ''
                    print(f'  {"killed  " if dead else "SURVIVED"} {module}:{line}: {what}   | {text}   ({secs:.0f} s)', flush=True)
                    if not dead:
                        survivors.append(dict(line=line, mutation=what, source=text))
            finally:
                (work / module).write_text(source)
            total = len(mutants)
            report[module] = dict(mutants=total, killed=killed, kill_rate=killed / total if total else None,
                                  survivors=survivors)
            print(f'{module}: killed {killed}/{total}' + (f' ({100 * killed / total:.0f} %)' if total else ''), flush=True)

    print('\nkill rate per module:')
    for module, r in report.items():
        if 'error' in r:
            print(f'  {module:28s} {r["error"]}')
        else:
            print(f'  {module:28s} {r["killed"]:3d}/{r["mutants"]:<3d} {100 * (r["kill_rate"] or 0):5.1f} %')
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == '__main__':
    main()
