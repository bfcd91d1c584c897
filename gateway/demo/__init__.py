"""The demo: a synthetic county whose departments' native export files carry a known ground truth.

``generate(out_dir, students=..., seed=..., as_of=...)`` writes the files and returns the
``GroundTruth``; ``gateway demo`` (the lead's command) runs the sync jobs and the match over them.
"""

from __future__ import annotations

from .generate import GroundTruth, generate, school_year_cutoff

__all__ = ["GroundTruth", "generate", "school_year_cutoff"]
