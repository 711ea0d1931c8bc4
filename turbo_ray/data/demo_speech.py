"""How the demo corpus speaks: each emotion's style (arousal in the audio, valence in the words,
the annotators' ratings), its sentences, and their synthesised audio.

    text = sentence(STYLES["ang"], rng)
    wave = synthesise(text, STYLES["ang"], f0=200.0, rng=rng)   # float32 in [-1, 1] at SAMPLE_RATE

Audio: a voiced, harmonic syllable per vowel group, an f0 contour with jitter, pauses between words;
angry and happy speak higher, wider, louder and faster than neutral and sad. Text: per-emotion
sentence templates, angry and sad sharing a negative pool, and about a quarter of every class an
ambiguous sentence. Neither modality alone separates the four classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
MIN_SECONDS, MAX_SECONDS = 1.0, 3.5

SLOTS = {
    "good": ("wonderful", "great", "beautiful", "lovely", "fantastic"),
    "bad": ("terrible", "awful", "a disaster", "so unfair"),
    "who": ("she", "he", "my brother", "your mother", "our friend"),
    "them": ("her", "him", "my brother", "my mother", "our friend"),
    "time": ("at three", "on monday", "tomorrow morning", "next week", "after lunch"),
    "event": ("the meeting", "the interview", "the flight", "the dinner"),
    "object": ("paper", "key", "phone", "letter"),
    "thing": ("day", "surprise", "idea", "gift"),
}
SENTENCES = {
    "happy": (
        "this is {good} news",
        "I am so happy for {them}",
        "we did it, this is {good}",
        "I love it, thank you so much",
        "what a {good} {thing}",
    ),
    "angry": (
        "I am sick of this",
        "how dare {who} say that to me",
        "stop lying to me",
        "get out of here right now",
        "I have had enough of your excuses",
    ),
    "sad": (
        "I miss {them} so much",
        "I feel so alone",
        "nothing will ever be the same",
        "I wish {who} were still here",
        "I can't stop crying",
    ),
    "negative": (
        "this is {bad}",
        "I can't believe {who} did that",
        "everything went wrong again",
        "why does this always happen to me",
    ),
    "neutral": (
        "{event} is {time}",
        "I will call you {time}",
        "the {object} is on the table",
        "can you pass me the {object}",
        "{who} said {event} was moved",
    ),
    "ambiguous": (
        "I don't know what to say",
        "okay",
        "let me think about it",
        "well that is what {who} told me",
        "we will see {time}",
        "are you serious",
    ),
}
VOWELS = {  # relative gains of harmonics 1..8: a crude vowel colour per syllable
    "a": (1.0, 0.9, 1.0, 0.8, 0.5, 0.3, 0.2, 0.1),
    "e": (1.0, 0.5, 0.3, 0.4, 0.7, 0.8, 0.5, 0.3),
    "i": (1.0, 0.3, 0.1, 0.2, 0.4, 0.8, 1.0, 0.6),
    "o": (1.0, 1.0, 0.6, 0.3, 0.2, 0.1, 0.1, 0.05),
    "u": (1.0, 0.6, 0.2, 0.1, 0.05, 0.05, 0.05, 0.02),
}
VOWEL_ORDER = tuple(VOWELS)
HARMONICS = np.arange(1, 9)


@dataclass(frozen=True)
class Style:
    """How an emotion is spoken (audio: arousal), rated (valence, activation, dominance) and
    worded (text)."""

    pitch: float  # semitones above the speaker's f0
    pitch_range: float  # semitones of syllable accents
    gain_db: float
    rate: float  # syllables per second
    tilt: float  # harmonic roll-off exponent: lower is brighter
    vad: tuple[float, float, float]
    category: str  # the annotators' word in the C- lines
    pools: tuple[tuple[str, float], ...]  # sentence pools and their shares


STYLES = {
    "neu": Style(
        0.0,
        3.0,
        -8.0,
        3.8,
        1.4,
        (3.0, 2.5, 2.5),
        "Neutral",
        (("neutral", 0.75), ("ambiguous", 0.25)),
    ),
    "hap": Style(
        5.0,
        7.0,
        0.0,
        5.0,
        1.0,
        (4.0, 3.5, 3.0),
        "Happiness",
        (("happy", 0.75), ("ambiguous", 0.25)),
    ),
    "exc": Style(
        5.5, 7.0, 0.5, 5.1, 1.0, (4.0, 4.0, 3.5), "Excited", (("happy", 0.75), ("ambiguous", 0.25))
    ),
    "ang": Style(
        4.5,
        6.0,
        1.0,
        5.2,
        0.9,
        (1.8, 4.0, 4.0),
        "Anger",
        (("angry", 0.35), ("negative", 0.40), ("ambiguous", 0.25)),
    ),
    "sad": Style(
        -2.0,
        2.0,
        -11.0,
        3.0,
        1.6,
        (1.8, 2.0, 2.0),
        "Sadness",
        (("sad", 0.35), ("negative", 0.40), ("ambiguous", 0.25)),
    ),
    "fru": Style(
        2.5,
        4.5,
        -3.0,
        4.5,
        1.1,
        (2.0, 3.2, 3.2),
        "Frustration",
        (("negative", 0.5), ("angry", 0.2), ("ambiguous", 0.3)),
    ),
    "xxx": Style(
        1.0, 4.0, -5.0, 4.2, 1.3, (2.8, 3.0, 3.0), "Other", (("ambiguous", 0.5), ("neutral", 0.5))
    ),
}
CATEGORIES = tuple(s.category for s in STYLES.values())


def sentence(style: Style, rng: np.random.Generator) -> str:
    """A sentence from one of the style's pools, its slots filled; now and then a [BREATHING] tag,
    as in the release."""
    pools, shares = zip(*style.pools)
    templates = SENTENCES[pools[rng.choice(len(pools), p=shares)]]
    text = re.sub(
        r"\{(\w+)\}",
        lambda m: SLOTS[m[1]][rng.integers(len(SLOTS[m[1]]))],
        templates[rng.integers(len(templates))],
    )
    text = text[0].upper() + text[1:] + "."
    return text + " [BREATHING]" if rng.random() < 0.1 else text


def _syllables(text: str) -> list[list[int]]:
    """Per word, the vowel (index into VOWEL_ORDER) of each syllable-like vowel group;
    tags are silent."""
    words = re.findall(r"[a-z']+", re.sub(r"\[[A-Z]+\]", " ", text).lower())
    groups = [re.findall(r"[aeiouy]+", w) or ["a"] for w in words]
    return [[VOWEL_ORDER.index(g[0].replace("y", "i")) for g in word] for word in groups]


def synthesise(text: str, style: Style, f0: float, rng: np.random.Generator) -> np.ndarray:
    """A float waveform in [-1, 1] at SAMPLE_RATE: voiced harmonic syllables,
    prosody from `style`."""
    words = _syllables(text)
    rate = style.rate * rng.uniform(0.9, 1.1)
    vowels = np.array([v for w in words for v in w])
    lengths = rng.uniform(0.75, 1.25, len(vowels)) / rate
    word_end = np.cumsum([len(w) for w in words]) - 1
    gaps = np.full(len(vowels), 0.01)
    gaps[word_end] = rng.uniform(0.03, 0.1, len(words)) * 4.0 / rate
    gaps[-1] = 0.0
    lead, trail = rng.uniform(0.1, 0.2, 2)
    speech = lengths.sum() + gaps.sum()
    scale = min(1.0, (MAX_SECONDS - lead - trail - 0.05) / speech)
    lengths, gaps = lengths * scale, gaps * scale
    total = max(MIN_SECONDS + 0.05, lead + trail + speech * scale)
    lead += rng.uniform(0, 1) * (total - lead - trail - speech * scale)
    n = int(total * SAMPLE_RATE)

    starts = (
        (lead + np.concatenate([[0.0], np.cumsum(lengths + gaps)[:-1]])) * SAMPLE_RATE
    ).astype(int)
    sizes = (lengths * SAMPLE_RATE).astype(int)
    envelope, vowel_at = np.zeros(n), np.zeros(n, dtype=int)
    peaks = rng.uniform(0.7, 1.0, len(vowels))
    for start, size, peak, vowel in zip(starts, sizes, peaks, vowels):
        envelope[start : start + size] = peak * np.sin(np.pi * np.arange(size) / size) ** 0.6
        vowel_at[start : start + size] = vowel

    t = np.arange(n)
    centres = starts + sizes // 2
    # accents + declination
    accents = style.pitch_range * rng.uniform(-0.5, 0.5, len(vowels)) - 2.0 * centres / n
    knots = np.arange(0, n + 160, 160)  # f0 jitter: smooth noise, one value per 10 ms
    jitter = np.interp(t, knots, rng.normal(0, 0.3, len(knots)))
    semitones = style.pitch + rng.normal(0, 1.2) + np.interp(t, centres, accents) + jitter
    phase = 2 * np.pi * np.cumsum(f0 * 2 ** (semitones / 12)) / SAMPLE_RATE

    gains = np.array([VOWELS[v] for v in VOWEL_ORDER]) * HARMONICS**-style.tilt
    gains /= gains.sum(axis=1, keepdims=True)
    colour = gains.T[:, vowel_at]  # (harmonic, sample)
    previous, harmonic, twice_cos = np.zeros(n), np.sin(phase), 2 * np.cos(phase)
    voiced = colour[0] * harmonic
    for k in range(1, len(HARMONICS)):  # sin((k+1)x) = 2 cos(x) sin(kx) - sin((k-1)x)
        previous, harmonic = harmonic, twice_cos * harmonic - previous
        voiced += colour[k] * harmonic
    amplitude = 0.5 * 10 ** ((style.gain_db + rng.normal(0, 1.5)) / 20)
    wave = amplitude * envelope * (voiced + rng.normal(0, 0.02, n)) + rng.normal(0, 0.002, n)
    return np.clip(wave, -0.99, 0.99)
