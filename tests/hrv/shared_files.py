"""The shared real recordings, each with the options it needs to load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hrvstream.recordings import RRSeries, read_recording


@dataclass(frozen=True)
class SharedFile:
    """One shared recording and how to read it."""

    relpath: str
    fs: float | None = None
    lenient: bool = False
    long: bool = False  # a day-long Holter series

    def load(self, root: Path) -> RRSeries:
        return read_recording(root / self.relpath, fs=self.fs, lenient=self.lenient)


SHARED_FILES: tuple[SharedFile, ...] = (
    SharedFile("polar_h10_pvc/polar_h10_rr.csv"),
    SharedFile("polar_hrm/exercise_rri.hrm"),
    SharedFile("polar_hrm/noisy_rri.hrm"),
    SharedFile("polar_hrm/rest_rri.txt"),
    SharedFile("polar_hrm/real_rri.txt", lenient=True),
    SharedFile("polar_hrm/08012805.txt"),
    SharedFile("pyhrv_nsrdb/SampleNNISeriesLong_ms.txt"),
    SharedFile("pyhrv_nsrdb/SampleNNISeriesShort_ms.txt"),
    SharedFile("mitdb_100/100.atr"),
    SharedFile("gudb_stress/subject_00/sitting/annotation_cs.tsv", fs=250.0),
    SharedFile("gudb_stress/subject_00/maths/annotation_cs.tsv", fs=250.0),
    SharedFile("physionet_nsr2db/nsr001_rr_secs.txt", long=True),
    SharedFile("physionet_chf2db/chf201_rr_secs.txt", long=True),
    SharedFile("physionet_healthy/008.txt", lenient=True, long=True),
)

IDS = [f.relpath.split("/")[-1] for f in SHARED_FILES]
