"""Key finding: the major or minor key a set of pitch-class weights is in (Krumhansl-Schmuckler).

Used live (a call's key in call-and-response), on a whole generated piece (``render --form``) and by the
rule accompanist of ``rtgen-train accompany``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from rtgen.contract import QUALITIES, Chord, Key

KS_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
KS_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
"""Krumhansl-Kessler key profiles (probe-tone ratings), tonic first."""

DOMINANT_SEVENTH = next(i for i, (name, _) in enumerate(QUALITIES) if name == "7")

# rows: C..B major, then C..B minor; centred and of unit length, so a dot product ranks keys by correlation
_PROFILES = np.array([np.roll(KS_MAJOR, k) for k in range(12)] + [np.roll(KS_MINOR, k) for k in range(12)])
_PROFILES -= _PROFILES.mean(axis=1, keepdims=True)
_PROFILES /= np.linalg.norm(_PROFILES, axis=1, keepdims=True)


def estimate_key(weights: npt.ArrayLike) -> Key | None:
    """The major or minor key whose Krumhansl-Kessler profile correlates best with pitch-class ``weights``.

    Args:
        weights: 12 weights (onsets or sounding steps per pitch class), C first.

    Returns:
        The key; None when every weight is zero (no note heard). Equal weights give C major; between keys
        that fit equally well in exact arithmetic (two notes a tritone apart, say) rounding decides.
    """
    w = np.asarray(weights, dtype=np.float64)
    if not w.any():
        return None
    best = int(np.argmax(_PROFILES @ (w - w.mean())))
    return Key(best % 12, "major" if best < 12 else "minor")


def dominant_chord(key: Key) -> int:
    """The dominant seventh's chord token (V7, also in minor keys: the leading tone pulls to the tonic)."""
    return Chord((key.tonic + 7) % 12, DOMINANT_SEVENTH).token
