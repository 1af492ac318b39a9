"""DSL and QB-Norm (tvrbench.postproc) against NumPy written from ../shared/POSTPROC.md's
equations and against hand-computed 3×3 cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tvrbench.postproc import (
    DSLSettings,
    PostprocError,
    QBNormSettings,
    check_methods,
    dual_softmax,
    postprocessed_ranks,
    qbnorm,
    querybank_normalise,
)

# ------------------------------------------------------------------ NumPy, from the equations


def np_dsl(S: np.ndarray, lam: float, direction: str) -> np.ndarray:
    """t2v: Nt · S ⊙ softmax over the texts (axis 0); v2t: over the videos (axis 1)."""
    axis = 0 if direction == "t2v" else 1
    z = lam * S
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    P = e / e.sum(axis=axis, keepdims=True)
    return S.shape[0] * S * P


def np_qb(S: np.ndarray, B: np.ndarray, beta: float, k: int, theta: int) -> np.ndarray:
    """Activation set from the bank's top-k (ties → lower index), then the dynamic inverted
    softmax on the rows whose raw top-1 is activated; other rows raw."""
    votes = np.zeros(S.shape[1], dtype=int)
    for row in B:
        for j in np.argsort(-row, kind="stable")[:k]:
            votes[j] += 1
    out = S.copy()
    denominator = np.exp(beta * B).sum(axis=0)  # moderate β·B here: no overflow
    for i, row in enumerate(S):
        if votes[int(np.argmax(row))] >= theta:
            out[i] = np.exp(beta * row) / denominator
    return out


def ranks_rows(M: np.ndarray) -> np.ndarray:
    """1 + #items scored >= the correct one (the diagonal), per row."""
    return (M >= np.diag(M)[:, None]).sum(axis=1)


@pytest.fixture
def mats():
    rng = np.random.default_rng(3)
    S = rng.uniform(-0.2, 0.7, size=(7, 7))
    B = rng.uniform(-0.2, 0.7, size=(3, 7))  # few bank queries: some items inactive
    Bv = rng.uniform(-0.2, 0.7, size=(7, 5))  # test texts × bank videos
    return S, B, Bv


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
@pytest.mark.parametrize("lam", [100.0, 1.0, 7.5])
def test_dsl_matches_numpy(mats, direction, lam):
    S = mats[0]
    got = dual_softmax(torch.tensor(S, dtype=torch.float32), direction, lam)
    assert got.dtype == torch.float64 and got.shape == S.shape
    want = np_dsl(S.astype(np.float32).astype(np.float64), lam, direction)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("beta,k,theta", [(20.0, 1, 1), (70.0, 2, 2), (5.0, 3, 1)])
def test_qbnorm_matches_numpy(mats, beta, k, theta):
    S, B, Bv = mats
    settings = QBNormSettings(beta=beta, k=k, theta=theta)
    got = qbnorm(torch.tensor(S), torch.tensor(B), "t2v", settings).numpy()
    np.testing.assert_allclose(got, np_qb(S, B, beta, k, theta), rtol=1e-12)
    # v2t: queries = test videos, bank = training videos: QB(Sᵀ, B_vᵀ)ᵀ.
    got_v2t = qbnorm(torch.tensor(S), torch.tensor(Bv), "v2t", settings).numpy()
    np.testing.assert_allclose(got_v2t, np_qb(S.T, Bv.T, beta, k, theta).T, rtol=1e-12)


def test_some_rows_activated_and_some_raw(mats):
    S, B, _ = mats
    got = qbnorm(torch.tensor(S), torch.tensor(B)).numpy()
    raw = np.all(got == S, axis=1)
    assert raw.any() and (~raw).any()  # the fixture exercises both branches


# ------------------------------------------------------------------------- hand-computed 3×3

# S = ln E, λ = 1: exp(λS) = E, so the softmaxes are fractions of E's column / row sums.
E = np.array([[6.0, 2.0, 3.0], [5.0, 4.0, 3.0], [1.0, 2.0, 6.0]])


def test_dsl_hand_computed_3x3():
    S = np.log(E)
    # Column sums 12, 8, 12: each video's prior over the texts.
    P = np.array([[6 / 12, 2 / 8, 3 / 12], [5 / 12, 4 / 8, 3 / 12], [1 / 12, 2 / 8, 6 / 12]])
    t2v = dual_softmax(torch.tensor(S), "t2v", inverse_temperature=1.0).numpy()
    np.testing.assert_allclose(t2v, 3 * S * P, rtol=1e-12)
    # Row 1: raw ln5 > ln4 (rank 2); DSL 3·ln5·5/12 = 2.0118 < 3·ln4·1/2 = 2.0794 (rank 1).
    assert t2v[1, 0] == pytest.approx(2.011797, abs=1e-6)
    assert t2v[1, 1] == pytest.approx(2.079442, abs=1e-6)
    assert ranks_rows(S).tolist() == [1, 2, 1]
    assert ranks_rows(t2v).tolist() == [1, 1, 1]
    # Row sums 11, 12, 9: each text's prior over the videos.
    Q = np.array([[6 / 11, 2 / 11, 3 / 11], [5 / 12, 4 / 12, 3 / 12], [1 / 9, 2 / 9, 6 / 9]])
    v2t = dual_softmax(torch.tensor(S), "v2t", inverse_temperature=1.0).numpy()
    np.testing.assert_allclose(v2t, 3 * S * Q, rtol=1e-12)
    assert v2t[0, 0] == pytest.approx(3 * np.log(6) * 6 / 11)


def test_qbnorm_hand_computed_3x3():
    # β = 1, S = ln E, B = ln F: a normalised row is E[i, j] / Σ_b F[b, j].
    E_test = np.array([[4.0, 6.0, 1.0], [1.0, 5.0, 2.0], [3.0, 1.0, 2.0]])
    F = np.array([[1.0, 8.0, 2.0], [2.0, 8.0, 1.0]])  # both bank top-1s: video 1 → A = {1}
    S, B = np.log(E_test), np.log(F)
    got = querybank_normalise(torch.tensor(S), torch.tensor(B), beta=1.0).numpy()
    want = np.array(
        [
            [4 / 3, 6 / 16, 1 / 3],  # top-1 = video 1 ∈ A: normalised (bank sums 3, 16, 3)
            [1 / 3, 5 / 16, 2 / 3],  # top-1 = video 1 ∈ A: normalised
            np.log([3.0, 1.0, 2.0]),  # top-1 = video 0 ∉ A: raw
        ]
    )
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert ranks_rows(S).tolist() == [2, 1, 2]
    assert ranks_rows(got).tolist() == [1, 3, 2]
    # θ = 3 > the two bank queries: nothing activated, every row raw.
    none = querybank_normalise(torch.tensor(S), torch.tensor(B), beta=1.0, theta=3).numpy()
    np.testing.assert_array_equal(none, S)


def test_qbnorm_ties_go_to_the_lower_index():
    # Bank row ties between videos 0 and 2: video 0 takes the vote (A = {0}).
    B = torch.tensor([[0.5, 0.1, 0.5]], dtype=torch.float64)
    S = torch.tensor([[0.3, 0.2, 0.3], [0.1, 0.2, 0.9]], dtype=torch.float64)
    got = querybank_normalise(S, B, beta=1.0)
    assert torch.equal(got[1], S[1])  # top-1 video 2 ∉ A: raw
    expected = torch.exp(S[0]) / torch.exp(B[0])  # top-1 video 0 (tie, lower index) ∈ A
    torch.testing.assert_close(got[0], expected, rtol=1e-12, atol=0)


def test_large_beta_does_not_overflow():
    S = torch.tensor([[0.9, 0.8], [0.7, 0.95]])
    B = torch.tensor([[0.99, 0.1], [0.2, 0.98]])
    got = querybank_normalise(S, B, beta=5000.0)  # exp(βS) alone would be inf
    assert torch.isfinite(got).all()


def test_inputs_are_not_modified(mats):
    S, B, _ = mats
    s, b = torch.tensor(S), torch.tensor(B)
    qbnorm(s, b)
    dual_softmax(s)
    assert np.array_equal(s.numpy(), S) and np.array_equal(b.numpy(), B)


def test_postprocessed_ranks_per_method(mats):
    S, B, Bv = mats
    s = torch.tensor(S)
    t2v, v2t = postprocessed_ranks(s, "dsl", dsl=DSLSettings(50.0))
    assert t2v.tolist() == ranks_rows(np_dsl(S, 50.0, "t2v")).tolist()
    assert v2t is not None and v2t.tolist() == ranks_rows(np_dsl(S, 50.0, "v2t").T).tolist()
    t2v, v2t = postprocessed_ranks(s, "qbnorm", bank_t2v=torch.tensor(B))
    assert t2v.tolist() == ranks_rows(np_qb(S, B, 20.0, 1, 1)).tolist()
    assert v2t is None  # no video bank: v2t QB-Norm not computed
    _, v2t = postprocessed_ranks(s, "qbnorm", bank_t2v=torch.tensor(B), bank_v2t=torch.tensor(Bv))
    assert v2t is not None
    assert v2t.tolist() == ranks_rows(np_qb(S.T, Bv.T, 20.0, 1, 1)).tolist()


def test_clear_errors():
    s = torch.rand(3, 4)
    with pytest.raises(PostprocError, match=r"non-finite.*\[1, 2\]"):
        bad = s.clone()
        bad[1, 2] = float("nan")
        dual_softmax(bad)
    with pytest.raises(PostprocError, match="2-D"):
        dual_softmax(torch.rand(3))
    with pytest.raises(PostprocError, match="same gallery"):
        qbnorm(s, torch.rand(5, 3))
    with pytest.raises(PostprocError, match=r"\[n_text, n_bank_videos\]"):
        qbnorm(s, torch.rand(4, 5), "v2t")
    with pytest.raises(PostprocError, match="direction"):
        dual_softmax(s, "both")
    with pytest.raises(PostprocError, match="k must be"):
        querybank_normalise(s, s, k=0)
    with pytest.raises(PostprocError, match="needs a query bank"):
        postprocessed_ranks(s, "qbnorm")
    with pytest.raises(PostprocError, match="unknown post-processing dls"):
        check_methods("none,dls")
    assert check_methods(["qbnorm", "none"]) == ["none", "qbnorm"]


# ------------------------------------------------------------------- tvrbench metrics --postproc


def _cli_json(args: list[str], capsys) -> dict:
    import json

    from tvrbench import metrics_cli

    assert metrics_cli.main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_metrics_cli_postproc(tmp_path, capsys, mats):
    S, B, Bv = mats
    rng = np.random.default_rng(1)
    t2v = np.repeat(np.arange(7), 2)  # 14 captions, 2 per video: DSL before the regrouping
    sim = rng.uniform(-0.2, 0.7, size=(14, 7))
    np.save(tmp_path / "sim.npy", sim)
    np.save(tmp_path / "map.npy", t2v)
    out = _cli_json(
        [
            str(tmp_path / "sim.npy"),
            "--text-to-video",
            str(tmp_path / "map.npy"),
            "--postproc",
            "dsl",
            "--dsl-lambda",
            "30",
        ],
        capsys,
    )
    dsl = np_dsl(sim, 30.0, "t2v")
    ranks = (dsl >= dsl[np.arange(14), t2v][:, None]).sum(axis=1)
    assert out["t2v"]["MnR"] == pytest.approx(ranks.mean())
    assert out["postproc"] == {
        "method": "dsl",
        "inverse_temperature": 30.0,
        "scale": "cosine",
        "transductive": True,
    }
    np.save(tmp_path / "S.npy", S)
    np.save(tmp_path / "bank.npy", B)
    np.save(tmp_path / "bank_v.npy", Bv)
    out = _cli_json(
        [str(tmp_path / "S.npy"), "--postproc", "qbnorm", "--bank", str(tmp_path / "bank.npy")],
        capsys,
    )
    assert out["t2v"]["MnR"] == pytest.approx(ranks_rows(np_qb(S, B, 20.0, 1, 1)).mean())
    assert out["v2t"] is None and out["postproc"]["beta"] == 20.0
    out = _cli_json(
        [
            str(tmp_path / "S.npy"),
            "--postproc",
            "qbnorm",
            "--bank",
            str(tmp_path / "bank.npy"),
            "--bank-v2t",
            str(tmp_path / "bank_v.npy"),
        ],
        capsys,
    )
    assert out["v2t"]["MnR"] == pytest.approx(ranks_rows(np_qb(S.T, Bv.T, 20.0, 1, 1)).mean())


def test_metrics_cli_postproc_errors(tmp_path, capsys, mats):
    from tvrbench import metrics_cli

    S, B, _ = mats
    np.save(tmp_path / "S.npy", S)
    np.save(tmp_path / "bank.npy", B[:, :5])
    assert metrics_cli.main([str(tmp_path / "S.npy"), "--postproc", "qbnorm"]) == 2
    assert "needs --bank" in capsys.readouterr().err
    args = [str(tmp_path / "S.npy"), "--postproc", "qbnorm", "--bank", str(tmp_path / "bank.npy")]
    assert metrics_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "bank.npy: BANK has shape (3, 5), expected [n_bank, n_video] with 7" in err
    assert len(err.splitlines()) == 1
