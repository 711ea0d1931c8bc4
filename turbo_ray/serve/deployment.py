"""The Serve deployment: a FastAPI app (`/predict`, `/model`, `/healthz`, FastAPI's `/docs`)
on replicas that each load the model folder once and predict with dynamic batching
(`@serve.batch`). A request is checked whole before any of its utterances joins a batch, and a
row's probabilities do not depend on the rows it is batched with.

No `from __future__ import annotations` here: FastAPI reads the routes' annotations (`Request`)
as types, and Serve's ingress wraps the methods where string annotations no longer resolve."""

import asyncio
import io
from importlib.metadata import version

import numpy as np
import soundfile as sf
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from turbo_ray.classifier import load_classifier
from turbo_ray.errors import RequestError
from turbo_ray.predict import Recording
from turbo_ray.serve.options import ServeOptions
from turbo_ray.serve.protocol import (
    JSON,
    MULTIPART,
    answer,
    model_info,
    probabilities,
    recordings_of,
)

DEPLOYMENT = "classifier"  # its name in serve_config.yaml's `deployments:`
api = FastAPI(
    title="turbo-ray",
    version=version("turbo-ray"),
    description="A Turbo audio-text classifier: POST /predict an utterance (its audio and "
    "transcript) or several; GET /model for its classes and input rules.",
)
_UTTERANCE = {
    "type": "object",
    "required": ["audio", "text"],
    "properties": {
        "audio": {"type": "string", "description": "base64 of an audio file (wav, flac, …)"},
        "text": {"type": "string", "description": "its transcript"},
    },
}
_PREDICT_BODY = {  # /docs: /predict reads its body itself (multipart or JSON)
    "requestBody": {
        "required": True,
        "content": {
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "required": ["audio", "text"],
                    "properties": {
                        "audio": {"type": "string", "format": "binary"},
                        "text": {"type": "string"},
                    },
                }
            },
            JSON: {
                "schema": {
                    "oneOf": [
                        _UTTERANCE,
                        {
                            "type": "object",
                            "required": ["utterances"],
                            "properties": {"utterances": {"type": "array", "items": _UTTERANCE}},
                        },
                    ]
                }
            },
        },
    }
}


@api.exception_handler(RequestError)
async def _refused(request: Request, err: RequestError) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=err.status)


@serve.deployment(name=DEPLOYMENT, ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class ModelServer:
    def __init__(self, options: ServeOptions):
        self.options = options
        self.classifier = load_classifier(options.model_dir)
        self.rate = self.classifier.cfg.data.sample_rate
        self.info = model_info(options.model_dir, options)
        self.batch.set_max_batch_size(options.max_batch_size)
        self.batch.set_batch_wait_timeout_s(options.batch_wait_ms / 1000)
        self._warm_up()

    def _warm_up(self) -> None:
        """One prediction before the replica takes requests (tokenizer, first forward)."""
        wav = io.BytesIO()
        sf.write(wav, np.zeros(self.rate, dtype=np.float32), self.rate, format="WAV")
        (probs,) = probabilities(
            self.classifier, [Recording("warm-up", wav.getvalue(), self.rate, "warm up")]
        )
        if isinstance(probs, Exception):
            raise probs

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "replica": serve.get_replica_context().replica_id.unique_id}

    @api.get("/model")
    async def model(self) -> dict:
        return self.info

    @api.post("/predict", openapi_extra=_PREDICT_BODY)
    async def predict(self, request: Request) -> dict:
        """One utterance (multipart audio + text, or JSON {audio: base64, text}): its answer;
        several (JSON {utterances: [...]}): {"predictions": [answer, ...]}, in their order."""
        recordings, several = await recordings_of(request, self.options, self.rate)
        results = await asyncio.gather(*(self.batch(r) for r in recordings))
        for recording, result in zip(recordings, results):
            if isinstance(result, Exception):  # passed every check, yet the model refused it
                raise RequestError(f"{recording.utterance_id}: cannot be predicted ({result})")
        answers = [answer(self.classifier.classes, probs) for probs in results]
        return {"predictions": answers} if several else answers[0]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)  # set from the options
    async def batch(self, recordings: list[Recording]) -> list:
        # In the requests' event loop (Serve runs it beside the replica's own): measured on 2
        # CPU cores, a forward in a thread of its own held the GIL from the loop that reads the
        # next requests, which then reached the batches one or two at a time (BENCHMARKS.md)
        return probabilities(self.classifier, recordings)
