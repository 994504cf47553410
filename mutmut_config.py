"""Scope of `make mutation` (mutmut 2.5, which imports this file from the repository root).

Only the code that decides what a search optimizes is mutated: the GAN losses, the loss parts of
the three families, the reported scores (FID, MiFID, the memorization distance), what the search
builds (searcher, scheduler) and the trial loop. Every other line of those files is skipped, and
each mutant runs only the fast tests that exercise its code (MUTATED below). `make mutation`
mutates a part of MUTATED that fits in about half an hour on 2 cores (MUTATION_FILES, Makefile):

    make mutation                                              # losses, reported scores, search builders
    make mutation MUTATION_FILES=core/trainable.py             # another part
"""

from __future__ import annotations

import ast
import functools
import os

# file -> (qualified names of the functions to mutate, or None for the whole file; the tests to run)
MUTATED: dict[str, tuple[tuple[str, ...] | None, str]] = {
    "core/models/losses.py": (None, "tests/test_losses.py"),
    "core/models/cyclegan.py": (("CycleGAN.train_step",), "tests/test_losses.py -k cyclegan"),
    "core/models/wgan_gp.py": (("WGANGP.train_step",), "tests/test_losses.py -k wgan"),
    "core/models/vae.py": (("beta_at", "reconstruction_error", "kl_standard_normal", "VAE.train_step",
                            "VAE.eval_metrics"),
                           "tests/test_losses.py tests/test_reported_scores.py -k 'vae'"),
    "core/metrics.py": (("memorization_distance", "mifid_from_fid", "frechet_distance", "evaluate"),
                        "tests/test_metrics.py tests/test_reported_scores.py -k 'evaluate or trials_reported'"),
    "core/plan.py": (("search_metric", "sampler_settings", "baseline_points"),
                     "tests/test_searcher.py tests/test_samplers.py"),
    "core/config.py": (("pbt_interval", "_check_settings_act"), "tests/test_searcher.py tests/test_config.py"),
    "core/search.py": (("make_searcher", "make_scheduler"), "tests/test_searcher.py"),
    "core/trainable.py": (("run_trial", "_diverged", "_worst_for_the_searcher"),
                          "tests/test_trainable.py tests/test_reported_scores.py "
                          "-k 'resume or reports or diverging or trials_reported or resumed'"),
}

PYTEST = "{python} -m pytest -x -q -p no:cacheprovider -m 'not slow' {tests}"


@functools.cache
def _lines_in_scope(filename: str) -> frozenset[int] | None:
    """0-based line numbers of the functions to mutate in `filename`; None: the whole file."""
    names = MUTATED[filename][0]
    if names is None:
        return None
    tree = ast.parse(open(filename).read())
    lines: set[int] = set()
    found: set[str] = set()

    def visit(node, prefix=""):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if name in names:
                    found.add(name)
                    lines.update(range(child.lineno - 1, child.end_lineno))
                visit(child, name + ".")

    visit(tree)
    if set(names) - found:   # a renamed function must not silently leave the scope
        raise SystemExit(f"mutmut_config: {sorted(set(names) - found)} not found in {filename}; update MUTATED")
    return frozenset(lines)


def pre_mutation(context):
    filename = os.path.normpath(context.filename)
    if filename not in MUTATED:
        context.skip = True
        return
    scope = _lines_in_scope(filename)
    if scope is not None and context.current_line_index not in scope:
        context.skip = True
        return
    python = os.environ.get("MUTATION_PYTHON", "python")
    context.config.test_command = PYTEST.format(python=python, tests=MUTATED[filename][1])
