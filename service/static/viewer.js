// The sonomask viewer. It sends a camera or a local video file to POST /v1/streams over WebRTC,
// and shows the masked video that comes back beside the figures from the data channel.
"use strict";

const LATENCY_WINDOW = 100;
const DECISIONS = ["masked", "held", "clear", "blanked"];

const view = {
  form: document.getElementById("controls"),
  camera: document.getElementById("camera"),
  file: document.getElementById("file"),
  apiKey: document.getElementById("api-key"),
  start: document.getElementById("start"),
  stop: document.getElementById("stop"),
  state: document.getElementById("state"),
  error: document.getElementById("error"),
  local: document.getElementById("local"),
  masked: document.getElementById("masked"),
  filePlayer: document.getElementById("file-player"),
};

let session = null;

function show(id, text) {
  document.getElementById(id).textContent = String(text);
}

function setState(state) {
  view.state.textContent = state;
  const running = state !== "idle" && state !== "closed" && state !== "failed";
  view.start.disabled = running;
  view.stop.disabled = !running;
}

function selectedSource() {
  return view.form.querySelector('input[name="source"]:checked').value;
}

function authHeaders() {
  const key = view.apiKey.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function listCameras() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const cameras = devices.filter((device) => device.kind === "videoinput");
  const chosen = view.camera.value;
  view.camera.replaceChildren(
    ...cameras.map((camera, index) => new Option(camera.label || `Camera ${index + 1}`, camera.deviceId)),
  );
  if (cameras.some((camera) => camera.deviceId === chosen)) {
    view.camera.value = chosen;
  }
}

async function openSource() {
  if (selectedSource() === "camera") {
    const deviceId = view.camera.value;
    const video = deviceId ? { deviceId: { exact: deviceId } } : true;
    const stream = await navigator.mediaDevices.getUserMedia({ video, audio: false });
    await listCameras();
    return { stream, release: () => stream.getTracks().forEach((track) => track.stop()) };
  }

  const file = view.file.files[0];
  if (!file) {
    throw new Error("choose a video file first");
  }
  const url = URL.createObjectURL(file);
  view.filePlayer.src = url;
  await view.filePlayer.play();
  const stream = view.filePlayer.captureStream();
  const release = () => {
    view.filePlayer.pause();
    view.filePlayer.removeAttribute("src");
    URL.revokeObjectURL(url);
  };
  return { stream, release };
}

// The service does not take trickled candidates, so the offer must carry all of ours.
function iceGatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        resolve();
      }
    });
  });
}

function newFigures() {
  return { frames: 0, dropped: 0, latencies: [], counts: Object.fromEntries(DECISIONS.map((d) => [d, 0])) };
}

function onFrameMessage(figures, message) {
  figures.frames += 1;
  figures.counts[message.decision] = (figures.counts[message.decision] || 0) + 1;
  figures.latencies.push(message.latency_ms);
  if (figures.latencies.length > LATENCY_WINDOW) {
    figures.latencies.shift();
  }
  figures.dropped = message.dropped_frames;

  const sorted = [...figures.latencies].sort((a, b) => a - b);
  const p95 = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.95))];
  show("frames", figures.frames);
  show("latency-last", message.latency_ms.toFixed(1));
  show("latency-p95", p95.toFixed(1));
  show("dropped", figures.dropped);
  show("decision", message.decision);
  show("model", message.model_id || "–");
  for (const decision of DECISIONS) {
    show(`count-${decision}`, figures.counts[decision]);
  }
}

// Frame rate of the masked video as shown, counted over the last second.
function watchFrameRate(video, isCurrent) {
  const shown = [];
  const onFrame = (now) => {
    if (!isCurrent()) {
      return;
    }
    shown.push(now);
    while (shown.length && now - shown[0] > 1000) {
      shown.shift();
    }
    show("fps", shown.length);
    video.requestVideoFrameCallback(onFrame);
  };
  if ("requestVideoFrameCallback" in video) {
    video.requestVideoFrameCallback(onFrame);
  }
}

async function readError(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.detail}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// The service lists the STUN and TURN servers its media is reachable through; none by default.
async function fetchIceServers() {
  const response = await fetch("/v1/streams/ice-servers", { headers: authHeaders() });
  if (!response.ok) {
    throw new Error(`the service rejected the stream: ${await readError(response)}`);
  }
  return (await response.json()).ice_servers;
}

async function start() {
  view.error.textContent = "";
  setState("starting");
  const source = await openSource();
  const pc = new RTCPeerConnection({ iceServers: await fetchIceServers() });
  const current = { pc, source, id: null, figures: newFigures() };
  session = current;

  const channel = pc.createDataChannel("detections");
  channel.addEventListener("message", (event) => onFrameMessage(current.figures, JSON.parse(event.data)));
  pc.addEventListener("track", (event) => {
    view.masked.srcObject = event.streams[0] || new MediaStream([event.track]);
    // Autoplay alone can leave a stream that arrives after the click paused.
    view.masked.play().catch((error) => {
      view.error.textContent = `the masked video cannot play: ${error.message}`;
    });
    watchFrameRate(view.masked, () => session === current);
  });
  pc.addEventListener("connectionstatechange", () => {
    if (session === current) {
      setState(pc.connectionState);
    }
  });

  view.local.srcObject = source.stream;
  const [videoTrack] = source.stream.getVideoTracks();
  if (!videoTrack) {
    throw new Error("the source has no video track");
  }
  pc.addTrack(videoTrack, source.stream);

  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringComplete(pc);
  const response = await fetch("/v1/streams", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  if (!response.ok) {
    throw new Error(`the service rejected the stream: ${await readError(response)}`);
  }
  const answer = await response.json();
  current.id = answer.session_id;
  show("session", answer.session_id);
  await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
}

async function stop() {
  const current = session;
  session = null;
  if (!current) {
    return;
  }
  if (current.id) {
    try {
      await fetch(`/v1/streams/${current.id}`, { method: "DELETE", headers: authHeaders(), keepalive: true });
    } catch (error) {
      view.error.textContent = `closing the session failed: ${error.message}`;
    }
  }
  current.pc.close();
  current.source.release();
  view.local.srcObject = null;
  view.masked.srcObject = null;
  setState("closed");
}

view.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await start();
  } catch (error) {
    view.error.textContent = error.message;
    await stop();
    setState("failed");
  }
});
view.stop.addEventListener("click", () => stop());
window.addEventListener("pagehide", () => stop());
listCameras().catch(() => {});
