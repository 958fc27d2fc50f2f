"""The polyphonic step model and the benchmark's protocol (issue 18): frame counts, the uniform model's
88 ln 2, NADE a proper joint distribution, clamping gives the conditional, a tiny run trains, resumes and
is scored by ``rtgen-train evaluate --roll``."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import SHARED_DATA, require
from training import poly
from training.cli import main as train_main
from training.poly_bench import BenchConfig, score, train
from training.poly_data import N_PITCHES, load_rolls, scored_frames

JSB = SHARED_DATA / "poly_music" / "JSB_Chorales.mat"
SCORED_TEST_FRAMES = {"JSB_Chorales": 4648, "Nottingham": 44293, "MuseData": 64215, "Piano_midi": 19011}
"""FACTS.md's scored test frames (each sequence's first frame is not scored)."""


@pytest.fixture(scope="module")
def jsb() -> dict[str, list[np.ndarray]]:
    require(JSB.is_file(), f"the polyphonic benchmark at {JSB} (set RTGEN_SHARED_DATA)")
    return load_rolls(JSB)


def tiny(head: str, pitches: int = N_PITCHES, seed: int = 0) -> poly.PolyModel:
    """A small model with large random weights (no gradients needed: requires_grad off)."""
    torch.manual_seed(seed)
    cfg = poly.PolyConfig(n_pitches=pitches, embed=8, hidden=12, nade_hidden=6, head=head, dropout=0.0)
    model = poly.PolyModel(cfg)
    with torch.no_grad():  # weights big enough that the pitches really depend on each other
        for p in model.parameters():
            p.normal_(0.0, 1.0)
    model.requires_grad_(False)
    return model.eval()


def all_frames(k: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=k)))  # (2^k, k)


def test_scored_frames_match_facts(jsb: dict[str, list[np.ndarray]]) -> None:
    assert [len(jsb[s]) for s in ("train", "valid", "test")] == [229, 76, 77]
    assert scored_frames(jsb["test"]) == SCORED_TEST_FRAMES["JSB_Chorales"]
    assert all(r.shape[1] == N_PITCHES for r in jsb["test"])


@pytest.mark.parametrize("head", poly.HEADS)
def test_uniform_model_scores_88_ln2(jsb: dict[str, list[np.ndarray]], head: str) -> None:
    model = tiny(head)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("out.", "to_bv.", "V", "pitch_out.")):  # every logit 0: p = 0.5 for every pitch
                p.zero_()
    total, frames = score(model, jsb["test"])
    assert frames == 4648
    assert total / frames == pytest.approx(88 * math.log(2), rel=1e-6)


@pytest.mark.parametrize("head", poly.HEADS)
def test_head_is_a_joint_distribution(head: str) -> None:
    k = 5
    model = tiny(head, pitches=k)
    frames = all_frames(k)  # (32, 5)
    u = torch.randn(3, 1, 12).expand(3, len(frames), 12)  # three steps' states
    lp = model.log_prob(u, frames.expand(3, -1, -1))  # (3, 32)
    assert torch.logsumexp(lp, dim=-1).tolist() == pytest.approx([0.0] * 3, abs=1e-5)
    if head == "nade":  # not a product of marginals: the pitches depend on each other
        marg = torch.sigmoid(model.logits(u[0, :1], torch.zeros(1, k)))[0]  # top pitch's p is exact
        assert float(marg[-1]) == pytest.approx(float(lp[0][frames[:, -1] == 1].exp().sum()), abs=1e-5)


def test_clamping_a_prefix_gives_the_conditional() -> None:
    k = 5
    model = tiny("nade", pitches=k, seed=1)
    frames = all_frames(k)
    u = torch.randn(1, 12).expand(len(frames), 12)
    joint = model.log_prob(u, frames)  # (32,)
    observed = torch.zeros(k, dtype=torch.bool)
    observed[-2:] = True  # the top two pitches (first in the NADE order): a melody and what lies above it
    cond = model.log_prob(u, frames, observed.expand(len(frames), -1))
    for top in itertools.product((0.0, 1.0), repeat=2):
        rows = (frames[:, -2:] == torch.tensor(top)).all(-1)
        marginal = torch.logsumexp(joint[rows], 0)
        assert cond[rows].tolist() == pytest.approx((joint[rows] - marginal).tolist(), abs=1e-5)
        assert float(torch.logsumexp(cond[rows], 0)) == pytest.approx(0.0, abs=1e-5)


def test_sampling_follows_the_distribution_and_keeps_clamped_pitches() -> None:
    k, n = 3, 40000
    model = tiny("nade", pitches=k, seed=2)
    u = torch.randn(1, 12).expand(n, 12)
    gen = torch.Generator().manual_seed(0)
    drawn = model.sample_step(u, torch.rand(n, k, generator=gen))
    codes = (drawn * torch.tensor([4.0, 2.0, 1.0])).sum(-1).long()  # all_frames' row index
    freq = torch.bincount(codes, minlength=2**k).float() / n
    probs = model.log_prob(u[: 2**k], all_frames(k)).exp()
    assert freq.tolist() == pytest.approx(probs.tolist(), abs=0.01)
    clamp = torch.tensor([[0.0, 1.0, 1.0]]).expand(n, k)
    observed = torch.tensor([[False, True, True]]).expand(n, k)
    drawn = model.sample_step(u, torch.rand(n, k, generator=gen), clamp, observed)
    assert (drawn[:, 1:] == 1).all()
    p_low = torch.exp(model.log_prob(u[:1], torch.tensor([[1.0, 1.0, 1.0]]), observed[:1]))
    assert float(drawn[:, 0].mean()) == pytest.approx(float(p_low), abs=0.01)


def test_tiny_run_trains_resumes_and_is_scored(
    jsb: dict[str, list[np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rolls = {"train": jsb["train"][:12], "valid": jsb["valid"][:6], "test": jsb["test"]}
    cfg = poly.PolyConfig(embed=16, hidden=24, nade_hidden=16, dropout=0.0)
    out = tmp_path / "run"
    first = train(rolls, out, cfg, BenchConfig(epochs=2, lr=1e-2), progress=False)
    assert first["epochs"] == 2 and first["test"]["frames"] == 4648
    assert first["history"][1]["train"] < first["history"][0]["train"] < 88 * math.log(2)
    again = train(rolls, out, cfg, BenchConfig(epochs=3, lr=1e-2), progress=False)  # resumes at epoch 2
    assert [h["epoch"] for h in again["history"]] == [0, 1, 2]
    assert again["history"][:2] == first["history"]
    assert json.loads((out / "config.json").read_text()) == json.loads(json.dumps(cfg.__dict__))
    capsys.readouterr()
    assert train_main(["evaluate", "--model", str(out), "--roll", str(JSB)]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["frames"] == 4648
    assert line["nll_per_frame"] == pytest.approx(again["test"]["nll_per_frame"], rel=1e-9)


def test_score_is_tcn_music_test_evaluate(jsb: dict[str, list[np.ndarray]]) -> None:
    """``score`` (batched, padded) equals TCN's ``evaluate()`` written out: batch 1, ``x = seq[:-1]``,
    ``y = seq[1:]``, ``loss = -trace(y log(p)^T + (1 - y) log(1 - p)^T)``, ``total_loss / count``."""
    model = tiny("bernoulli", seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.1)  # keep the sigmoids off 0 and 1, where TCN's unclamped log(p) would be inf
    total_loss, count = 0.0, 0
    for seq in jsb["test"][:20]:
        data_line = torch.tensor(seq, dtype=torch.float64)
        x, y = data_line[:-1], data_line[1:]
        u, _ = model.state(x.float().unsqueeze(0))
        output = torch.sigmoid(model.logits(u, y.float().unsqueeze(0))).squeeze(0).double()
        loss = -torch.trace(y @ torch.log(output).t() + (1 - y) @ torch.log(1 - output).t())
        total_loss += float(loss)
        count += output.size(0)
    total, frames = score(model, jsb["test"][:20])
    assert frames == count
    assert total / frames == pytest.approx(total_loss / count, rel=1e-6)


def test_poly_table_trains_each_dataset_once_and_writes_the_table(tmp_path: Path) -> None:
    """Two tiny benchmark files: a run each, the table with the published rows, the README's block replaced."""
    from scipy.io import savemat

    from training.poly_table import BEGIN, END, PUBLISHED, ROW

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("JSB_Chorales", "Nottingham"):
        splits = {}
        for split, n in (("train", 4), ("valid", 2), ("test", 2)):
            rolls = np.empty((1, n), dtype=object)
            for i in range(n):
                rolls[0, i] = (rng.random((12, 88)) < 0.05).astype(np.float64)
            splits[f"{split}data"] = rolls
        savemat(str(data / f"{name}.mat"), splits)
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{BEGIN}\nold table\n{END}\nafter\n")
    args = ["poly-table", "--out", str(tmp_path / "runs"), "--data-dir", str(data), "--epochs", "1"]
    args += ["--datasets", "Nottingham", "JSB_Chorales", "--readme", str(readme)]
    assert train_main(args) == 0
    summary = json.loads((tmp_path / "runs" / "poly_table.json").read_text())
    assert set(summary) == {"Nottingham", "JSB_Chorales"} and all(s["epochs"] == 1 for s in summary.values())
    assert summary["JSB_Chorales"]["test"]["frames"] == 2 * 11  # the first frame of each sequence is not scored
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith(f"{END}\nafter\n") and "old table" not in text
    ours = next(line for line in text.splitlines() if line.startswith(f"| {ROW}"))
    nll = summary["Nottingham"]["test"]["nll_per_frame"]
    assert f"**{nll:.3f}**" in ours and ours.rstrip().endswith("| – |")  # Piano-midi was not run
    assert all(f"| {name} |" in text for name in PUBLISHED)
    mtime = (tmp_path / "runs" / "JSB_Chorales" / "poly_bench.json").stat().st_mtime_ns
    assert train_main(args) == 0  # finished runs are read again, not trained again
    assert (tmp_path / "runs" / "JSB_Chorales" / "poly_bench.json").stat().st_mtime_ns == mtime
