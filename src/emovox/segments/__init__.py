"""Speech segments: voice activity detection (Silero VAD v6 on ONNX Runtime, torch-free), segmentation, and
an emotion for each segment of a recording of any length.

>>> import emovox
>>> result = emovox.load_model().segments("meeting.flac")     # or classify_segments(model, ...)
>>> [(s.start_s, s.end_s, s.prediction.label) for s in result.segments]
>>> result.message                                            # says so when there is no speech

Modules: :mod:`.vad` (the model and its streaming state), :mod:`.segmenter` (probabilities → segments,
incrementally), :mod:`.decode` (block-wise decoding), :mod:`.pipeline` (the two passes), :mod:`.plot`.
"""

from __future__ import annotations

from emovox.segments.decode import Recording, open_recording
from emovox.segments.pipeline import SegmentedRecording, SpeechSegment, classify_segments, find_speech
from emovox.segments.segmenter import Endpointer, Segmenter, SegmentOptions, speech_segments
from emovox.segments.vad import SILERO, SileroVad, VadError, silero_onnx_path

__all__ = ["SILERO", "Endpointer", "Recording", "SegmentOptions", "SegmentedRecording", "Segmenter", "SileroVad",
           "SpeechSegment", "VadError", "classify_segments", "find_speech", "open_recording", "silero_onnx_path",
           "speech_segments"]
