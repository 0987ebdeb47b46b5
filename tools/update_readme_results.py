"""Copy a reml-bench run's tables and figure into README.md (between the results markers).

Usage: python tools/update_readme_results.py runs/readme
Nothing in the README's results section is typed by hand: this script writes all of it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reml_core.plots import plot_few_shot
from reml_core.results import METHOD_LABELS, few_shot_tables

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def section(run: Path) -> str:
    results = json.loads((run / "results.json").read_text())
    labels = {key: f"REML ({info['name']})" for key, info in results.get("encoders", {}).items()}
    tables = few_shot_tables({labels.get(k, METHOD_LABELS.get(k, k)): t for k, t in results["methods"].items()})
    encoders = []
    for _key, info in results.get("encoders", {}).items():
        kind = "privileged: the true amplitude and phase" if info["privileged"] else "only the K support points, like MAML"
        encoders.append(f"`{info['name']}` ({kind})")
    budgets = "; ".join(f"{labels.get(k, METHOD_LABELS.get(k, k))}: {v}" for k, v in results.get("budgets", {}).items())
    timing = results["timing_s"]
    training = ", ".join(f"{labels.get(k.removeprefix('training_'), METHOD_LABELS.get(k.removeprefix('training_'), k))} "
                         f"{v / 60:.1f} min" for k, v in timing.items() if k.startswith("training_"))
    return "\n".join([
        START,
        f"Generated from `{results['command']}` (preset `{results.get('preset')}`, seed(s) "
        f"{', '.join(map(str, results.get('seed_list', [results['seed']])))}, {results['test_tasks']} held-out test tasks) "
        f"by `python tools/update_readme_results.py {run}`. REML state encoders: {', '.join(encoders)}. "
        f"Query MSE after fine-tuning with plain SGD (lr 0.01) on K support points; mean ± 95% CI over tasks; best per column in bold.",
        "",
        tables,
        "![query MSE against fine-tuning steps](docs/images/few_shot.png)",
        "",
        f"Budgets: {budgets}. Training time: {training}; whole benchmark {timing['total_this_invocation'] / 60:.0f} min on a 2-core CPU.",
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
    labels = {key: f"REML ({info['name']})" for key, info in results.get("encoders", {}).items()}
    plot_few_shot(results["methods"], ROOT / "docs" / "images" / "few_shot.png",
                  f"{results['plugin']}: query MSE after SGD fine-tuning ({results['test_tasks']} test tasks)", labels)
    print(f"README.md results section and docs/images/few_shot.png updated from {run}")


if __name__ == "__main__":
    main()
