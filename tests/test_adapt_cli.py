"""``reml-adapt``: a run's network for a task in CSV files, predictions out, one line and exit 2 for every bad file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.runs import cli, tiny_run

import reml_core
from reml_core.cli.adapt import main


def _adapt(capsys, *args: str):
    """reml-adapt in this process (fast: torch is imported once): (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exit:  # argparse's one-line error for a bad flag
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("adapt") / "run")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _good(tmp_path: Path) -> tuple[Path, Path]:
    x = np.linspace(-4, 4, 10)
    support = _write(
        tmp_path / "support.csv", "x,y\n" + "".join(f"{float(a)!r},{float(2 * np.sin(a + 0.5))!r}\n" for a in x)
    )
    query = _write(tmp_path / "query.csv", "x\n" + "".join(f"{float(a)!r}\n" for a in np.linspace(-5, 5, 7)))
    return support, query


@pytest.mark.slow
def test_predictions_and_the_exported_network_are_what_the_learner_gives(run_folder, tmp_path):
    support, query = _good(tmp_path)
    result = cli(
        "reml-adapt",
        str(run_folder),
        "--support",
        str(support),
        "--query",
        str(query),
        "--steps",
        "10",
        "--out",
        str(tmp_path / "predictions.csv"),
        "--export",
        str(tmp_path / "net.pt"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0] == "x,predicted_y" and len(lines) == 8
    written = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    learner = reml_core.load(run_folder).learner()
    x = np.linspace(-4, 4, 10)
    expected = learner.predict(x, 2 * np.sin(x + 0.5), np.linspace(-5, 5, 7), steps=10).numpy().reshape(-1)
    np.testing.assert_allclose(written[:, 1], expected, rtol=1e-5, atol=1e-6)
    saved = torch.load(tmp_path / "net.pt", weights_only=True)
    network = torch.nn.Sequential(*(getattr(torch.nn, name)(**arguments) for name, arguments in saved["layers"]))
    network.load_state_dict(saved["state_dict"])
    with torch.no_grad():
        np.testing.assert_allclose(
            network(torch.tensor(written[:, :1], dtype=torch.float32)).numpy().reshape(-1),
            expected,
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.slow
def test_every_bad_file_is_one_line_and_exit_2_and_nothing_is_written(run_folder, tmp_path, capsys):
    support, query = _good(tmp_path)
    folder = tmp_path / "folder"
    folder.mkdir()
    unreadable = _write(tmp_path / "unreadable.csv", "x,y\n1,2\n")
    unreadable.chmod(0)
    bad = {
        "missing": (tmp_path / "missing.csv", "does not exist"),
        "folder": (folder, "is not a file"),
        "empty": (_write(tmp_path / "empty.csv", ""), "is empty"),
        "header only": (_write(tmp_path / "header.csv", "x,y\n"), "only a header line"),
        "binary": (tmp_path / "binary.csv", "not a UTF-8 text file"),
        "text": (_write(tmp_path / "text.csv", "x,y\n1,2\n3,abc\n"), "line 3, column 'y': 'abc' is not a number"),
        "nan": (_write(tmp_path / "nan.csv", "x,y\n1,2\n3,nan\n"), "line 3, column 'y': nan is not a finite number"),
        "ragged": (_write(tmp_path / "ragged.csv", "x,y\n1,2\n3\n"), "line 3: 1 fields where the header has 2"),
        "columns": (_write(tmp_path / "wide.csv", "x,y,z\n1,2,3\n"), "has 3 columns; this run's family needs 2"),
        "K": (
            _write(tmp_path / "many.csv", "x,y\n" + "0.1,0.2\n" * 11),
            "K = 11 points; this run supports K from 1 to 10",
        ),
    }
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00x")
    if os.geteuid() != 0:  # root reads anything
        bad["unreadable"] = (unreadable, "cannot read --support")
    out = tmp_path / "predictions.csv"
    for name, (path, message) in bad.items():
        for flag, given in (("--support", path), ("--query", path)):
            if name in ("columns", "K") and flag == "--query":
                continue
            args = [
                "--support",
                str(given if flag == "--support" else support),
                "--query",
                str(given if flag == "--query" else query),
            ]
            code, stdout, stderr = _adapt(
                capsys, str(run_folder), *args, "--out", str(out), "--export", str(tmp_path / "net.pt")
            )
            assert code == 2 and stdout == "", (name, flag, stderr)
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("reml-adapt: error: ") and message in lines[0], (
                name,
                flag,
                lines,
            )
            assert flag in lines[0] or name == "K"
            assert not out.exists() and not (tmp_path / "net.pt").exists()


@pytest.mark.slow
def test_outputs_are_refused_before_anything_runs(run_folder, tmp_path, capsys):
    support, query = _good(tmp_path)
    existing = _write(tmp_path / "existing.csv", "keep me\n")
    cases = [
        (["--out", str(existing)], "exists; use --force"),
        (["--out", str(tmp_path / "nowhere" / "p.csv")], "does not exist"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--out", str(tmp_path / "p.csv"), "--steps", "-1"], "argument --steps"),
        (["--out", str(tmp_path / "p.csv"), "--lr", "0"], "argument --lr"),
        (["--out", str(tmp_path / "p.csv"), "--method", "maml"], "holds no method 'maml'"),
    ]
    for extra, message in cases:
        code, _, stderr = _adapt(capsys, str(run_folder), "--support", str(support), "--query", str(query), *extra)
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr, (extra, stderr)
    assert existing.read_text() == "keep me\n"
    code, _, stderr = _adapt(
        capsys,
        str(tmp_path / "no-run"),
        "--support",
        str(support),
        "--query",
        str(query),
        "--out",
        str(tmp_path / "p.csv"),
    )
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "results.json" in stderr, stderr


@pytest.mark.slow
def test_data_outside_the_trained_range_is_a_one_line_warning(run_folder, tmp_path, capsys):
    _, query = _good(tmp_path)
    support = _write(tmp_path / "far.csv", "x,y\n" + "".join(f"{float(a)!r},0.5\n" for a in np.linspace(-12, 12, 10)))
    code, _, stderr = _adapt(
        capsys, str(run_folder), "--support", str(support), "--query", str(query), "--out", str(tmp_path / "p.csv")
    )
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if "warning" in line]
    assert warnings == [
        "reml-adapt: warning: x_support holds values in [-12, 12], outside [-5, 5], the range of the inputs the sine "
        "family was meta-trained on; the network may predict poorly there"
    ]


def test_help_on_standard_output_that_cannot_be_written_is_one_line(tmp_path):
    from test_cli import _with_full_stdout

    result = _with_full_stdout("reml-adapt", "--help", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "reml-adapt: error: cannot write standard output: file too large; the output is incomplete"
    ]
