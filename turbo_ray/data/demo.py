"""The demo corpus: a miniature IEMOCAP_full_release, generated in exactly the real layout.

It is a fixture and a demo, never a claim about real speech: results on it are labelled "demo".

    root = make_demo_corpus("~/.cache/turbo_ray/demo", seed=0, utterances_per_speaker=40)

5 sessions × 2 actors (F, M); every dialog has turns of both actors, each a sentence spoken in its
emotion's style (`demo_speech.py`: audio carries arousal, text valence; neither alone separates the
four classes). `.demo_corpus.json` (written last) records the parameters and the label counts per
session.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from turbo_ray.data.demo_speech import CATEGORIES, SAMPLE_RATE, STYLES, sentence, synthesise
from turbo_ray.data.iemocap import RELEASE_NAME

FORMAT_VERSION = 1
MARKER = ".demo_corpus.json"
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\x80\xff" + bytes(60)
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
SCRIPTS = {
    1: "F_script01_2",
    2: "M_script02_1",
    3: "F_script01_1",
    4: "M_script03_2",
    5: "M_script01_1b",
}
DIALOGS_PER_SESSION = 4
SPEAKER_F0 = {"F": 200.0, "M": 115.0}
# happy alternates hap / exc
FOUR_CLASS_CYCLE = ("neu", "hap", "ang", "sad", "neu", "exc", "ang", "sad")
OTHER_CYCLE = ("fru", "xxx")


@dataclass
class _Turn:
    utterance_id: str
    label: str
    text: str
    start: float
    end: float
    audio: np.ndarray


def dialogs(session: int) -> list[str]:
    """The session's dialogs: an F improvisation, an M improvisation in a/b parts, and a script."""
    s = f"Ses0{session}"
    return [
        f"{s}F_impro0{session}",
        f"{s}M_impro0{session + 3}a",
        f"{s}M_impro0{session + 3}b",
        s + SCRIPTS[session],
    ]


def _label_plan(utterances: int, offset: int, rng: np.random.Generator) -> list[str]:
    """A speaker's raw labels, shuffled: a few fru and xxx, the rest cycling over the four classes
    from `offset`."""
    others = max(2, round(utterances / 8))
    plan = [FOUR_CLASS_CYCLE[(i + offset) % 8] for i in range(utterances - others)]
    plan += [OTHER_CYCLE[i % 2] for i in range(others)]
    return [plan[i] for i in rng.permutation(len(plan))]


def _dialog_turns(
    dialog: str, plans: dict[str, list[str]], f0s: dict[str, float], rng: np.random.Generator
) -> list[_Turn]:
    """The dialog's turns in time order: both actors interleaved, numbered per actor from 000."""
    order = np.array([g for g, plan in plans.items() for _ in plan])[
        rng.permutation(sum(map(len, plans.values())))
    ]
    turns, count, clock = [], dict.fromkeys(plans, 0), rng.uniform(1.0, 3.0)
    for gender in order:
        label = plans[gender][count[gender]]
        style = STYLES[label]
        text = sentence(style, rng)
        audio = synthesise(text, style, f0s[gender], rng)
        end = clock + len(audio) / SAMPLE_RATE
        turns.append(_Turn(f"{dialog}_{gender}{count[gender]:03d}", label, text, clock, end, audio))
        count[gender] += 1
        clock = end + rng.uniform(0.3, 1.5)
    return turns


def _evaluation_block(turn: _Turn, rng: np.random.Generator) -> str:
    """The summary line, three categorical (C-) and three dimensional (A-) annotator lines,
    as in the release."""
    style = STYLES[turn.label]
    if turn.label == "xxx":  # no majority
        words = [CATEGORIES[i] for i in rng.choice(len(CATEGORIES), 3, replace=False)]
    else:
        words = [
            style.category if rng.random() < 0.8 else CATEGORIES[rng.integers(len(CATEGORIES))]
            for _ in range(3)
        ]
    ratings = np.clip(np.rint(np.array(style.vad) + rng.normal(0, 0.7, (3, 3))), 1, 5).astype(int)
    v, a, d = ratings.mean(axis=0)
    lines = [
        f"[{turn.start:.4f} - {turn.end:.4f}]\t{turn.utterance_id}\t{turn.label}\t"
        f"[{v:.4f}, {a:.4f}, {d:.4f}]"
    ]
    lines += [f"C-E{i + 1}:\t{word};\t()" for i, word in enumerate(words)]
    lines += [
        f"A-E{i + 1}:\tval {r[0]}; act {r[1]}; dom  {r[2]};\t()" for i, r in enumerate(ratings)
    ]
    return "\n".join(lines) + "\n\n"


def _transcription(dialog: str, turns: list[_Turn], xx_speaker: str | None) -> str:
    """The transcription file: one `id [start-end]: text` line per turn, plus an XX turn
    if `xx_speaker` is given."""
    lines = [f"{t.utterance_id} [{t.start:08.4f}-{t.end:08.4f}]: {t.text}" for t in turns]
    if xx_speaker:  # a turn with no label and no wav, as the release has
        gap = turns[0].end + 0.1
        lines.insert(1, f"{dialog}_{xx_speaker}XX0 [{gap:08.4f}-{gap + 0.2:08.4f}]: Mm-hmm.")
    return "\n".join(lines) + "\n"


def _write_session(
    release: Path, session: int, speakers_utterances: int, rng: np.random.Generator
) -> dict[str, int]:
    """One session's EmoEvaluation, transcriptions and wavs (with the odd cases);
    its raw label counts."""
    names = dialogs(session)
    plans = {
        g: _label_plan(speakers_utterances, offset, rng) for g, offset in (("F", 0), ("M", 2))
    }  # M balances F
    f0s = {g: SPEAKER_F0[g] * 2 ** (rng.normal(0, 1.5) / 12) for g in ("F", "M")}
    base = release / f"Session{session}"
    evaluation, transcriptions = (
        base / "dialog" / "EmoEvaluation",
        base / "dialog" / "transcriptions",
    )
    for folder in (evaluation, transcriptions):
        folder.mkdir(parents=True)
    counts: dict[str, int] = {}
    for index, dialog in enumerate(names):
        share = {g: plan[index::DIALOGS_PER_SESSION] for g, plan in plans.items()}
        turns = _dialog_turns(dialog, share, f0s, rng)
        emo = HEADER + "".join(_evaluation_block(t, rng) for t in turns)
        (evaluation / f"{dialog}.txt").write_text(emo, encoding="utf-8")
        text = _transcription(dialog, turns, "MF"[session % 2] if index == 0 else None)
        newline = "\r\n" if (session, index) == (2, 0) else "\n"  # one file with Windows line ends
        (transcriptions / f"{dialog}.txt").write_bytes(text.replace("\n", newline).encode())
        wav_dir = base / "sentences" / "wav" / dialog
        wav_dir.mkdir(parents=True)
        for turn in turns:
            sf.write(
                wav_dir / f"{turn.utterance_id}.wav", turn.audio, SAMPLE_RATE, subtype="PCM_16"
            )
            counts[turn.label] = counts.get(turn.label, 0) + 1
        if session == 1 and index == 0:  # files the loader must skip
            (evaluation / f"._{dialog}.txt").write_bytes(APPLEDOUBLE)
            (wav_dir / f"._{turns[0].utterance_id}.wav").write_bytes(APPLEDOUBLE)
            (
                evaluation / "Categorical"
            ).mkdir()  # a decoy: read, it would duplicate every id of the dialog
            (evaluation / "Categorical" / f"{dialog}_e1_cat.txt").write_text(emo, encoding="utf-8")
    return dict(sorted(counts.items()))


def _is_built(release: Path, params: dict) -> bool:
    """Whether `release` is a complete demo corpus built with these parameters
    (its marker is written last)."""
    marker = release / MARKER
    if not marker.is_file():
        return False
    recorded = json.loads(marker.read_text(encoding="utf-8"))
    return {k: recorded.get(k) for k in params} == params


def make_demo_corpus(root: str | Path, seed: int = 0, utterances_per_speaker: int = 40) -> Path:
    """Write (once) `root/IEMOCAP_full_release` for these parameters and return its absolute path.

    Deterministic for a seed. Built in a hidden sibling folder and renamed into place, so an
    interrupted build leaves nothing half-written; a demo corpus built with other parameters is
    replaced.
    """
    if utterances_per_speaker < DIALOGS_PER_SESSION:
        raise ValueError(
            f"utterances_per_speaker must be at least {DIALOGS_PER_SESSION} (one per dialog)"
        )
    root = Path(root).expanduser().absolute()
    release = root / RELEASE_NAME
    params = {
        "format": FORMAT_VERSION,
        "seed": seed,
        "utterances_per_speaker": utterances_per_speaker,
    }
    if _is_built(release, params):
        return release
    if release.exists() and not (release / MARKER).is_file():
        raise FileExistsError(
            f"{release} exists and is not a generated demo corpus: refusing to replace it"
        )
    root.mkdir(parents=True, exist_ok=True)
    building = root / f".{RELEASE_NAME}.building-{uuid.uuid4().hex[:8]}"
    try:
        _build(building, params)
        if release.exists():
            shutil.rmtree(release)
        os.replace(building, release)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return release


def _build(release: Path, params: dict) -> None:
    """The five sessions under `release`, then its marker (the parameters and label counts)."""
    rng = np.random.default_rng(params["seed"])
    per_speaker = params["utterances_per_speaker"]
    sessions = tqdm(
        range(1, 6),
        desc="generating the demo corpus",
        unit="session",
        disable=None,
        leave=False,
    )
    labels = {str(s): _write_session(release, s, per_speaker, rng) for s in sessions}
    summary = {
        **params,
        "sample_rate": SAMPLE_RATE,
        "utterances": 10 * per_speaker,
        "labels_per_session": labels,
        "note": "generated fixture and demo, not real speech",
    }
    (release / MARKER).write_text(
        json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
