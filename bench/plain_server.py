"""The baseline: a masking server written the way most users write one.

A FastAPI app that loads an ultralytics `.pt` model at import and, for every request,
decodes the image, calls `model.predict` on it inside the async route, paints the boxes
black and encodes a PNG. No batching, no thread offload, no fail-closed handling.
It exists only to be measured by `python -m bench.run`; never deploy it.

    PLAIN_MODEL=service/models/sonomask-demo-n.pt uvicorn bench.plain_server:app
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from ultralytics import YOLO

MODEL_PATH = os.environ["PLAIN_MODEL"]
CONF = float(os.environ.get("PLAIN_CONF", "0.318"))

model = YOLO(MODEL_PATH, task="detect")
app = FastAPI()


@app.get("/readyz")
async def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/v1/mask")
async def mask(request: Request) -> Response:
    data = await request.body()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    results = model.predict(image, conf=CONF, verbose=False)
    for x1, y1, x2, y2 in results[0].boxes.xyxy.cpu().numpy().astype(int):
        cv2.rectangle(image, (x1, y1), (x2, y2), (0, 0, 0), thickness=-1)
    _, buffer = cv2.imencode(".png", image)
    return Response(buffer.tobytes(), media_type="image/png")
