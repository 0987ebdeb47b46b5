"""Copy a reml-bench run's tables and figure into README.md (between the results markers).

Usage: python tools/update_readme_results.py runs/readme
Nothing in the README's results section is typed by hand: this script writes all of it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reml_core.plots import plot_few_shot
from reml_core.results import few_shot_tables, labelled, method_labels

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def section(run: Path) -> str:
    results = json.loads((run / "results.json").read_text())
    labels = method_labels(results)
    tables = few_shot_tables(labelled(results, results["methods"]))
    encoders = []
    for _key, info in results.get("encoders", {}).items():
        kind = "privileged: the task's true amplitude and phase" if info["privileged"] else "only the K support points, like MAML"
        encoders.append(f"`{info['name']}` ({kind})")
    budgets = "; ".join(f"{labels.get(k, k)}: {v}" for k, v in results.get("budgets", {}).items())
    timing = results["timing_s"]
    training = ", ".join(f"{labels.get(k.removeprefix('training_'), k)} {v / 60:.1f} min" for k, v in timing.items() if k.startswith("training_"))
    seeds = results.get("seed_list", [results["seed"]])
    spread = (f" Each cell is the mean over {len(seeds)} seeds of the per-seed mean ± the mean 95% CI over tasks; "
              "\"seeds ±\" is the standard deviation between the seeds' means, the band in the figure."
              if len(seeds) > 1 else "")
    return "\n".join([
        START,
        f"Generated from `{results['command']}` (preset `{results.get('preset')}`, seed(s) "
        f"{', '.join(map(str, results.get('seed_list', [results['seed']])))}, {results['test_tasks']} held-out test tasks) "
        f"by `python tools/update_readme_results.py {run}`. REML state encoders: {', '.join(encoders)}. "
        f"Query MSE after fine-tuning with plain SGD (lr 0.01) on K support points; mean ± 95% CI over tasks; best per column in bold.{spread}",
        "",
        tables,
        "![query MSE against fine-tuning steps](docs/images/few_shot.png)",
        "",
        f"Budgets: {budgets}. Training time (all seeds): {training}; whole benchmark {timing['total_this_invocation'] / 60:.0f} min on a 2-core CPU.",
        END,
    ])


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    run = Path(sys.argv[1])
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the markers {START} ... {END}")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    readme.write_text(before + section(run) + after)
    results = json.loads((run / "results.json").read_text())
    labels = method_labels(results)
    plot_few_shot(results["methods"], ROOT / "docs" / "images" / "few_shot.png",
                  f"{results['plugin']}: query MSE after SGD fine-tuning ({results['test_tasks']} test tasks)", labels)
    print(f"README.md results section and docs/images/few_shot.png updated from {run}")


if __name__ == "__main__":
    main()
