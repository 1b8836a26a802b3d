"""The common baseline: a web handler that calls `model.predict` on each request, as most tutorials serve Keras.

    python bench/naive_server.py --model-dir models --port 8001

Deliberately self-contained (nothing from `app/`): it loads the two exported models the usual way
(`keras.models.model_from_json` + `load_weights`), decodes the upload with Pillow, scales it to [0, 1], calls
`classifier.predict` and, when the probability reaches the manifest's threshold, `segmenter.predict`, and returns JSON
with the mask as a base64 PNG (about the same response work as the service's RLE). No batching, no fixed-signature
functions, no off-loop decoding: exactly what the service is measured against. Loopback only, for benchmarking.
Same routes as the service where the load script needs them: POST /v1/predict (field `file`), GET /health/ready.
"""

from __future__ import annotations

import argparse
import base64
import io
import ipaddress
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image

INPUT_SIZE = 256


def load_keras_models(model_dir: Path) -> dict:
    """Both models and their thresholds from the manifest, loaded the way most examples load Keras models."""
    import keras  # heavy: imported when the server starts, not when this file is read

    manifest = json.loads((model_dir / "manifest.json").read_text())
    loaded = {}
    for role in ("classifier", "segmenter"):
        entry = manifest[role]
        model = keras.models.model_from_json((model_dir / entry["architecture"]).read_text())
        model.load_weights(model_dir / entry["weights"])
        loaded[role] = model
        loaded[f"{role}_threshold"] = float(entry["threshold"])
    return loaded


def predict_upload(models: dict, data: bytes) -> dict:
    """Decode, scale, classify, segment if positive, encode: the whole request in one blocking function."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    original_size = image.size
    if image.size != (INPUT_SIZE, INPUT_SIZE):
        image = image.resize((INPUT_SIZE, INPUT_SIZE))
    batch = np.asarray(image, dtype=np.float32)[None] / 255.0
    probability = float(models["classifier"].predict(batch, verbose=0)[0, 0])
    detected = probability >= models["classifier_threshold"]
    result: dict = {"tumor_probability": probability, "tumor_detected": detected, "mask": None}
    if detected:
        probabilities = models["segmenter"].predict(batch, verbose=0)[0, :, :, 0]
        mask = Image.fromarray(((probabilities >= models["segmenter_threshold"]) * 255).astype(np.uint8))
        if mask.size != original_size:
            mask = mask.resize(original_size, Image.NEAREST)
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        result["mask"] = {
            "png": base64.b64encode(buffer.getvalue()).decode("ascii"),
            "area_pixels": int(np.count_nonzero(np.asarray(mask))),
        }
    return result


def build_app(model_dir: Path, threadpool: bool = False) -> FastAPI:
    """The naive app: models loaded at startup; `threadpool=True` runs each request in Starlette's thread pool
    (a plain `def` handler) instead of on the event loop (the usual `async def` handler)."""
    models: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Uvicorn listens only after this returns, so "ready" means "answers requests" here.
        models.update(load_keras_models(model_dir))
        yield

    app = FastAPI(title="naive baseline", lifespan=lifespan)

    @app.get("/health/ready")
    async def read_readiness() -> dict:
        """200 once the models are loaded (always, since the server listens only after loading)."""
        return {"status": "ready"}

    @app.post("/v1/predict")
    async def create_prediction(file: UploadFile) -> dict:
        """Tumor probability and mask of one slice."""
        data = await file.read()
        if threadpool:
            return await run_in_threadpool(predict_upload, models, data)
        return predict_upload(models, data)

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("models"), help="folder with manifest.json")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--threadpool",
        action="store_true",
        help="run requests in the thread pool instead of on the event loop (the other common variant)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host = "127.0.0.1" if args.host == "localhost" else args.host
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"--host must be a loopback address (benchmark use only); got {args.host!r}")
    if not (args.model_dir / "manifest.json").is_file():
        raise SystemExit(f"--model-dir must hold manifest.json; not found: {args.model_dir / 'manifest.json'}")
    import uvicorn

    uvicorn.run(build_app(args.model_dir.resolve(), args.threadpool), host=host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
