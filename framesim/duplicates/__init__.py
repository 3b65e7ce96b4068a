"""Duplicates inside a dataset: near-duplicate frame pairs, their groups, and copied segments.

    from framesim.duplicates import find_duplicates
    result = find_duplicates("dataset", out_dir="reports/dups")
    result.segments       # video_a, start_a, end_a, video_b, start_b, end_b, score, n_frames, offset_s

Modules: ``selfjoin`` (k-NN self-join, bounded memory), ``groups`` (connected components),
``segments`` (temporal alignment into copied segments), ``verify`` (local features for thin evidence),
``files`` (the output folder), ``pipeline`` (all of it over a frame dataset).
"""

from framesim.duplicates.files import (
    FRAME_PAIR_COLUMNS,
    GROUP_COLUMNS,
    SEGMENT_COLUMNS,
    DuplicatesFilesError,
    read_duplicates,
)
from framesim.duplicates.pipeline import DuplicatesResult, find_duplicates, summary_lines

__all__ = ["FRAME_PAIR_COLUMNS", "GROUP_COLUMNS", "SEGMENT_COLUMNS", "DuplicatesFilesError", "DuplicatesResult",
           "find_duplicates", "summary_lines", "read_duplicates"]
