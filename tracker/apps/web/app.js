// The web demo's page: upload (or record the camera), click points on the first frame, stream the tracks.
// State is kept in window.tracker so that a test (or a curious user) can read what the page received.
"use strict";

const $ = (id) => document.getElementById(id);
const view = $("view");
const ctx = view.getContext("2d");
const COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"];

const state = (window.tracker = {
  video: null, // the server's answer to the upload
  points: [], // [[x, y], ...] pixels of the first frame
  first: null, // the first frame as an Image
  job: null,
  frames: [], // one {frame, xy, visible, score} per tracked frame
  done: null, // the `done` message
  error: null, // the last error shown
  busy: false,
});

function setStatus(text) { $("status").textContent = text; }
function setError(text) { state.error = text || null; $("error").textContent = text || ""; }

function setBusy(busy) {
  state.busy = busy;
  $("file").disabled = busy;
  document.querySelector("label[for=file]").classList.toggle("disabled", busy);
  $("camera").disabled = busy;
  $("track").disabled = busy || !state.video || state.points.length === 0;
  $("clear").disabled = busy || state.points.length === 0;
}

function showDownloads(done) {
  for (const [id, url] of [["dl-json", done && done.tracks_json], ["dl-csv", done && done.tracks_csv]]) {
    $(id).hidden = !url;
    $(id).href = url || "#";
  }
}

async function readError(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return `the server answered ${response.status} ${response.statusText}`;
}

// ------------------------------------------------------------------ upload

async function upload(blob, what) {
  setError("");
  showDownloads(null);
  Object.assign(state, { video: null, points: [], first: null, job: null, frames: [], done: null });
  updateCount();
  setBusy(true);
  setStatus(`Uploading ${what} (${(blob.size / 1048576).toFixed(1)} MB)…`);
  try {
    // The server takes only application/octet-stream or video/* (types a cross-site form cannot send).
    const response = await fetch("/api/videos", {
      method: "POST",
      body: blob,
      headers: { "Content-Type": "application/octet-stream" },
    });
    if (!response.ok) throw new Error(await readError(response));
    const video = await response.json();
    const image = new Image();
    await new Promise((resolve, reject) => {
      image.onload = resolve;
      image.onerror = () => reject(new Error("cannot load the first frame"));
      image.src = `${video.first_frame}?t=${Date.now()}`;
    });
    state.video = video;
    state.first = image;
    view.width = video.width;
    view.height = video.height;
    drawFirst();
    const more = video.truncated ? ` (only the first ${video.num_frames} are tracked)` : "";
    setStatus(`${video.width}x${video.height}, ${video.num_frames} frames${more}. Click points on the frame, then Track.`);
  } catch (err) {
    setError(`Upload refused: ${err.message}`);
    setStatus("Choose a video to start.");
  } finally {
    setBusy(false);
  }
}

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) upload(file, "the video");
  $("file").value = "";
});

// ------------------------------------------------------------------ camera

$("camera").addEventListener("click", async () => {
  setError("");
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    setError("This browser cannot record the camera here (it needs https or localhost, and MediaRecorder).");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    setError(`No camera: ${err.message}`);
    return;
  }
  setBusy(true);
  const preview = $("preview");
  preview.srcObject = stream;
  preview.hidden = false;
  view.hidden = true;
  await preview.play().catch(() => {});
  const type = ["video/webm;codecs=vp8", "video/webm", "video/mp4"].find((t) => MediaRecorder.isTypeSupported(t));
  const recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
  const chunks = [];
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  const stopped = new Promise((resolve) => { recorder.onstop = resolve; });
  recorder.start(250);
  for (let s = 3; s > 0; s--) {
    setStatus(`Recording… ${s}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
  recorder.stop();
  await stopped;
  stream.getTracks().forEach((t) => t.stop());
  preview.hidden = true;
  view.hidden = false;
  setBusy(false);
  await upload(new Blob(chunks, { type: recorder.mimeType }), "the recording");
});

// ------------------------------------------------------------------ points

function updateCount() {
  $("count").textContent = `${state.points.length} point${state.points.length === 1 ? "" : "s"}`;
  setBusy(state.busy);
}

function marker(x, y, colour, filled) {
  const r = Math.max(4, view.width / 160);
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.lineWidth = Math.max(1.5, r / 3);
  if (filled) {
    ctx.fillStyle = colour;
    ctx.fill();
    ctx.strokeStyle = "#000";
  } else {
    ctx.strokeStyle = colour;
  }
  ctx.stroke();
}

function drawFirst() {
  if (!state.first) return;
  ctx.drawImage(state.first, 0, 0, view.width, view.height);
  state.points.forEach(([x, y], i) => marker(x + 0.5, y + 0.5, COLOURS[i % COLOURS.length], true));
}

// A click at CSS position p maps to the pixel coordinate x = p * width / cssWidth - 0.5 (pixel centres at
// integers, the top-left pixel's centre at 0, 0).
view.addEventListener("click", (event) => {
  if (!state.video || state.busy || state.job) return;
  const rect = view.getBoundingClientRect();
  const x = ((event.clientX - rect.left) * view.width) / rect.width - 0.5;
  const y = ((event.clientY - rect.top) * view.height) / rect.height - 0.5;
  if (state.points.length >= 256) return setError("At most 256 points.");
  state.points.push([Math.round(x * 100) / 100, Math.round(y * 100) / 100]);
  drawFirst();
  updateCount();
});

$("clear").addEventListener("click", () => {
  state.points = [];
  state.job = null;
  state.frames = [];
  state.done = null;
  showDownloads(null);
  drawFirst();
  updateCount();
});

// ------------------------------------------------------------------ tracking

$("track").addEventListener("click", async () => {
  setError("");
  showDownloads(null);
  state.frames = [];
  state.done = null;
  setBusy(true);
  setStatus("Starting…");
  let job;
  try {
    const response = await fetch(`/api/videos/${state.video.video}/jobs`, {
      method: "POST",
      headers: { "Content-Type": "application/json" }, // required by the server, as is a same-origin Origin
      body: JSON.stringify({ points: state.points }),
    });
    if (!response.ok) throw new Error(await readError(response));
    job = await response.json();
  } catch (err) {
    setError(`Cannot track: ${err.message}`);
    setStatus("");
    setBusy(false);
    return;
  }
  state.job = job.job;
  const source = new EventSource(job.events);
  const started = performance.now();
  source.addEventListener("frame", (e) => {
    const msg = JSON.parse(e.data);
    if (msg.image) {
      const image = new Image();
      image.onload = () => ctx.drawImage(image, 0, 0, view.width, view.height);
      image.src = msg.image;
      delete msg.image;
    }
    state.frames.push(msg);
    const rate = state.frames.length / ((performance.now() - started) / 1000);
    setStatus(`Tracking: frame ${msg.frame + 1} / ${msg.num_frames} (${rate.toFixed(1)} frames/s)`);
  });
  source.addEventListener("done", (e) => {
    source.close();
    state.done = JSON.parse(e.data);
    const d = state.done;
    setStatus(`Done: ${d.points} points through ${d.frames} frames (${d.fps} frames/s, ${d.model} on ${d.device}).`);
    showDownloads(d);
    state.job = null;
    setBusy(false);
  });
  source.addEventListener("failed", (e) => {
    source.close();
    setError(`Tracking failed: ${JSON.parse(e.data).error}`);
    state.job = null;
    setBusy(false);
  });
  source.onerror = () => {
    if (state.done || !state.job) return;
    source.close();
    setError("Lost the connection to the server.");
    state.job = null;
    setBusy(false);
  };
});

fetch("/api/info")
  .then((r) => r.json())
  .then((info) => {
    $("limits").textContent = `Model: ${info.model} on ${info.device}. Videos up to ${info.max_upload_mb} MB ` +
      `(${info.containers}); the first ${info.max_frames} frames are tracked.`;
  })
  .catch(() => {});
