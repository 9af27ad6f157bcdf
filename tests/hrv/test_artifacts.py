"""Tests of hrvstream.hrv.artifacts (Lipponen & Tarvainen 2019 artifact detection/correction)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrvstream.hrv.artifacts import (
    ARTIFACT_NAMES,
    CORRECTION_CONTEXT_BEATS,
    LOOKAHEAD_BEATS,
    LOOKBEHIND_BEATS,
    Artifact,
    CorrectedBeat,
    StreamingArtifactCorrector,
    correct_artifacts,
    detect_artifacts,
)
from tests.conftest import require

FloatArray = npt.NDArray[np.float64]

# ---------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------


def clean_rr(n: int, seed: int, noise_ms: float = 3.0) -> FloatArray:
    """RR around 800 ms: respiratory (25 ms, 4.7 beats) and Mayer-wave (15 ms, 11.3 beats)
    modulation, a slow drift, and white noise."""
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    rr: FloatArray = (
        800.0
        + 25.0 * np.sin(2 * np.pi * i / 4.7 + rng.uniform(0, 2 * np.pi))
        + 15.0 * np.sin(2 * np.pi * i / 11.3 + rng.uniform(0, 2 * np.pi))
        + 30.0 * np.sin(2 * np.pi * i / 400.0)
        + rng.normal(0.0, noise_ms, n)
    )
    return rr


def times(rr: FloatArray, start_s: float = 10.0) -> FloatArray:
    return start_s + np.cumsum(rr) / 1000.0


def test_constants_and_names() -> None:
    assert [int(a) for a in Artifact] == list(range(6))
    assert len(ARTIFACT_NAMES) == len(Artifact)
    for a in Artifact:
        assert ARTIFACT_NAMES[a] == ("" if a is Artifact.NONE else a.name.lower())
    # 91-beat quartile windows and an 11-beat median: a label needs 45 + 5 beats each way.
    assert LOOKAHEAD_BEATS >= 45 + 5
    assert LOOKBEHIND_BEATS >= 45 + 5
    assert CORRECTION_CONTEXT_BEATS == 5


def test_clean_series_false_positive_rate() -> None:
    # The paper reports 99.94 % specificity on real recordings; a faithful implementation
    # flags a few clean beats too (where respiratory and Mayer troughs add up, the doubled
    # negative mRR crosses 3). Over 40,000 clean beats we require < 0.2 % flagged (about
    # three times the paper's rate) and never a missed or extra beat, which would need an
    # interval near twice or half the local median.
    labels = np.concatenate([detect_artifacts(clean_rr(2000, seed)) for seed in range(20)])
    assert np.mean(labels != Artifact.NONE) < 0.002
    assert not np.any(np.isin(labels, [Artifact.MISSED, Artifact.EXTRA]))


def test_flat_series_has_no_artifacts() -> None:
    # Constant and one-tick (7.8 ms) quantised series: the quartile deviation is 0 and the
    # threshold floor must keep every beat normal.
    assert not np.any(detect_artifacts(np.full(500, 800.0)))
    rng = np.random.default_rng(3)
    ticks = 1000.0 / 128.0
    quantised = ticks * np.round((800.0 + rng.normal(0.0, 2.0, 3000)) / ticks)
    assert not np.any(detect_artifacts(quantised))


def inject(kind: str, rr: FloatArray, k: int, rng: np.random.Generator) -> FloatArray:
    x = rr.copy()
    if kind == "missed":  # beat k undetected: intervals k and k+1 become one
        return np.concatenate((x[:k], [x[k] + x[k + 1]], x[k + 2 :]))
    if kind == "extra":  # a spurious beat inside interval k splits it in two
        f = rng.uniform(0.25, 0.75)
        return np.concatenate((x[:k], [f * x[k], (1.0 - f) * x[k]], x[k + 1 :]))
    if kind == "ectopic_pair":  # premature beat with a full compensatory pause
        d = rng.uniform(0.2, 0.4) * x[k]
        x[k] -= d
        x[k + 1] += d
    elif kind == "premature":  # premature beat, non-compensatory pause
        p = rng.uniform(0.25, 0.4)
        x[k] *= 1.0 - p
        x[k + 1] *= 1.0 + p / 3.0
    elif kind == "long":
        x[k] *= rng.uniform(1.3, 1.6)
    elif kind == "short":
        x[k] *= rng.uniform(0.55, 0.7)
    else:
        raise AssertionError(kind)
    return x


# Label expected at the injected interval k (and at k+1 for the ectopic pair). Ectopic,
# long and short beats are corrected the same way (local median); which of them a
# displaced beat gets depends on the dRR of its neighbours (a long beat right after a fast
# respiratory acceleration sits in the middle of a negative-positive-negative dRR pattern,
# the ectopic signature), so those alternatives are accepted.
EXPECTED: dict[str, set[Artifact]] = {
    "missed": {Artifact.MISSED},
    "extra": {Artifact.EXTRA},
    "ectopic_pair": {Artifact.SHORT, Artifact.ECTOPIC},
    "premature": {Artifact.SHORT, Artifact.ECTOPIC},
    "long": {Artifact.LONG, Artifact.ECTOPIC},
    "short": {Artifact.SHORT, Artifact.ECTOPIC},
}
# An injection at k changes dRR(k) and dRR(k+1); beat j's subspaces read dRR(j-1 ... j+2),
# so beats k-2 ... k+2 may legitimately change class. Nothing farther may be flagged.
NEIGHBOURS = 2


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_injected_artifact_detected_and_corrected(kind: str) -> None:
    used = 0
    for seed in range(40):
        base = clean_rr(400, seed)
        if np.any(detect_artifacts(base)):
            continue  # only clean bases (see test_clean_series_false_positive_rate)
        used += 1
        rng = np.random.default_rng(1000 + seed)
        k = int(rng.integers(3, 395))
        rr = inject(kind, base, k, rng)
        labels = detect_artifacts(rr)
        assert Artifact(labels[k]) in EXPECTED[kind], (seed, k, labels[k - 2 : k + 3])
        if kind == "ectopic_pair":
            assert labels[k + 1] == Artifact.ECTOPIC, (seed, k, labels[k - 2 : k + 3])
        far = np.flatnonzero(labels)
        far = far[np.abs(far - k) > NEIGHBOURS]
        assert far.size == 0, (seed, k, far, labels[far])

        # Correction: as many NN intervals as clean beats; untouched beats exact; replaced
        # ones within the range of the clean intervals around them (a local median cannot
        # leave it; a missed beat's halves are the mean of two adjacent clean intervals).
        t = times(rr)
        corr = correct_artifacts(rr, t)
        np.testing.assert_array_equal(corr.labels, labels)
        assert corr.nn_ms.size == base.size
        reference = base.copy()
        if kind == "premature" and labels[k + 1] == Artifact.NONE:
            reference[k + 1] = rr[k + 1]  # a mildly long interval left alone: kept as is
        lo, hi = max(0, k - 8), k + 9
        local_range = base[lo:hi].max() - base[lo:hi].min()
        err = np.abs(corr.nn_ms - reference)
        assert err[lo:hi].max() <= local_range + 1e-9
        np.testing.assert_allclose(np.delete(err, np.arange(lo, hi)), 0.0, atol=1e-9)
        if kind in ("missed", "extra"):
            # Restored beat times: exact for the merged extra beat, within half the
            # difference of the two clean intervals for the split missed beat.
            dt_ms = np.abs(corr.nn_t_s - times(base)) * 1000.0
            assert dt_ms.max() <= local_range / 2 + 1e-6
        if kind == "extra":
            assert corr.nn_ms[k] == pytest.approx(base[k], abs=1e-9)
            assert np.isnan(corr.per_beat_nn_ms[k])
            assert corr.per_beat_nn_ms[k + 1] == corr.nn_ms[k]
        if kind == "missed":
            assert corr.nn_ms[k] == corr.nn_ms[k + 1] == pytest.approx(rr[k] / 2)
            assert corr.nn_source[k] == corr.nn_source[k + 1] == k
            assert corr.nn_t_s[k + 1] == t[k]
    assert used >= 20  # enough clean bases were found for the test to mean something


def test_run_of_extra_beats_never_chains() -> None:
    # One interval split in three: no two consecutive EXTRA labels may come out.
    rr = clean_rr(300, 5)
    rr = np.concatenate((rr[:150], [0.3 * rr[150], 0.3 * rr[150], 0.4 * rr[150]], rr[151:]))
    labels = detect_artifacts(rr)
    extra = labels == Artifact.EXTRA
    assert not np.any(extra[1:] & extra[:-1])
    assert np.all(labels[150:153] != Artifact.NONE)


# ---------------------------------------------------------------------------------------
# Correction rules
# ---------------------------------------------------------------------------------------


def test_correction_rules_with_given_labels() -> None:
    rr = np.array([800.0, 810.0, 790.0, 1600.0, 805.0, 300.0, 500.0, 795.0, 400.0, 800.0, 820.0])
    t = times(rr)
    lab = np.zeros(rr.size, dtype=np.int8)
    lab[3] = Artifact.MISSED
    lab[5] = Artifact.EXTRA
    lab[6] = Artifact.SHORT  # consumed by the merge with beat 5: its own label is ignored
    lab[8] = Artifact.ECTOPIC
    corr = correct_artifacts(rr, t, lab)
    np.testing.assert_array_equal(corr.labels, lab)
    # Clean neighbours of beat 3 within +/-5: beats 0, 1, 2, 4, 7 (6 is the tail of a
    # merged extra beat, not clean) -> median 800; k = round(1600 / 800) = 2.
    assert corr.per_beat_nn_ms[3] == 800.0
    clean_of_8 = [rr[j] for j in (4, 7, 9, 10)]  # 3, 5, 6, 8 are artifacts/merged
    assert corr.per_beat_nn_ms[8] == np.median(clean_of_8)
    assert np.isnan(corr.per_beat_nn_ms[5])
    assert corr.per_beat_nn_ms[6] == 800.0
    expected_nn = [800.0, 810.0, 790.0, 800.0, 800.0, 805.0, 800.0, 795.0]
    expected_nn += [float(np.median(clean_of_8)), 800.0, 820.0]
    np.testing.assert_array_equal(corr.nn_ms, expected_nn)
    np.testing.assert_array_equal(corr.nn_source, [0, 1, 2, 3, 3, 4, 6, 7, 8, 9, 10])
    np.testing.assert_allclose(corr.nn_t_s[3], t[3] - 0.8)
    assert corr.nn_t_s[4] == t[3]
    assert corr.nn_t_s[6] == t[6]


def test_extra_beat_last_or_before_gap_is_dropped() -> None:
    rr = np.full(12, 800.0)
    t = times(rr)
    t[6:] += 5.0  # beats lost between beat 5 and beat 6
    lab = np.zeros(12, dtype=np.int8)
    lab[5] = Artifact.EXTRA  # followed by a gap: dropped, beat 6 keeps its own value
    lab[11] = Artifact.EXTRA  # last beat: dropped
    corr = correct_artifacts(rr, t, lab)
    np.testing.assert_array_equal(corr.nn_source, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10])
    np.testing.assert_array_equal(corr.nn_ms, np.full(10, 800.0))
    assert np.isnan(corr.per_beat_nn_ms[[5, 11]]).all()


def test_missed_beat_never_fills_a_gap() -> None:
    rr = np.full(30, 800.0)
    rr[15] = 2400.0
    t = times(rr)
    t[15:] += 10.0  # a 10 s transport gap just before the missed beat
    lab = np.zeros(30, dtype=np.int8)
    lab[15] = Artifact.MISSED
    corr = correct_artifacts(rr, t, lab)
    parts = corr.nn_source == 15
    assert parts.sum() == 3  # round(2400 / 800)
    np.testing.assert_allclose(corr.nn_ms[parts], 800.0)
    np.testing.assert_allclose(corr.nn_t_s[parts], t[15] - np.array([1.6, 0.8, 0.0]))
    assert corr.nn_t_s[parts].min() > t[14] + 10.0  # inside the interval, not the gap


def test_uncorrectable_beat_contributes_nothing() -> None:
    rr = np.array([700.0, 1300.0, 600.0, 1200.0])
    lab = np.full(4, Artifact.LONG, dtype=np.int8)
    corr = correct_artifacts(rr, times(rr), lab)
    assert corr.nn_ms.size == 0
    assert np.isnan(corr.per_beat_nn_ms).all()


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        detect_artifacts(np.array([800.0, np.nan, 800.0]))
    with pytest.raises(ValueError):
        detect_artifacts(np.array([800.0, 0.0, 800.0]))
    with pytest.raises(ValueError):
        detect_artifacts(np.ones((2, 2)))
    rr = np.full(5, 800.0)
    with pytest.raises(ValueError):
        correct_artifacts(rr, times(rr)[:-1])
    lab = np.zeros(5, dtype=np.int8)
    lab[1:3] = Artifact.EXTRA
    with pytest.raises(ValueError):
        correct_artifacts(rr, times(rr), lab)
    with pytest.raises(ValueError):
        correct_artifacts(rr, times(rr), np.full(5, 9, dtype=np.int8))
    s = StreamingArtifactCorrector()
    with pytest.raises(ValueError):
        s.push(-1.0, 0.0)
    with pytest.raises(ValueError):
        s.push(800.0, float("inf"))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 10])
def test_tiny_inputs(n: int) -> None:
    rr = clean_rr(max(n, 1), 0)[:n]
    labels = detect_artifacts(rr)
    assert labels.shape == (n,)
    assert labels.dtype == np.int8
    assert_stream_matches_batch(rr, times(rr))


# ---------------------------------------------------------------------------------------
# Locality and streaming
# ---------------------------------------------------------------------------------------


def assert_labels_local(rr: FloatArray, full: npt.NDArray[np.int8], a: int, b: int) -> None:
    """Labels of rr[a:b] equal the full labels wherever the dependency range is inside."""
    part = detect_artifacts(rr[a:b])
    i = np.arange(a, b)
    ok = ((i - a >= LOOKBEHIND_BEATS) | (a == 0)) & (
        (b - 1 - i >= LOOKAHEAD_BEATS) | (b == rr.size)
    )
    np.testing.assert_array_equal(part[ok], full[a:b][ok])


def artifact_rich_series() -> FloatArray:
    rng = np.random.default_rng(11)
    rr = clean_rr(1500, 11, noise_ms=6.0)
    for k in range(40, 1400, 37):
        rr = inject(["missed", "extra", "ectopic_pair", "long", "short"][k % 5], rr, k, rng)
    return rr


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 1600), st.integers(0, 1600))
def test_locality_synthetic(a: int, b: int) -> None:
    rr = artifact_rich_series()
    a, b = sorted((min(a, rr.size), min(b, rr.size)))
    assert_labels_local(rr, detect_artifacts(rr), a, b)


def test_locality_recording(recordings: Path) -> None:
    rr, _ = load_recording(recordings, "polar_hrm/noisy_rri.hrm")
    full = detect_artifacts(rr)
    assert np.count_nonzero(full) > 20  # a recording with artifacts near many cuts
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = np.sort(rng.integers(0, rr.size + 1, 2))
        assert_labels_local(rr, full, int(a), int(b))


def stream(
    rr: FloatArray, t: FloatArray, on_push: Callable[[int, list[CorrectedBeat]], None] | None = None
) -> list[CorrectedBeat]:
    s = StreamingArtifactCorrector()
    beats: list[CorrectedBeat] = []
    for i, (r, ti) in enumerate(zip(rr.tolist(), t.tolist(), strict=True)):
        out = s.push(r, ti)
        if on_push is not None:
            on_push(i, out)
        beats.extend(out)
    beats.extend(s.close())
    assert s.close() == []
    return beats


def assert_stream_matches_batch(rr: FloatArray, t: FloatArray) -> None:
    batch = correct_artifacts(rr, t)
    beats = stream(rr, t)
    assert [b.index for b in beats] == list(range(rr.size))
    assert [b.rr_ms for b in beats] == rr.tolist()
    assert [b.t_s for b in beats] == t.tolist()
    np.testing.assert_array_equal(np.array([b.label for b in beats], dtype=np.int8), batch.labels)
    nn = np.array([p[0] for b in beats for p in b.nn], dtype=np.float64)
    nn_t = np.array([p[1] for b in beats for p in b.nn], dtype=np.float64)
    src = np.array([b.index for b in beats for _ in b.nn], dtype=np.int64)
    # Bit for bit, not approximately.
    assert nn.tobytes() == batch.nn_ms.tobytes()
    assert nn_t.tobytes() == batch.nn_t_s.tobytes()
    assert src.tobytes() == batch.nn_source.astype(np.int64).tobytes()
    for b in beats:
        value = batch.per_beat_nn_ms[b.index]
        if b.nn:
            assert all(p[0] == value for p in b.nn)
        else:
            assert np.isnan(value)


def test_stream_equals_batch_synthetic() -> None:
    rr = artifact_rich_series()
    t = times(rr)
    assert np.count_nonzero(detect_artifacts(rr)) >= 30
    assert_stream_matches_batch(rr, t)
    # With transport gaps (beats lost) in the timestamps.
    keep = np.ones(rr.size, dtype=bool)
    keep[[100, 101, 102, 500, 900, 901]] = False
    assert_stream_matches_batch(rr[keep], t[keep])


def test_stream_delay_and_memory_are_bounded() -> None:
    rr = artifact_rich_series()
    delay = LOOKAHEAD_BEATS + CORRECTION_CONTEXT_BEATS
    s = StreamingArtifactCorrector()
    sizes = set()
    for i, (r, ti) in enumerate(zip(rr.tolist(), times(rr).tolist(), strict=True)):
        out = s.push(r, ti)
        assert [b.index for b in out] == ([i - delay] if i >= delay else [])
        sizes.add(s._rr.size)  # the ring never grows
    assert len(sizes) == 1
    assert [b.index for b in s.close()] == list(range(rr.size - delay, rr.size))


# ---------------------------------------------------------------------------------------
# Shared recordings
# ---------------------------------------------------------------------------------------


def _numbers(path: Path) -> list[float]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(float(line))
        except ValueError:
            continue  # blank lines, the stray '@' of physionet_healthy/008.txt
    return out


def load_recording(root: Path, name: str) -> tuple[FloatArray, FloatArray]:
    """(rr_ms, t_s) of one shared recording; non-positive intervals dropped."""
    path = root / name
    if name.endswith("_rr_secs.txt"):  # line 1: offset of the first beat
        v = np.array(_numbers(path))
        rr, t0 = v[1:] * 1000.0, v[0]
    elif name.endswith(".hrm"):
        text = path.read_text().split("[HRData]", 1)[1]
        rr, t0 = np.array([float(x) for x in text.split()]), 0.0
    elif name.endswith("polar_h10_rr.csv"):
        rr, t0 = np.genfromtxt(path, delimiter=",", names=True)["rr_ms"], 0.0
    elif name.endswith(".tsv"):  # R-peak sample indices at 250 Hz
        s = np.array(_numbers(path))
        return np.diff(s) / 250.0 * 1000.0, s[1:] / 250.0
    elif name.endswith("100_annotations.csv"):
        samples, _ = mitdb_beats(root)
        return np.diff(samples) / 0.36, samples[1:] / 360.0
    else:  # one RR in ms per line
        rr, t0 = np.array(_numbers(path)), 0.0
    rr = rr[rr > 0]
    return rr, t0 + np.cumsum(rr) / 1000.0


BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ")


def mitdb_beats(root: Path) -> tuple[FloatArray, npt.NDArray[np.str_]]:
    """Sample index (360 Hz) and symbol of every beat annotation of MIT-BIH record 100."""
    rows = (root / "mitdb_100" / "100_annotations.csv").read_text().splitlines()[1:]
    fields = [r.split(",") for r in rows]
    beats = [(float(f[0]), f[2]) for f in fields if f[2] in BEAT_SYMBOLS]
    return np.array([b[0] for b in beats]), np.array([b[1] for b in beats])


RECORDINGS = [
    "physionet_chf2db/chf201_rr_secs.txt",
    "physionet_nsr2db/nsr001_rr_secs.txt",
    "physionet_healthy/008.txt",
    "polar_h10_pvc/polar_h10_rr.csv",
    "polar_hrm/noisy_rri.hrm",
    "polar_hrm/exercise_rri.hrm",
    "polar_hrm/rest_rri.txt",
    "polar_hrm/real_rri.txt",
    "polar_hrm/08012805.txt",
    "pyhrv_nsrdb/SampleNNISeriesLong_ms.txt",
    "pyhrv_nsrdb/SampleNNISeriesShort_ms.txt",
    "mitdb_100/100_annotations.csv",
]


@pytest.mark.parametrize("name", RECORDINGS)
def test_stream_equals_batch_recording(recordings: Path, name: str) -> None:
    rr, t = load_recording(recordings, name)
    assert rr.size > 300
    assert_stream_matches_batch(rr, t)


def test_stream_equals_batch_gudb(recordings: Path) -> None:
    files = sorted((recordings / "gudb_stress").glob("subject_*/*/annotation_*.tsv"))
    assert len(files) >= 100
    for f in files:
        rr, t = load_recording(recordings, str(f.relative_to(recordings)))
        assert_stream_matches_batch(rr, t)


def test_long_recording_labels_fast(recordings: Path) -> None:
    rr, _ = load_recording(recordings, "physionet_nsr2db/nsr001_rr_secs.txt")
    assert rr.size > 100_000
    detect_artifacts(rr)  # warm-up
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        detect_artifacts(rr)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.1  # measured ~30 ms; 22.5 h must label in well under 100 ms


# ---------------------------------------------------------------------------------------
# MIT-BIH record 100: sensitivity / false positives, against neurokit2
# ---------------------------------------------------------------------------------------


def score(flagged: npt.NDArray[np.bool_], symbols: npt.NDArray[np.str_]) -> tuple[float, float]:
    """Sensitivity to non-normal beats and false-positive rate among normal beats.

    ``flagged[i]`` refers to interval ``i``, which ends at beat ``i + 1``. A non-normal
    beat ``k`` is detected if the interval ending at it (``k - 1``) or the next one
    (``k``) is flagged. False positives: flagged intervals ending at a normal beat,
    excluding the two intervals around each non-normal beat.
    """
    n = flagged.size
    abnormal = np.flatnonzero(symbols != "N")
    abnormal = abnormal[(abnormal >= 1) & (abnormal <= n)]
    nxt = np.minimum(abnormal, n - 1)
    detected = flagged[abnormal - 1] | (flagged[nxt] & (abnormal < n))
    excluded = np.zeros(n, dtype=bool)
    excluded[abnormal - 1] = True
    excluded[abnormal[abnormal < n]] = True
    normal = (symbols[1:] == "N") & ~excluded
    return float(detected.mean()), float(flagged[normal].mean())


def neurokit_flags(samples: FloatArray, n_intervals: int) -> npt.NDArray[np.bool_]:
    """Intervals flagged by neurokit2's Kubios method (single pass).

    neurokit2 indexes artifacts by peak: its ``rr[j] = peaks[j] - peaks[j-1]`` (``rr[0]`` is
    a placeholder), so its index ``j`` is our interval ``j - 1``. ``iterative=False``:
    with ``iterative=True`` the returned indices refer to the peaks as corrected by the
    previous pass (peaks inserted, deleted and moved), which cannot be mapped back to the
    input beats; the first pass of the iterative mode is this one.
    """
    try:
        import neurokit2 as nk
    except ImportError:
        require("neurokit2")
        raise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info, _ = nk.signal_fixpeaks(
            samples.astype(np.int64),
            sampling_rate=360,
            method="kubios",
            iterative=False,
            show=False,
        )
    flagged = np.zeros(n_intervals, dtype=bool)
    for key in ("ectopic", "missed", "extra", "longshort"):
        idx = np.asarray(info[key], dtype=np.int64) - 1
        flagged[idx[(idx >= 0) & (idx < n_intervals)]] = True
    return flagged


def test_mitdb_100_against_neurokit(recordings: Path) -> None:
    samples, symbols = mitdb_beats(recordings)
    assert np.count_nonzero(symbols != "N") == 34  # 33 A + 1 V
    rr = np.diff(samples) / 0.36
    ours = detect_artifacts(rr) != Artifact.NONE
    sens, fpr = score(ours, symbols)
    nk_sens, nk_fpr = score(neurokit_flags(samples, rr.size), symbols)
    assert sens >= nk_sens
    # Slack: our classifier tests every beat (neurokit2's loop skips some) and applies
    # |mRR| > 3 on its own; both can only add flags. We allow that to cost at most two
    # more false positives among the ~2,200 normal beats (0.1 percentage point).
    assert fpr <= nk_fpr + 0.001
    # Measured: sensitivity 34/34 = 1.0, false-positive rate 11/2204 = 0.50 % (neurokit2
    # the same). Floors below that, to catch regressions without pinning the exact count:
    # at most one of the 34 premature beats missed, and < 1 % false positives (the paper
    # reports 96.96 % sensitivity and 99.94 % specificity on real ectopic beats).
    assert sens >= 0.97
    assert fpr < 0.01


def test_mitdb_100_labels_premature_beats(recordings: Path) -> None:
    # A premature beat shortens the interval ending at it and lengthens the next
    # (compensatory pause): a negative-positive-negative dRR pattern centred on the
    # long interval, which must be classed ectopic in most cases.
    samples, symbols = mitdb_beats(recordings)
    labels = detect_artifacts(np.diff(samples) / 0.36)
    k = np.flatnonzero(symbols != "N")
    k = k[(k >= 1) & (k < labels.size)]
    assert np.mean(labels[k] == Artifact.ECTOPIC) > 0.8
    assert np.all(labels[k - 1] != Artifact.NONE)
