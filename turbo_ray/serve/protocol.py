"""The served model's HTTP protocol, without Ray: a `POST /predict` body as the recordings it
holds (every problem a `RequestError`, an HTTP 4xx naming it, found before anything reaches the
model), the model's probabilities as the answer, and what `GET /model` says.

    multipart/form-data  audio=<an audio file>, text=<its transcript>     → an answer
    application/json     {"audio": "<base64 of an audio file>", "text": "…"}  → an answer
                         {"utterances": [{"audio": …, "text": …}, …]} → {"predictions": [answer, …]}
    an answer            {"predicted": "<class>", "probabilities": {"<class>": p, …}}
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from importlib.metadata import version
from pathlib import Path

import numpy as np
import soundfile as sf
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from turbo_ray.classifier import META, Classifier
from turbo_ray.errors import RequestError
from turbo_ray.predict import Recording, recording_rows
from turbo_ray.serve.options import ServeOptions

MULTIPART, JSON = "multipart/form-data", "application/json"
MIN_SECONDS = 0.1  # shorter audio gives the audio encoder no frame at all
MAX_TEXT_CHARS = 10_000
RATES = (4_000, 192_000)  # Hz, and a rate whose ratio to the model's reduces to terms ≤ …
MAX_RATE_TERMS = 1_000  # … (44.1 kHz: 441/160), else the resampling filter is gigabytes
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # the only samples that can be NaN or infinite


async def recordings_of(
    request: Request, options: ServeOptions, sample_rate: int
) -> tuple[list[Recording], bool]:
    """The recordings of a /predict request, checked, and whether it sent several (the
    answer's shape); `sample_rate`: the model's."""
    body = await _body(request, options.max_body_bytes)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == MULTIPART:
        items, several = [await _form_item(request, body)], False
    elif kind == JSON:
        items, several = _json_items(body, options.max_utterances)
    else:
        raise RequestError(
            f"content type {kind or 'none'!r}: send {MULTIPART} (fields audio and text) or "
            f"{JSON} ({{audio: base64, text}} or {{utterances: [...]}})",
            415,
        )
    return [
        checked(f"utterance {k}" if several else "", audio, text, options, sample_rate)
        for k, (audio, text) in enumerate(items)
    ], several


async def _body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it is over `limit` bytes."""
    declared = request.headers.get("content-length", "")
    too_large = RequestError(f"the body is over this server's limit of {limit} bytes", 413)
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _form_item(request: Request, body: bytes) -> tuple[bytes, str]:
    """The audio file and transcript of a multipart body."""
    sent = False

    async def receive() -> dict:  # the body again, read once already
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        async with Request(request.scope, receive).form(max_files=2, max_fields=4) as form:
            audio, text = form.get("audio"), form.get("text")
            if not isinstance(audio, UploadFile):
                raise RequestError("multipart field 'audio' (an audio file) is missing", 400)
            if not isinstance(text, str):
                raise RequestError("multipart field 'text' (the transcript) is missing", 400)
            return await audio.read(), text
    except (MultiPartException, HTTPException) as err:
        detail = getattr(err, "message", None) or getattr(err, "detail", err)
        raise RequestError(f"malformed multipart body: {detail}", 400) from None


def _json_items(body: bytes, max_utterances: int) -> tuple[list[tuple[bytes, str]], bool]:
    """The (audio, text) pairs of a JSON body, and whether it sent a list of utterances."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(f"malformed JSON: {err}", 400) from None
    if isinstance(data, dict) and "utterances" in data:
        utterances = data["utterances"]
        if not isinstance(utterances, list) or not utterances:
            raise RequestError("'utterances' must be a non-empty list", 400)
        if len(utterances) > max_utterances:
            raise RequestError(
                f"{len(utterances)} utterances; this server takes at most {max_utterances} per "
                "request",
                413,
            )
        return [_json_item(u, f"utterance {k}: ") for k, u in enumerate(utterances)], True
    return [_json_item(data, "")], False


def _json_item(item, where: str) -> tuple[bytes, str]:
    if not isinstance(item, dict):
        raise RequestError(f'{where}expected an object {{"audio": base64, "text": "…"}}', 400)
    audio, text = item.get("audio"), item.get("text")
    if not isinstance(audio, str):
        raise RequestError(f"{where}'audio' (base64 of an audio file) is missing", 400)
    if not isinstance(text, str):
        raise RequestError(f"{where}'text' (the transcript, a string) is missing", 400)
    if audio.startswith("data:") and "," in audio:  # a data URL: data:audio/wav;base64,…
        audio = audio.split(",", 1)[1]
    try:
        return base64.b64decode(audio, validate=True), text
    except (binascii.Error, ValueError) as err:
        raise RequestError(f"{where}'audio' is not valid base64 ({err})", 400) from None


def checked(
    name: str, audio: bytes, text: str, options: ServeOptions, sample_rate: int
) -> Recording:
    """One utterance, checked as `read_inputs` checks a file and its transcript (unreadable or
    empty audio, empty text), and against the server's limits: a RequestError (422) names the
    problem."""
    where = f"{name}: " if name else ""

    def problem(message: str) -> RequestError:
        return RequestError(f"{where}{message}", 422)

    if not text.strip():
        raise problem("empty text")
    if len(text) > MAX_TEXT_CHARS:
        raise problem(f"text of {len(text)} characters; at most {MAX_TEXT_CHARS}")
    try:
        with sf.SoundFile(io.BytesIO(audio)) as f:
            frames, rate = f.frames, f.samplerate
            samples = f.read(dtype="float32") if f.subtype in FLOAT_SUBTYPES else None
    except (sf.SoundFileError, RuntimeError, ValueError) as err:
        raise problem(f"unreadable audio ({err})") from None
    if frames <= 0:
        raise problem("empty audio (no samples)")
    if why := rate_problem(rate, sample_rate):
        raise problem(why)
    seconds = frames / rate
    if seconds > options.max_audio_seconds:
        raise problem(f"audio of {seconds:.1f} s; at most {options.max_audio_seconds:g} s")
    if seconds < MIN_SECONDS:
        raise problem(f"audio of {seconds:.3f} s; at least {MIN_SECONDS} s")
    if samples is not None and not np.isfinite(samples).all():
        raise problem("audio with samples that are not finite numbers (NaN or infinity)")
    return Recording(name or "utterance", audio, rate, text)


def rate_problem(rate: int, target: int) -> str | None:
    """Why audio at `rate` Hz is not resampled to the model's `target` (None: it is)."""
    terms = max(rate, target) // math.gcd(rate, target)
    if rate != target and not (RATES[0] <= rate <= RATES[1] and terms <= MAX_RATE_TERMS):
        return (
            f"audio at {rate} Hz: the rate must be {RATES[0]}-{RATES[1]} Hz and reduce with "
            f"{target} Hz to terms of at most {MAX_RATE_TERMS} (8, 11.025, 16, 22.05, 24, 32, "
            "44.1, 48, 96 kHz do)"
        )
    return None


def probabilities(classifier: Classifier, recordings: list[Recording]) -> list:
    """Each recording's probabilities, from one batch (`predict`'s code: `recording_rows`,
    `predict_rows`; a row's do not depend on the others'); if the batch fails, each recording
    alone, so that one bad recording fails alone (its exception in its place)."""
    try:
        return list(classifier.predict_rows(recording_rows(recordings)))
    except Exception as err:
        if len(recordings) == 1:
            return [err]
        return [probabilities(classifier, [one])[0] for one in recordings]


def answer(classes: tuple[str, ...], probs: np.ndarray) -> dict:
    return {
        "predicted": classes[int(np.argmax(probs))],
        "probabilities": dict(zip(classes, probs.tolist())),
    }


def model_info(model_dir: str, options: ServeOptions) -> dict:
    """`GET /model`: the model folder's classes, input rules, versions and the scores it came
    from (its turbo_ray.json), this server's limits and versions."""
    meta = json.loads((Path(model_dir) / META).read_text())
    limits = {
        "content_types": [MULTIPART, JSON],
        "max_body_bytes": options.max_body_bytes,
        "max_utterances": options.max_utterances,
        "max_audio_seconds": options.max_audio_seconds,
        "min_audio_seconds": MIN_SECONDS,
        "max_text_chars": MAX_TEXT_CHARS,
        "sample_rates": rate_problem(1, meta["inputs"]["sample_rate"]).split(": ", 1)[1],
        "max_batch_size": options.max_batch_size,
    }
    return {
        "model_dir": model_dir,
        "classes": meta["classes"],
        "inputs": meta["inputs"],
        "limits": limits,
        "precision": meta.get("precision"),
        "versions": meta.get("versions", {}),
        "served_by": {name: version(name) for name in ("turbo-ray", "ray", "torch")},
        "source": meta.get("source", {}),
    }
