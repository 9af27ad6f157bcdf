"""Recordings of heart beats: the :class:`RRSeries` model and the file readers."""

from hrvstream.recordings.model import RRSeries
from hrvstream.recordings.readers import FORMATS, read_recording

__all__ = ["FORMATS", "RRSeries", "read_recording"]
