"""Serving a model folder: `POST /predict` answers what `turbo-ray predict` answers (the same
preparation, the same probabilities, whatever a request is batched with), under a bounded load
from concurrent clients; every bad input is a 4xx naming the problem and leaves the replica
serving; `turbo-ray serve` stopped by a signal leaves no process behind; serve_config.yaml is a
valid `serve deploy` config. One Serve application (on the shared Ray) answers the HTTP tests."""

import base64
import io
import json
import math
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import requests
import soundfile as sf
import yaml

from turbo_ray.errors import UsageError
from turbo_ray.serve.options import ServeOptions

REPO = Path(__file__).parents[1]
TOLERANCE = 1e-5
LIMITS = {"max_audio_seconds": 10.0, "max_body_mb": 2.0}  # the served app's (small, to test)


@pytest.fixture(scope="module")
def model_dir(demo_corpus, tmp_path_factory) -> Path:
    """An untrained model folder of the default (tiny) preset: the answers do not depend on
    training."""
    from turbo_ray.classifier import write_model_folder
    from turbo_ray.config import load_config
    from turbo_ray.model import build_model

    cfg = load_config(None, [])
    classes = list(demo_corpus.classes)
    out = tmp_path_factory.mktemp("served") / "model"
    source = {"epoch": 2, "metrics": {"val_ua": 0.5}}
    return write_model_folder(build_model(cfg, len(classes)), cfg, classes, out, source)


@pytest.fixture(scope="module")
def cases(demo_corpus, model_dir, tmp_path_factory) -> list[dict]:
    """Eight recordings (one of them stereo at 8 kHz: down-mixed and resampled), their
    transcripts, and `turbo-ray predict`'s probabilities of each (in process, from a CSV)."""
    from turbo_ray.classifier import load_classifier
    from turbo_ray.predict import predict, read_inputs

    folder = tmp_path_factory.mktemp("cases")
    rows = demo_corpus.manifest.iloc[::40].head(8)
    paths = list(rows.wav_path)
    mono, rate = sf.read(paths[0])
    paths[0] = str(folder / "stereo-8k.wav")
    sf.write(paths[0], np.stack([mono[::2], mono[::-2]], 1), rate // 2)
    csv = folder / "cases.csv"
    pd.DataFrame({"path": paths, "text": list(rows.text)}).to_csv(csv, index=False)
    classifier = load_classifier(model_dir)
    table = predict(str(model_dir), read_inputs(classifier.classes, csv=str(csv)), actors=0)
    probs = table[[f"prob_{c}" for c in classifier.classes]].to_numpy()
    return [
        {"audio": Path(p).read_bytes(), "text": t, "probs": row, "classes": classifier.classes}
        for p, t, row in zip(paths, rows.text, probs)
    ]


def close(answer: dict, case: dict) -> bool:
    got = np.array([answer["probabilities"][c] for c in case["classes"]])
    best = case["classes"][int(np.argmax(got))]
    return np.abs(got - case["probs"]).max() <= TOLERANCE and answer["predicted"] == best


def test_a_rows_probabilities_do_not_depend_on_its_batch(model_dir, cases):
    from turbo_ray.classifier import load_classifier
    from turbo_ray.predict import Recording
    from turbo_ray.serve.protocol import probabilities

    classifier = load_classifier(model_dir)
    recordings = [
        Recording(f"u{k}", c["audio"], sf.info(io.BytesIO(c["audio"])).samplerate, c["text"])
        for k, c in enumerate(cases)
    ]
    batched = probabilities(classifier, recordings)  # padded to the longest
    for recording, case, probs in zip(recordings, cases, batched):
        (alone,) = probabilities(classifier, [recording])
        assert np.abs(probs - alone).max() <= TOLERANCE
        assert np.abs(probs - case["probs"]).max() <= TOLERANCE  # = `turbo-ray predict`'s
    # a recording the model cannot take fails alone; the others of its batch are answered
    broken = Recording("broken", b"RIFF-not-a-wav", 16000, "hello")
    mixed = probabilities(classifier, [recordings[1], broken, recordings[2]])
    assert isinstance(mixed[1], Exception)
    assert np.abs(mixed[0] - batched[1]).max() <= TOLERANCE
    assert np.abs(mixed[2] - batched[2]).max() <= TOLERANCE


def test_options_from_serves_arguments_are_typed_and_checked():
    options = ServeOptions.from_args({"model_dir": "m", "max_replicas": "4", "max_body_mb": "8"})
    assert (options.max_replicas, options.max_body_mb, options.min_replicas) == (4, 8.0, None)
    scaled = options.deployment_options()
    assert scaled["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8,
    }
    fixed = ServeOptions("m", replicas=3, gpus_per_replica=0.5).checked().deployment_options()
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"]["num_gpus"] == 0.5
    for args, message in (
        ({}, "model_dir=<a model folder> is required"),
        ({"model_dir": "m", "replica": "2"}, "unknown argument 'replica'"),
        ({"model_dir": "m", "replicas": "two"}, "replicas='two': expected a number"),
        ({"model_dir": "m", "replicas": 2, "max_replicas": 3}, "exclude each other"),
        ({"model_dir": "m", "min_replicas": 2}, "min_replicas needs max_replicas"),
        ({"model_dir": "m", "min_replicas": 3, "max_replicas": 2}, "max_replicas=2: out of"),
        ({"model_dir": "m", "max_batch_size": 0}, "max_batch_size=0: out of range"),
    ):
        with pytest.raises(UsageError, match=message):
            ServeOptions.from_args(args)


def test_serve_config_is_a_valid_serve_deploy_config_of_this_application():
    from ray.serve.schema import ServeDeploySchema

    from turbo_ray.serve import app
    from turbo_ray.serve.deployment import DEPLOYMENT

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "serve_config.yaml").open()))
    (application,) = config.applications
    module, name = application.import_path.split(":")
    assert (module, name) == ("turbo_ray.serve", app.__name__)
    ServeOptions.from_args(application.args)  # every argument known, of its type
    assert [d.name for d in application.deployments] == [DEPLOYMENT]


@pytest.fixture(scope="module")
def served(shared_ray, model_dir):
    """The model served on the shared Ray (one replica, `LIMITS`), at a free port: its URL."""
    from ray import serve

    from turbo_ray.runtime import free_port
    from turbo_ray.serve import start, stop

    server = start(ServeOptions(str(model_dir), **LIMITS), port=free_port())
    assert server.own_serve and not server.own_ray
    yield server.url
    stop(server)
    assert not serve.status().applications


def multipart(case: dict, **fields) -> dict:
    files = {"audio": ("a.wav", case["audio"], "audio/wav"), "text": (None, case["text"])}
    return {"files": {**files, **fields}}


def as_json(case: dict) -> dict:
    return {"audio": base64.b64encode(case["audio"]).decode(), "text": case["text"]}


def test_answers_are_turbo_ray_predicts_one_or_several(served, cases):
    for case in cases:
        one = requests.post(f"{served}/predict", **multipart(case), timeout=60)
        assert one.status_code == 200, one.text
        assert close(one.json(), case)
        same = requests.post(f"{served}/predict", json=as_json(case), timeout=60)
        assert same.status_code == 200 and close(same.json(), case), same.text
    several = requests.post(
        f"{served}/predict", json={"utterances": [as_json(c) for c in cases]}, timeout=60
    )
    assert several.status_code == 200, several.text
    answers = several.json()["predictions"]
    assert len(answers) == len(cases) and all(map(close, answers, cases))


def test_a_bounded_load_from_eight_clients_is_answered_whole_and_right(served, cases):
    def client(k: int) -> list[bool]:
        with requests.Session() as session:
            right = []
            for i in range(25):
                case = cases[(k + i) % len(cases)]
                body = multipart(case) if i % 2 else {"json": as_json(case)}
                response = session.post(f"{served}/predict", **body, timeout=120)
                right.append(response.status_code == 200 and close(response.json(), case))
            return right

    with ThreadPoolExecutor(8) as pool:
        answered = [ok for oks in pool.map(client, range(8)) for ok in oks]
    assert len(answered) == 200 and all(answered), f"{answered.count(False)} wrong or refused"


def wav(seconds: float, rate: int = 16000, subtype: str = "PCM_16", value: float = 0.1) -> bytes:
    out = io.BytesIO()
    sf.write(out, np.full(int(seconds * rate), value), rate, format="WAV", subtype=subtype)
    return out.getvalue()


def raw(body: bytes | str, content_type: str) -> dict:
    return {"data": body, "headers": {"content-type": content_type}}


def bad_requests(case: dict) -> list[tuple[str, dict, int, str]]:
    """(what, requests.post's arguments, status, what the message names)."""
    good, b64 = as_json(case), base64.b64encode
    nan = wav(1.0, subtype="FLOAT", value=math.nan)
    one_bad = {"utterances": [good, {**good, "text": ""}]}
    broken = raw(b"--x\r\nbroken", "multipart/form-data; boundary=x")
    return [
        ("unreadable audio", multipart({**case, "audio": b"not audio"}), 422, "unreadable"),
        ("an empty file", multipart({**case, "audio": b""}), 422, "unreadable audio"),
        ("no samples", multipart({**case, "audio": wav(0)}), 422, "empty audio"),
        ("empty text", multipart({**case, "text": "  "}), 422, "empty text"),
        ("too long", {"json": {**good, "audio": b64(wav(11)).decode()}}, 422, "at most 10 s"),
        ("too short", multipart({**case, "audio": wav(0.05)}), 422, "at least 0.1 s"),
        ("odd rate", multipart({**case, "audio": wav(1, 44101)}), 422, "44101 Hz"),
        ("NaN samples", multipart({**case, "audio": nan}), 422, "not finite"),
        ("plain text", raw("hello", "text/plain"), 415, "'text/plain'"),
        ("no content type", {"data": b"x"}, 415, "content type"),
        ("oversized", {"json": {**good, "text": "x" * 2_200_000}}, 413, "limit"),
        ("malformed JSON", raw(b"{", "application/json"), 400, "malformed JSON"),
        ("a JSON list", {"json": [good]}, 400, "expected an object"),
        ("no audio", {"json": {"text": "hi"}}, 400, "'audio'"),
        ("bad base64", {"json": {**good, "audio": "%%%"}}, 400, "base64"),
        ("no utterances", {"json": {"utterances": []}}, 400, "non-empty list"),
        ("one bad of two", {"json": one_bad}, 422, "utterance 1: empty text"),
        ("no text field", {"files": {"audio": ("a.wav", case["audio"])}}, 400, "'text'"),
        ("no audio file", {"files": {"text": (None, "hi")}}, 400, "'audio'"),
        ("broken multipart", broken, 400, "multipart"),
    ]


def test_bad_inputs_are_4xx_naming_the_problem_and_the_replica_keeps_serving(served, cases):
    replica = requests.get(f"{served}/healthz", timeout=30).json()["replica"]
    wrong = []
    for what, body, status, named in bad_requests(cases[1]):
        response = requests.post(f"{served}/predict", **body, timeout=60)
        detail = response.json().get("detail", "") if response.status_code < 500 else ""
        if response.status_code != status or named not in detail:
            wrong.append(f"{what}: {response.status_code} {response.text[:300]}")
    assert not wrong, wrong
    health = requests.get(f"{served}/healthz", timeout=30).json()
    assert health == {"status": "ok", "replica": replica}  # the same replica, alive
    again = requests.post(f"{served}/predict", **multipart(cases[1]), timeout=60)
    assert again.status_code == 200 and close(again.json(), cases[1])


def test_model_says_its_classes_input_rules_versions_and_scores_and_docs_work(
    served, model_dir, cases
):
    info = requests.get(f"{served}/model", timeout=30).json()
    meta = json.loads((model_dir / "turbo_ray.json").read_text())
    assert info["classes"] == list(cases[0]["classes"]) == meta["classes"]
    assert info["inputs"] == meta["inputs"] and info["source"] == meta["source"]
    assert info["versions"] == meta["versions"] and "ray" in info["served_by"]
    assert info["limits"]["max_audio_seconds"] == 10.0
    assert info["limits"]["max_body_bytes"] == 2 * 1024**2
    assert requests.get(f"{served}/docs", timeout=30).status_code == 200
    schema = requests.get(f"{served}/openapi.json", timeout=30).json()
    assert set(schema["paths"]) >= {"/predict", "/model", "/healthz"}


def test_turbo_ray_serve_stopped_by_signals_leaves_no_process_behind(
    launch, model_dir, cases, ray_tmp, tmp_path
):
    from turbo_ray.runtime import free_port

    port = free_port()
    log = (tmp_path / "serve.log").open("w+")
    env = {"RAY_TMPDIR": str(ray_tmp("serve-cli")), "RAY_ADDRESS": ""}  # a Ray of its own
    process = launch("serve", str(model_dir), "--port", str(port), env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C stops it" not in _read(log) or not _healthy(url):
            assert process.poll() is None and time.monotonic() < deadline, _read(log)
            time.sleep(1)
        answer = requests.post(f"{url}/predict", **multipart(cases[2]), timeout=60)
        assert answer.status_code == 200, answer.text
        assert close(answer.json(), cases[2])
        family = psutil.Process(process.pid).children(recursive=True)
        assert len(family) > 3  # Ray's processes and Serve's actors
        process.send_signal(signal.SIGTERM)
        while "stopping" not in _read(log):
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)  # a Ctrl-C while it stops: ignored
        assert process.wait(timeout=90) == 0, _read(log)
        assert "Traceback" not in _read(log)
        _, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, [p.pid for p in alive]
        assert not _healthy(url)
        assert "serving" in _read(log) and "stopped" in _read(log)
    finally:
        if process.poll() is None:
            process.kill()


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=5).status_code == 200
    except requests.RequestException:  # not listening yet, or no longer; or not ready
        return False


def _read(log) -> str:
    log.seek(0)
    return log.read()[-5000:]


def test_the_command_line_refuses_a_folder_that_is_no_model_before_starting_ray(tmp_path):
    from conftest import run_main

    printed = run_main("serve", str(tmp_path), code=2)
    assert "is not a model folder" in printed
    printed = run_main("serve", str(tmp_path), "--replicas", "2", "--max-replicas", "3", code=2)
    assert "exclude each other" in printed
