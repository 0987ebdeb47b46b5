"""REML from Python, as in a notebook: a smoke run, a smoke benchmark, both loaded back and plotted.

    .venv/bin/python docs/examples/quickstart.py [OUTPUT_FOLDER]

Uses only the public API (``reml_core.run``, ``reml_core.bench``, ``reml_core.load``). The budgets
are the smoke preset's, shrunk further so the whole script takes well under a minute; drop
``overrides`` for the preset's own budgets. The test suite runs this script.
"""

import sys
import tempfile
from pathlib import Path

import reml_core

folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="reml-quickstart-"))
tiny = {
    "train.env_steps": 400,
    "train.checkpoint_every": 200,
    "train.validation_tasks": 3,
    "train.calibration_episodes": 5,
    "train.progress": False,
    "eval.test_tasks": 5,
    "eval.curve_steps": 3,
    "eval.curve_tasks": 2,
    "policy.n_steps": 256,
    "policy.batch_size": 128,
    "baselines.maml.iterations": 20,
}

# 1. One run: REML meta-trained on sine regression, evaluated beside its quick baselines.
run = reml_core.run(plugin="sine", preset="smoke", seed=0, overrides=tiny, out=folder / "run")
print(run.kind, run.methods, run.folder)
print("REML, K=5, 10 steps:", run.cell("reml", shots=5, steps=10))

# 2. A benchmark: REML against MAML and scratch, two seeds (executor="ray" runs the jobs on Ray).
bench = reml_core.bench(
    plugin="sine", preset="smoke", methods=["reml", "maml", "scratch"], seeds=2, overrides=tiny, out=folder / "bench"
)
for method in bench.methods:
    cell = bench.cell(method, shots=10, steps=10)
    print(f"{bench.labels[method]:>20}: {cell.mean:.3f} ± {cell.ci95:.3f} (seeds ± {cell.seed_spread:.3f})")

# 3. Load both back from their folders (e.g. in another session) and plot them.
for loaded in (reml_core.load(folder / "run"), reml_core.load(folder / "bench")):
    figure = loaded.plot(folder / f"{loaded.kind}-few-shot.png")
    curves = loaded.plot(folder / f"{loaded.kind}-convergence.png", curves=True)
    print("plotted", figure.name, curves.name)
    try:
        frame = loaded.to_dataframe()
        print(frame.pivot_table(index="label", columns=["shots", "steps"], values="loss").round(3))
    except ImportError:  # pandas is optional
        print(len(loaded.rows()), "rows")
