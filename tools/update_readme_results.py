"""Copy a reml-bench run's tables and figure into README.md, between its family's results markers.

Usage: python tools/update_readme_results.py runs/readme
The markers are <!-- results:start --> ... <!-- results:end --> for the sine family and
<!-- results-FAMILY:start --> ... <!-- results-FAMILY:end --> for any other (e.g. digits); the
figure goes to docs/images/few_shot.png (sine) or docs/images/few_shot_FAMILY.png.
Nothing in a README results section is typed by hand: this script writes all of it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from reml_core.plots import plot_few_shot
from reml_core.reports import document_tables, measure_label, own_rate_note, table_measures
from reml_core.results import read_results

ROOT = Path(__file__).resolve().parent.parent


def markers(plugin: str) -> tuple[str, str]:
    name = "results" if plugin == "sine" else f"results-{plugin}"
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def figure(plugin: str) -> str:
    return "docs/images/few_shot.png" if plugin == "sine" else f"docs/images/few_shot_{plugin}.png"


def section(run: Path) -> str:
    results = read_results(run / "results.json")
    start, end = markers(results.plugin)
    loss = results.loss_name
    tables = document_tables(results)
    measured = " and ".join([measure_label("mse", loss), *table_measures(results.tables)[1:]])
    encoders = []
    for info in results.encoders.values():
        kind = (
            "privileged: the task's true parameters"
            if info.privileged
            else "only the K-shot support set, like the baselines"
        )
        encoders.append(f"`{info.name}` ({kind})")
    budgets = "; ".join(f"{results.method_name(k)}: {v}" for k, v in results.budgets.items())
    timing = results.timing
    training = ", ".join(
        f"{results.method_name(k.removeprefix('training_'))} {v / 60:.1f} min"
        for k, v in timing.items()
        if k.startswith("training_")
    )
    choosing = ", ".join(
        f"{results.method_name(k.removeprefix('choosing_'))} {v:.1f} s"
        for k, v in timing.items()
        if k.startswith("choosing_")
    )
    choosing_words = (
        f" Test-time cost, the seconds spent choosing the test tasks' starting networks before the fine-tuning every "
        f"method gets (all seeds): {choosing}."
        if choosing
        else ""
    )
    seeds = results.seed_list
    spread = (
        f" Each cell is the mean over {len(seeds)} seeds of the per-seed mean ± the mean 95% CI over tasks; "
        '"seeds ±" is the standard deviation between the seeds\' means, the band in the figure.'
        if len(seeds) > 1
        else ""
    )
    sgd_lr = results.config["eval"]["sgd_lr"]
    return "\n".join(
        [
            start,
            f"Generated from `{results.command}` (preset `{results.preset}`, seed(s) "
            f"{', '.join(map(str, seeds))}, {results.test_tasks} held-out test tasks) "
            f"by `python tools/update_readme_results.py {run}`. REML state encoders: {', '.join(encoders)}. "
            f"{measured[0].upper() + measured[1:]} after fine-tuning with plain SGD (lr {sgd_lr:g}) on the K-shot "
            "support set; "
            f"mean ± 95% CI over tasks; best per column in bold.{spread}",
            "",
            tables,
            *own_rate_note(results),
            f"![{results.plugin}: few-shot results against fine-tuning steps]({figure(results.plugin)})",
            "",
            f"Budgets: {budgets}. Training time (all seeds): {training}; whole benchmark "
            f"{timing['total_this_invocation'] / 60:.0f} min on a 2-core CPU.{choosing_words}",
            end,
        ]
    )


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    run = Path(sys.argv[1])
    results = read_results(run / "results.json")
    plugin = results.plugin
    start, end = markers(plugin)
    readme = ROOT / "README.md"
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"README.md lacks the markers {start} ... {end}")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    readme.write_text(before + section(run) + after)
    plot_few_shot(
        results.tables,
        ROOT / figure(plugin),
        f"{plugin}: query {results.loss_name} after SGD fine-tuning ({results.test_tasks} test tasks)",
        results.method_labels(),
        results.loss_name,
    )
    print(f"README.md {plugin} results section and {figure(plugin)} updated from {run}")


if __name__ == "__main__":
    main()
