"""Realistic simulated RR-interval sessions: the data hrvstream owns.

Tests, the demo and the load tests need RR series with known properties: a known mean
heart rate, known spectral peaks, a stress episode at a known time, artifacts at known
beats. :func:`simulate_session` makes them, deterministically from a seed, with the ground
truth alongside.

Model
-----
The simulator builds a continuous *RR tachogram* ``RR(t)`` in milliseconds on a uniform
4 Hz grid and turns it into beats with an integral pulse frequency modulation (IPFM)
model: the instantaneous rate ``1000 / RR(t)`` (beats per second) is integrated, and a
beat fires each time the integral crosses an integer (Bayly 1968; Mateo & Laguna 2000).
Interval ``i`` is therefore the time between two such crossings, which is what an ideal
R-peak detector would report. ``RR(t)`` is the sum of:

* **Mean level.** ``60000 / HR(t)`` where ``HR(t)`` is ``mean_hr_bpm`` plus a linear
  trend (``hr_trend_bpm_per_h``, centred on the middle of the session so that
  ``mean_hr_bpm`` stays the session mean), an optional 24 h cosine circadian rhythm
  (``circadian_amplitude_bpm``, highest at 16:00, lowest at 04:00 clock time), the
  heart-rate rise of stress episodes and the exercise response.
* **HF respiratory sinus arrhythmia** and **LF Mayer waves.** Each is a narrow-band
  Gaussian process with a Gaussian spectral peak (standard deviation 0.01 Hz) at the
  respiration rate (``resp_rate_hz``, about 0.25 Hz) or the Mayer-wave frequency
  (``lf_freq_hz``, about 0.1 Hz). This is the bimodal spectrum of the ECGSYN RR model
  (McSharry et al. 2003), generated like ECGSYN by an inverse FFT of a spectrum with
  random phases, except that the peak is built at baseband and shifted by a running
  phase ``2 pi int f(t) dt``, so that the respiration rate can change (it rises during
  exercise). The amplitudes are those of an equivalent sinusoid: the component's RMS is
  ``amplitude / sqrt(2)``; a time-varying gain scales it (vagal withdrawal). Because a
  beat interval averages ``RR(t)`` over itself, which scales an oscillation of frequency
  ``f`` by ``sinc(f * RR)``, the gain also undoes that factor: the amplitudes are those
  seen in the intervals.
* **VLF noise.** Gaussian noise with a ``1/f`` power spectrum between 1/300 Hz and
  0.04 Hz (flat below, rolling off above; Kobayashi & Musha 1982), RMS
  ``vlf_amplitude_ms``.
* **Beat jitter.** White Gaussian noise (SD ``jitter_ms``) added to each interval: the
  beat-to-beat variation no oscillator explains, plus R-peak timing error.

The tachogram is clipped to the physiological range 300..2000 ms (200..30 bpm), and so
are the final clean intervals.

Stress episodes (:class:`StressEpisode`) follow the acute mental-stress picture of the
HRV literature (Castaldo et al. 2015): heart rate rises by ``hr_increase_bpm``, the
vagally mediated HF component is scaled by ``hf_scale`` (so RMSSD falls) and the LF
component by ``lf_scale`` (so LF/HF rises). The effects fade in with a smoothstep over
the first ``ramp_s`` seconds of the episode and fade out over its last ``ramp_s``
seconds (``ramp_s`` is capped at half the duration), so the episode's window
``[start_s, start_s + duration_s)`` is exactly where it has any effect.

Exercise bouts (:class:`ExerciseBout`) drive an intensity ``0..1``: a fast on-kinetics
(time constant 40 s) to 75 % of the heart-rate reserve between ``mean_hr_bpm`` and
``peak_hr_bpm``, then a steady linear rise (cardiovascular drift) to ``peak_hr_bpm`` at
the end, then an exponential heart-rate recovery (time constant 120 s; Imai et al.
1994). With intensity the HF gain falls to 10 %, the LF gain to 20 % and the VLF gain to
50 % of rest, and the respiration rate rises towards 0.5 Hz (Michael et al. 2017).

Artifacts (:class:`ArtifactSpec`) are injected into a copy of the clean NN series,
keeping the total time (and so every unaffected beat time) unchanged, in the three
classes of Lipponen & Tarvainen (2019):

* **ectopic** (code 1): a premature beat. Clean intervals ``c[i], c[i+1]`` become a short
  interval ``p * c[i]`` (prematurity ``p`` uniform in 0.55..0.80) followed by a fully
  compensatory long one ``c[i] + c[i+1] - p * c[i]``. Both intervals are labelled.
* **missed** (code 2): a beat the detector missed. ``c[i], c[i+1]`` merge into one interval
  ``c[i] + c[i+1]``, labelled once.
* **extra** (code 3): a false detection (a T wave, noise). ``c[i]`` splits into ``q * c[i]``
  and ``(1 - q) * c[i]`` (``q`` uniform in 0.25..0.75). Both parts are labelled.

The codes are those of ``hrvstream.hrv.artifacts.Artifact`` (NONE=0, ECTOPIC=1, MISSED=2,
EXTRA=3). Each clean interval starts an artifact of each kind with the configured
per-beat probability; artifacts may also be placed at given times. Artifacts never
overlap: a random one that would touch an interval already used is dropped, so the
realised rate is slightly below the configured one when the rates are high.

Every random part draws from its own child generator of ``np.random.default_rng(seed)``,
so for instance switching artifacts on does not change the clean series.

References
----------
Bayly EJ (1968). Spectral analysis of pulse frequency modulation in the nervous system.
IEEE Trans Biomed Eng 15(4):257-265.

Castaldo R, Melillo P, Bracale U, Caserta M, Triassi M, Pecchia L (2015). Acute mental
stress assessment via short term HRV analysis in healthy adults: a systematic review
with meta-analysis. Biomed Signal Process Control 18:370-377.

Imai K, Sato H, Hori M, et al. (1994). Vagally mediated heart rate recovery after
exercise is accelerated in athletes but blunted in patients with chronic heart failure.
J Am Coll Cardiol 24(6):1529-1535.

Kobayashi M, Musha T (1982). 1/f fluctuation of heartbeat period. IEEE Trans Biomed Eng
29(6):456-457.

Lipponen JA, Tarvainen MP (2019). A robust algorithm for heart rate variability time
series artefact correction using novel beat classification. J Med Eng Technol
43(3):173-181.

Mateo J, Laguna P (2000). Improved heart rate variability signal analysis from the beat
occurrence times according to the IPFM model. IEEE Trans Biomed Eng 47(8):985-996.

McSharry PE, Clifford GD, Tarassenko L, Smith LA (2003). A dynamical model for
generating synthetic electrocardiogram signals. IEEE Trans Biomed Eng 50(3):289-294.

Michael S, Graham KS, Davis GM (2017). Cardiac autonomic responses during exercise and
post-exercise recovery using heart rate variability and systolic time intervals: a
review. Front Physiol 8:301.

Task Force of the ESC and NASPE (1996). Heart rate variability: standards of
measurement, physiological interpretation and clinical use. Circulation 93:1043-1065.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hrvstream.errors import ConfigError
from hrvstream.recordings.model import FloatArray, RRSeries

__all__ = [
    "DEFAULT_STRESS_DURATION_S",
    "RR_MAX_MS",
    "RR_MIN_MS",
    "TRUTH_ECTOPIC",
    "TRUTH_EXTRA",
    "TRUTH_MISSED",
    "TRUTH_NONE",
    "ArtifactSpec",
    "ExerciseBout",
    "SessionConfig",
    "SimulatedSession",
    "StressEpisode",
    "parse_duration_s",
    "parse_stress_spec",
    "simulate_session",
    "write_rr_file",
]

#: Ground-truth codes (the values of ``hrvstream.hrv.artifacts.Artifact``).
TRUTH_NONE = 0
TRUTH_ECTOPIC = 1
TRUTH_MISSED = 2
TRUTH_EXTRA = 3

#: Physiological bounds of a clean interval, in milliseconds (200 and 30 bpm).
RR_MIN_MS = 300.0
RR_MAX_MS = 2000.0

#: Duration of a stress episode given as ``START`` alone to :func:`parse_stress_spec`.
DEFAULT_STRESS_DURATION_S = 600.0

_GRID_HZ = 4.0  # sampling rate of the continuous tachogram
_PEAK_SD_HZ = 0.01  # width (SD) of the LF and HF spectral peaks, as in ECGSYN
_VLF_LOW_HZ = 1.0 / 300.0  # 1/f below this would be ULF: flat instead
_VLF_HIGH_HZ = 0.04  # upper edge of the VLF band (Task Force 1996)
_EXERCISE_ON_TAU_S = 40.0
_EXERCISE_OFF_TAU_S = 120.0
_EXERCISE_PLATEAU = 0.75  # fraction of the HR reserve reached after the on-kinetics
_EXERCISE_RESP_HZ = 0.5  # respiration rate approached at peak intensity
_EXERCISE_GAIN_DROP = (0.9, 0.8, 0.5)  # HF, LF, VLF gain lost at full intensity
_ECTOPIC_PREMATURITY = (0.55, 0.80)
_EXTRA_SPLIT = (0.25, 0.75)
_MAX_HR_BPM = 60000.0 / RR_MIN_MS
_MIN_HR_BPM = 60000.0 / RR_MAX_MS


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


@dataclass(frozen=True, slots=True)
class StressEpisode:
    """A scripted acute stress episode.

    Attributes
    ----------
    start_s:
        Start of the episode, in seconds from the first beat.
    duration_s:
        Length of the episode, in seconds; it has no effect outside
        ``[start_s, start_s + duration_s)``.
    ramp_s:
        Fade-in time at the start and fade-out time at the end, in seconds (capped at
        half the duration).
    hr_increase_bpm:
        Heart-rate rise at full effect, in beats per minute.
    hf_scale:
        Gain of the HF (respiratory, vagal) component at full effect; below 1 lowers
        RMSSD.
    lf_scale:
        Gain of the LF (Mayer-wave) component at full effect.
    """

    start_s: float
    duration_s: float
    ramp_s: float = 60.0
    hr_increase_bpm: float = 15.0
    hf_scale: float = 0.35
    lf_scale: float = 1.3

    def __post_init__(self) -> None:
        _check(
            _finite(
                self.start_s,
                self.duration_s,
                self.ramp_s,
                self.hr_increase_bpm,
                self.hf_scale,
                self.lf_scale,
            ),
            f"stress episode values must be finite numbers: {self!r}",
        )
        _check(self.start_s >= 0, f"stress episode start must be >= 0 s, got {self.start_s}")
        _check(self.duration_s > 0, f"stress episode duration must be > 0 s, got {self.duration_s}")
        _check(self.ramp_s >= 0, f"stress episode ramp must be >= 0 s, got {self.ramp_s}")
        _check(
            self.hf_scale >= 0 and self.lf_scale >= 0,
            f"stress episode hf_scale and lf_scale must be >= 0, got "
            f"{self.hf_scale} and {self.lf_scale}",
        )

    @property
    def end_s(self) -> float:
        """End of the episode, in seconds."""
        return self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class ExerciseBout:
    """A scripted bout of exercise: high, steadily rising heart rate and little HRV.

    Attributes
    ----------
    start_s:
        Start of the bout, in seconds from the first beat.
    duration_s:
        Length of the bout, in seconds. Heart rate recovers after it ends.
    peak_hr_bpm:
        Heart rate reached at the end of the bout, in beats per minute (at most 200).
    """

    start_s: float
    duration_s: float
    peak_hr_bpm: float = 140.0

    def __post_init__(self) -> None:
        _check(
            _finite(self.start_s, self.duration_s, self.peak_hr_bpm),
            f"exercise bout values must be finite numbers: {self!r}",
        )
        _check(self.start_s >= 0, f"exercise bout start must be >= 0 s, got {self.start_s}")
        _check(self.duration_s > 0, f"exercise bout duration must be > 0 s, got {self.duration_s}")
        _check(
            self.peak_hr_bpm <= _MAX_HR_BPM,
            f"exercise peak heart rate must be <= {_MAX_HR_BPM:g} bpm, got {self.peak_hr_bpm}",
        )

    @property
    def end_s(self) -> float:
        """End of the bout, in seconds."""
        return self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class ArtifactSpec:
    """Which artifacts to inject into the clean series.

    Attributes
    ----------
    ectopic_rate, missed_rate, extra_rate:
        Probability that a clean interval starts an artifact of that kind (per beat).
        Each must be in ``[0, 1]`` and their sum at most 1.
    ectopic_at_s, missed_at_s, extra_at_s:
        Times (seconds) at which to place an artifact of that kind for certain: it
        starts at the first clean interval ending at or after the time. Scheduled
        artifacts must not overlap one another.
    """

    ectopic_rate: float = 0.0
    missed_rate: float = 0.0
    extra_rate: float = 0.0
    ectopic_at_s: tuple[float, ...] = ()
    missed_at_s: tuple[float, ...] = ()
    extra_at_s: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        rates = (self.ectopic_rate, self.missed_rate, self.extra_rate)
        _check(
            all(math.isfinite(r) and 0.0 <= r <= 1.0 for r in rates),
            f"artifact rates must be probabilities in [0, 1], got {rates}",
        )
        _check(sum(rates) <= 1.0, f"artifact rates must sum to at most 1, got {sum(rates):g}")
        for times in (self.ectopic_at_s, self.missed_at_s, self.extra_at_s):
            _check(
                all(math.isfinite(t) and t >= 0 for t in times),
                f"artifact times must be finite and >= 0 s, got {times}",
            )

    @property
    def enabled(self) -> bool:
        """Whether any artifact is configured."""
        return bool(
            self.ectopic_rate
            or self.missed_rate
            or self.extra_rate
            or self.ectopic_at_s
            or self.missed_at_s
            or self.extra_at_s
        )


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Everything :func:`simulate_session` needs; the defaults are a calm adult at rest.

    Attributes
    ----------
    duration_s:
        Session length in seconds; the series covers at least this long.
    seed:
        Seed of ``np.random.default_rng``; same seed and config, same session.
    mean_hr_bpm:
        Resting heart rate, the session mean without episodes (30..200 bpm).
    hr_trend_bpm_per_h:
        Linear heart-rate drift, centred on the middle of the session.
    circadian_amplitude_bpm:
        Amplitude of a 24 h cosine heart-rate rhythm (highest at 16:00 clock time).
    start_clock_h:
        Clock time of the first beat, in hours (only used by the circadian rhythm).
    resp_rate_hz:
        Respiration rate, the centre of the HF peak.
    hf_amplitude_ms:
        Amplitude of the respiratory (HF) RR modulation, as an equivalent sinusoid.
    lf_freq_hz:
        Mayer-wave frequency, the centre of the LF peak.
    lf_amplitude_ms:
        Amplitude of the Mayer-wave (LF) RR modulation, as an equivalent sinusoid.
    vlf_amplitude_ms:
        RMS of the 1/f VLF noise.
    jitter_ms:
        SD of the white beat-to-beat noise.
    stress:
        Scripted stress episodes.
    exercise:
        Scripted exercise bouts.
    artifacts:
        Artifacts to inject into the reported series.
    """

    duration_s: float = 600.0
    seed: int = 0
    mean_hr_bpm: float = 65.0
    hr_trend_bpm_per_h: float = 0.0
    resp_rate_hz: float = 0.25
    hf_amplitude_ms: float = 25.0
    lf_freq_hz: float = 0.1
    lf_amplitude_ms: float = 20.0
    vlf_amplitude_ms: float = 10.0
    jitter_ms: float = 3.0
    stress: tuple[StressEpisode, ...] = ()
    exercise: tuple[ExerciseBout, ...] = ()
    artifacts: ArtifactSpec = field(default_factory=ArtifactSpec)
    circadian_amplitude_bpm: float = 0.0
    start_clock_h: float = 8.0

    def __post_init__(self) -> None:
        numbers = (
            self.duration_s,
            self.mean_hr_bpm,
            self.hr_trend_bpm_per_h,
            self.resp_rate_hz,
            self.hf_amplitude_ms,
            self.lf_freq_hz,
            self.lf_amplitude_ms,
            self.vlf_amplitude_ms,
            self.jitter_ms,
            self.circadian_amplitude_bpm,
            self.start_clock_h,
        )
        _check(_finite(*numbers), f"session values must be finite numbers: {self!r}")
        _check(self.duration_s > 0, f"session duration must be > 0 s, got {self.duration_s}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(
            _MIN_HR_BPM <= self.mean_hr_bpm <= _MAX_HR_BPM,
            f"mean heart rate must be within {_MIN_HR_BPM:g}..{_MAX_HR_BPM:g} bpm, "
            f"got {self.mean_hr_bpm}",
        )
        nyquist_hz = self.mean_hr_bpm / 120.0  # half the beat rate
        for name, freq in (("respiration", self.resp_rate_hz), ("LF", self.lf_freq_hz)):
            _check(
                0 < freq < nyquist_hz,
                f"{name} frequency must be > 0 and below half the beat rate "
                f"({nyquist_hz:.3g} Hz), got {freq}",
            )
        amplitudes = (
            self.hf_amplitude_ms,
            self.lf_amplitude_ms,
            self.vlf_amplitude_ms,
            self.jitter_ms,
            self.circadian_amplitude_bpm,
        )
        _check(
            all(a >= 0 for a in amplitudes),
            f"amplitudes must be >= 0, got {amplitudes}",
        )
        for bout in self.exercise:
            _check(
                bout.peak_hr_bpm > self.mean_hr_bpm,
                f"exercise peak heart rate ({bout.peak_hr_bpm} bpm) must exceed the "
                f"resting heart rate ({self.mean_hr_bpm} bpm)",
            )


@dataclass(frozen=True, slots=True)
class SimulatedSession:
    """A simulated session and its ground truth.

    Attributes
    ----------
    series:
        What a strap would report (artifacts included); ``format="simulated"``,
        ``source="<simulated seed=N>"``, gap-free (``t_s == cumsum(rr_ms) / 1000``).
    clean_rr_ms:
        The true NN intervals before artifacts were injected.
    truth:
        Per interval of ``series``: 0 none, 1 ectopic, 2 missed, 3 extra.
    stressed:
        Per interval of ``series``: its ending beat lies inside a stress episode.
    exercising:
        Per interval of ``series``: its ending beat lies inside an exercise bout (the
        recovery afterwards is not included).
    config:
        The configuration the session was made from.
    """

    series: RRSeries
    clean_rr_ms: FloatArray
    truth: npt.NDArray[np.int8]
    stressed: npt.NDArray[np.bool_]
    exercising: npt.NDArray[np.bool_]
    config: SessionConfig


# --------------------------------------------------------------------------- model


def _smoothstep(x: FloatArray) -> FloatArray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _stress_weight(t: FloatArray, episode: StressEpisode) -> FloatArray:
    """Effect of one episode, 0..1: smooth fade-in and fade-out inside its window."""
    ramp = min(episode.ramp_s, episode.duration_s / 2.0)
    inside = (t >= episode.start_s) & (t < episode.end_s)
    if ramp <= 0:
        return inside.astype(np.float64)
    rise = _smoothstep((t - episode.start_s) / ramp)
    fall = _smoothstep((episode.end_s - t) / ramp)
    return np.where(inside, np.minimum(rise, fall), 0.0)


def _exercise_intensity(t: FloatArray, bout: ExerciseBout) -> FloatArray:
    """Intensity 0..1 (fraction of the heart-rate reserve) of one bout, recovery included."""
    since = t - bout.start_s
    on = 1.0 - np.exp(-np.maximum(since, 0.0) / _EXERCISE_ON_TAU_S)
    drift = _EXERCISE_PLATEAU + (1.0 - _EXERCISE_PLATEAU) * np.clip(
        since / bout.duration_s, 0.0, 1.0
    )
    during = on * drift
    end_level = 1.0 - math.exp(-bout.duration_s / _EXERCISE_ON_TAU_S)
    after = end_level * np.exp(-np.maximum(t - bout.end_s, 0.0) / _EXERCISE_OFF_TAU_S)
    return np.where(since < 0, 0.0, np.where(t < bout.end_s, during, after))


def _narrowband(rng: np.random.Generator, freq_hz: FloatArray, n: int, n_fft: int) -> FloatArray:
    """Unit narrow-band process: Gaussian peak (SD 0.01 Hz) following ``freq_hz``.

    A circular complex Gaussian baseband process with a Gaussian spectrum is made by an
    inverse FFT of white noise shaped by the spectrum (random phases, as in ECGSYN), then
    shifted to the running phase ``2 pi int f dt``. The real part has mean square 1/2,
    like a unit sinusoid.
    """
    f = np.fft.fftfreq(n_fft, d=1.0 / _GRID_HZ)
    shape = np.exp(-0.25 * (f / _PEAK_SD_HZ) ** 2)  # sqrt of the Gaussian spectrum
    white = rng.standard_normal(n_fft) + 1j * rng.standard_normal(n_fft)
    z = np.fft.ifft(white * shape)[:n]
    z /= np.sqrt(np.mean(np.abs(z) ** 2))
    phase = 2.0 * np.pi * np.cumsum(freq_hz) / _GRID_HZ
    return np.real(z * np.exp(1j * phase))


def _vlf_noise(rng: np.random.Generator, n: int, n_fft: int) -> FloatArray:
    """Zero-mean unit-RMS noise with a 1/f spectrum in the VLF band."""
    f = np.fft.rfftfreq(n_fft, d=1.0 / _GRID_HZ)
    power = 1.0 / np.maximum(f, _VLF_LOW_HZ) / (1.0 + (f / _VLF_HIGH_HZ) ** 4)
    power[0] = 0.0
    white = rng.standard_normal(f.size) + 1j * rng.standard_normal(f.size)
    x = np.fft.irfft(white * np.sqrt(power), n_fft)[:n]
    x -= x.mean()
    sd = float(x.std())
    return x / sd if sd > 0 else x


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent generators (HF, LF, VLF, jitter, artifacts) of ``default_rng(seed)``."""
    return np.random.default_rng(seed).spawn(5)


def _clean_series(config: SessionConfig, margin_s: float) -> FloatArray:
    """Clean NN intervals (ms) from the IPFM model, covering ``duration_s + margin_s``."""
    hf_rng, lf_rng, vlf_rng, jitter_rng, _ = _streams(config.seed)
    n = math.ceil((config.duration_s + margin_s) * _GRID_HZ) + 1
    n_fft = 1 << (n - 1).bit_length()
    t = np.arange(n, dtype=np.float64) / _GRID_HZ

    hr = np.full(n, config.mean_hr_bpm, dtype=np.float64)
    hr += config.hr_trend_bpm_per_h * (t - config.duration_s / 2.0) / 3600.0
    if config.circadian_amplitude_bpm:
        clock_h = config.start_clock_h + t / 3600.0
        hr += config.circadian_amplitude_bpm * np.cos(2.0 * np.pi * (clock_h - 16.0) / 24.0)
    hf_gain = np.ones(n)
    lf_gain = np.ones(n)
    vlf_gain = np.ones(n)
    for episode in config.stress:
        w = _stress_weight(t, episode)
        hr += w * episode.hr_increase_bpm
        hf_gain *= 1.0 + w * (episode.hf_scale - 1.0)
        lf_gain *= 1.0 + w * (episode.lf_scale - 1.0)
    resp_hz = np.full(n, config.resp_rate_hz, dtype=np.float64)
    if config.exercise:
        intensity = np.max([_exercise_intensity(t, b) for b in config.exercise], axis=0)
        reserve = np.max([b.peak_hr_bpm for b in config.exercise]) - config.mean_hr_bpm
        hr += intensity * reserve
        hf_drop, lf_drop, vlf_drop = _EXERCISE_GAIN_DROP
        hf_gain *= 1.0 - hf_drop * intensity
        lf_gain *= 1.0 - lf_drop * intensity
        vlf_gain *= 1.0 - vlf_drop * intensity
        resp_hz += intensity * max(_EXERCISE_RESP_HZ - config.resp_rate_hz, 0.0)
    hr = np.clip(hr, _MIN_HR_BPM, _MAX_HR_BPM)

    rr = 60000.0 / hr
    # A beat interval averages RR(t) over itself, which scales an oscillation of
    # frequency f by sinc(f * RR); undo that so the amplitudes are those seen in the
    # reported intervals.
    if config.hf_amplitude_ms:
        hf = _narrowband(hf_rng, resp_hz, n, n_fft)
        hf_gain /= np.sinc(resp_hz * rr / 1000.0)
        rr += config.hf_amplitude_ms * hf_gain * hf
    if config.lf_amplitude_ms:
        lf = _narrowband(lf_rng, np.full(n, config.lf_freq_hz, dtype=np.float64), n, n_fft)
        lf_gain /= np.sinc(config.lf_freq_hz * rr / 1000.0)
        rr += config.lf_amplitude_ms * lf_gain * lf
    if config.vlf_amplitude_ms:
        rr += config.vlf_amplitude_ms * vlf_gain * _vlf_noise(vlf_rng, n, n_fft)
    rr = np.clip(rr, RR_MIN_MS, RR_MAX_MS)

    # IPFM: a beat each time the integrated rate (beats) crosses an integer.
    rate = 1000.0 / rr
    beats = np.empty(n)
    beats[0] = 0.0
    np.cumsum((rate[1:] + rate[:-1]) / (2.0 * _GRID_HZ), out=beats[1:])
    n_beats = int(beats[-1])
    beat_t = np.interp(np.arange(n_beats + 1, dtype=np.float64), beats, t)
    clean = np.diff(beat_t) * 1000.0
    if config.jitter_ms:
        clean += jitter_rng.normal(0.0, config.jitter_ms, clean.size)
    return np.clip(clean, RR_MIN_MS, RR_MAX_MS)


# ---------------------------------------------------------------------- artifacts


_SPAN = {TRUTH_ECTOPIC: 2, TRUTH_MISSED: 2, TRUTH_EXTRA: 1}


def _place_artifacts(
    spec: ArtifactSpec, clean: FloatArray, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Choose non-overlapping ``(first clean index, kind)`` artifact events."""
    n = clean.size
    used = np.zeros(n + 1, dtype=bool)
    events: list[tuple[int, int]] = []
    ends_s = np.cumsum(clean) / 1000.0
    scheduled = [
        (t, kind)
        for kind, times in (
            (TRUTH_ECTOPIC, spec.ectopic_at_s),
            (TRUTH_MISSED, spec.missed_at_s),
            (TRUTH_EXTRA, spec.extra_at_s),
        )
        for t in times
    ]
    for t, kind in sorted(scheduled):
        if t > ends_s[-1]:
            raise ConfigError(
                f"a scheduled artifact at {t:g} s is after the end of the session "
                f"({ends_s[-1]:.1f} s)"
            )
        i = min(int(np.searchsorted(ends_s, t)), n - _SPAN[kind])
        if i < 0:
            raise ConfigError("the session is too short for the scheduled artifacts")
        if used[i : i + _SPAN[kind]].any():
            raise ConfigError(
                f"scheduled artifacts overlap near {t:g} s; space them at least two beats apart"
            )
        used[i : i + _SPAN[kind]] = True
        events.append((i, kind))

    u = rng.random(n)
    bounds = np.cumsum([spec.ectopic_rate, spec.missed_rate, spec.extra_rate])
    kinds = np.searchsorted(bounds, u, side="right") + 1  # 1..3, 4 = no artifact
    for i in np.flatnonzero(kinds <= TRUTH_EXTRA).tolist():
        kind = int(kinds[i])
        span = _SPAN[kind]
        if i + span > n or used[i : i + span].any():
            continue
        used[i : i + span] = True
        events.append((i, kind))
    events.sort()
    return events


def _inject(
    clean: FloatArray, events: list[tuple[int, int]], rng: np.random.Generator
) -> tuple[FloatArray, npt.NDArray[np.int8]]:
    """Apply artifact events to ``clean``; return the observed intervals and labels."""
    idx = np.array([e[0] for e in events], dtype=np.intp)
    kind = np.array([e[1] for e in events], dtype=np.int8)
    ect = idx[kind == TRUTH_ECTOPIC]
    mis = idx[kind == TRUTH_MISSED]
    ext = idx[kind == TRUTH_EXTRA]

    values = clean.copy()
    labels = np.zeros(clean.size, dtype=np.int8)
    short = clean[ect] * rng.uniform(*_ECTOPIC_PREMATURITY, ect.size)
    values[ect + 1] = clean[ect] + clean[ect + 1] - short
    values[ect] = short
    labels[ect] = labels[ect + 1] = TRUTH_ECTOPIC
    values[mis] = clean[mis] + clean[mis + 1]
    labels[mis] = TRUTH_MISSED
    labels[ext] = TRUTH_EXTRA

    counts = np.ones(clean.size, dtype=np.intp)
    counts[mis + 1] = 0
    counts[ext] = 2
    src = np.repeat(np.arange(clean.size), counts)
    rr = values[src]
    truth = labels[src]
    first = np.cumsum(counts) - counts  # output position of each clean interval
    split = rng.uniform(*_EXTRA_SPLIT, ext.size)
    rr[first[ext]] = clean[ext] * split
    rr[first[ext] + 1] = clean[ext] - rr[first[ext]]
    return rr, truth


# ---------------------------------------------------------------------------- API


def simulate_session(config: SessionConfig) -> SimulatedSession:
    """Simulate an RR-interval session (see the module docstring for the model).

    Parameters
    ----------
    config:
        What to simulate.

    Returns
    -------
    SimulatedSession
        The reported series (with artifacts), the clean NN series and the ground truth.
        The series starts with a beat at ``t = 0`` and its last beat is the first one at
        or after ``config.duration_s``.

    Raises
    ------
    ConfigError
        If scheduled artifacts overlap or fall after the end of the session.

    Examples
    --------
    >>> s = simulate_session(SessionConfig(duration_s=60.0, seed=1))
    >>> s.series.duration_s >= 60.0
    True
    """
    margin_s = 30.0
    while True:
        clean = _clean_series(config, margin_s)
        ends_s = np.cumsum(clean) / 1000.0
        last = int(np.searchsorted(ends_s, config.duration_s))
        if last < clean.size:  # covered (jitter can make the sum drift a little)
            clean = clean[: last + 1]
            break
        margin_s *= 4.0

    artifact_rng = _streams(config.seed)[4]
    if config.artifacts.enabled:
        events = _place_artifacts(config.artifacts, clean, artifact_rng)
        rr, truth = _inject(clean, events, artifact_rng)
    else:
        rr, truth = clean.copy(), np.zeros(clean.size, dtype=np.int8)

    notes = [
        f"simulated: {config.duration_s:g} s at {config.mean_hr_bpm:g} bpm, "
        f"{len(config.stress)} stress episode(s), {len(config.exercise)} exercise bout(s)"
    ]
    n_artifacts = int(np.count_nonzero(truth))
    if n_artifacts:
        notes.append(f"simulated: {n_artifacts} intervals carry injected artifacts")
    series = RRSeries.from_rr(
        rr, source=f"<simulated seed={config.seed}>", format="simulated", notes=tuple(notes)
    )
    stressed = np.zeros(len(series), dtype=np.bool_)
    for episode in config.stress:
        stressed |= (series.t_s >= episode.start_s) & (series.t_s < episode.end_s)
    exercising = np.zeros(len(series), dtype=np.bool_)
    for bout in config.exercise:
        exercising |= (series.t_s >= bout.start_s) & (series.t_s < bout.end_s)
    return SimulatedSession(
        series=series,
        clean_rr_ms=clean,
        truth=truth,
        stressed=stressed,
        exercising=exercising,
        config=config,
    )


def write_rr_file(series: RRSeries, path: Path, *, decimals: int = 3) -> None:
    """Write one RR interval (ms) per line, LF line endings, no header.

    Beat times are not written: a reader rebuilds them as the cumulative sum, so gaps in
    ``series.t_s`` are lost.

    Parameters
    ----------
    series:
        The intervals to write.
    path:
        The file to create or overwrite.
    decimals:
        Digits after the decimal point (0 writes whole milliseconds).

    Raises
    ------
    ConfigError
        If ``decimals`` is negative.
    """
    if decimals < 0:
        raise ConfigError(f"decimals must be >= 0, got {decimals}")
    with Path(path).open("w", encoding="ascii", newline="\n") as fh:
        np.savetxt(fh, series.rr_ms, fmt=f"%.{decimals}f", newline="\n")


_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"(?:{_NUMBER}[hms])+|{_NUMBER}")
_PIECE = re.compile(rf"({_NUMBER})([hms])")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration_s(text: str, *, what: str = "duration") -> float:
    """Parse a duration such as ``"90"``, ``"90s"``, ``"20m"``, ``"1.5h"`` or ``"1h30m"``.

    Parameters
    ----------
    text:
        A non-negative number with an optional ``s``, ``m`` or ``h`` suffix (no suffix
        means seconds), or several suffixed numbers in ``h``, ``m``, ``s`` order.
    what:
        What the value is, for the error message.

    Returns
    -------
    float
        The duration in seconds.

    Raises
    ------
    ConfigError
        If ``text`` is not such a duration.
    """
    s = text.strip().lower()
    bad = ConfigError(
        f"invalid {what} {text!r}: expected a number of seconds or a number with an "
        "s/m/h suffix, e.g. '90', '90s', '20m', '1.5h' or '1h30m'"
    )
    if not _DURATION.fullmatch(s):
        raise bad
    pieces = _PIECE.findall(s)
    if not pieces:
        return float(s)
    units = [unit for _, unit in pieces]
    if units != sorted(set(units), key="hms".index):
        raise bad
    return sum(float(value) * _UNIT_S[unit] for value, unit in pieces)


def parse_stress_spec(text: str) -> StressEpisode:
    """Parse the CLI's ``--stress START[:DURATION]``, e.g. ``"20m:10m"``.

    Parameters
    ----------
    text:
        Start and optional duration, each as accepted by :func:`parse_duration_s`.
        Without a duration the episode lasts :data:`DEFAULT_STRESS_DURATION_S`.

    Returns
    -------
    StressEpisode
        An episode with the default ramp and effect sizes.

    Raises
    ------
    ConfigError
        If the text is malformed or the duration is zero.

    Examples
    --------
    >>> parse_stress_spec("20m:10m")
    StressEpisode(start_s=1200.0, duration_s=600.0, ramp_s=60.0, hr_increase_bpm=15.0, \
hf_scale=0.35, lf_scale=1.3)
    """
    usage = (
        "expected START[:DURATION], each a number of seconds or a number with an s/m/h "
        "suffix, e.g. '20m:10m', '90:120' or '1h30m'"
    )
    parts = text.split(":")
    if len(parts) > 2:
        raise ConfigError(f"invalid stress episode {text!r}: {usage}")
    values: list[float] = []
    for name, part in zip(("start", "duration"), parts, strict=False):
        try:
            values.append(parse_duration_s(part))
        except ConfigError:
            raise ConfigError(
                f"invalid stress episode {text!r}: the {name} {part.strip()!r} is not a "
                f"duration; {usage}"
            ) from None
    if len(values) == 1:
        return StressEpisode(start_s=values[0], duration_s=DEFAULT_STRESS_DURATION_S)
    if values[1] <= 0:
        raise ConfigError(f"invalid stress episode {text!r}: the duration must be > 0")
    return StressEpisode(start_s=values[0], duration_s=values[1])
