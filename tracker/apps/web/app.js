// The web demo's page: upload (or drop, record, or take the demo clip), click points on a frame, stream the
// tracks, replay them, download them. State is kept in window.tracker so that a test (or a curious user) can
// read what the page received. Point i has colour palette[i] here and in the server's overlays (/api/info).
"use strict";

const $ = (id) => document.getElementById(id);
const view = $("view");
const ctx = view.getContext("2d");
let PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"];

const state = (window.tracker = {
  video: null, // the server's answer to the upload
  name: null, // the file's name as the user knows it
  points: [], // [[x, y, frame], ...] pixels of the original frame
  queryFrame: 0, // the frame new points go on
  image: null, // the query frame as an Image
  job: null,
  frames: [], // one {frame, xy, visible, score} per tracked frame
  images: [], // the overlay of each tracked frame (JPEG data URLs), for replay
  shown: null, // the frame index on the canvas during replay
  done: null, // the `done` message
  cancelled: null, // the `cancelled` message
  error: null, // the last error shown
  busy: false,
  info: null,
  playing: false,
});

function colour(i) { return PALETTE[i % PALETTE.length]; }
function setStatus(text) { $("status").textContent = text; }
function setError(text) { state.error = text || null; $("error").textContent = text || ""; }
function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

function setBusy(busy) {
  state.busy = busy;
  const tracking = Boolean(state.job);
  $("file").disabled = busy;
  document.querySelector("label[for=file]").classList.toggle("disabled", busy);
  $("camera").disabled = busy;
  $("demo").disabled = busy;
  $("track").disabled = busy || !state.video || state.points.length === 0;
  $("stop").hidden = !tracking;
  $("clear").disabled = busy || state.points.length === 0;
  $("undo").disabled = busy || state.points.length === 0;
  $("query-frame").disabled = busy;
  for (const button of document.querySelectorAll("#points button")) button.disabled = busy || tracking;
}

function showDownloads(done) {
  const links = [["dl-video", done && done.overlay_mp4], ["dl-json", done && done.tracks_json], ["dl-csv", done && done.tracks_csv]];
  for (const [id, url] of links) {
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

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("cannot load the frame"));
    image.src = src;
  });
}

// Forget the result of the last run (its frames, downloads and summary): points changed, or a new video came.
function forgetResult() {
  stopPlaying();
  Object.assign(state, { job: null, frames: [], images: [], shown: null, done: null, cancelled: null });
  showDownloads(null);
  $("replay").hidden = true;
  $("progress").hidden = true;
}

function showStage(hasVideo) {
  $("empty").hidden = hasVideo;
  view.hidden = !hasVideo;
}

// ------------------------------------------------------------------ upload

function send(body, onProgress) {
  // XMLHttpRequest, not fetch: it reports upload progress. The server takes only application/octet-stream or
  // video/* (types a cross-site form cannot send).
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/videos");
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let answer = null;
      try { answer = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status === 200 && answer) resolve(answer);
      else reject(new Error((answer && answer.error) || `the server answered ${xhr.status} ${xhr.statusText}`));
    };
    xhr.onerror = () => reject(new Error("the connection to the server failed"));
    xhr.send(body);
  });
}

function resetForUpload(name) {
  setError("");
  forgetResult();
  Object.assign(state, { video: null, name, points: [], queryFrame: 0, image: null });
  showStage(false);
  $("query").hidden = true;
  updatePoints();
}

async function accepted(video, name) {
  state.image = await loadImage(`${video.first_frame}?t=${Date.now()}`);
  state.video = video;
  state.name = name;
  view.width = video.width;
  view.height = video.height;
  showStage(true);
  const q = $("query-frame");
  q.max = String(video.num_frames - 1);
  q.value = "0";
  $("query-label").textContent = "0";
  $("query").hidden = false;
  for (const [x, y] of video.suggested_points || []) state.points.push([x, y, 0]);
  updatePoints();
  redraw();
  const more = video.truncated ? ` (only the first ${video.num_frames} are tracked)` : "";
  const next = state.points.length ? "Press Track, or click more points." : "Click points on the frame, then Track.";
  setStatus(`${name}: ${video.width}x${video.height}, ${video.num_frames} frames${more}. ${next}`);
}

async function upload(blob, name) {
  resetForUpload(name);
  setBusy(true);
  const bar = $("progress");
  bar.hidden = false;
  bar.value = 0;
  setStatus(`Uploading ${name} (${(blob.size / 1048576).toFixed(1)} MB)…`);
  try {
    const video = await send(blob, (share) => {
      bar.value = share;
      setStatus(`Uploading ${name}: ${Math.round(100 * share)}%${share >= 1 ? " (checking it decodes…)" : ""}`);
    });
    await accepted(video, name);
  } catch (err) {
    setError(`${name}: ${err.message}`);
    setStatus("Choose a video to start.");
  } finally {
    bar.hidden = true;
    setBusy(false);
  }
}

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) upload(file, file.name);
  $("file").value = "";
});

$("demo").addEventListener("click", async () => {
  resetForUpload("the demo clip");
  setBusy(true);
  setStatus("Making the demo clip…");
  try {
    const response = await fetch("/api/demo", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    if (!response.ok) throw new Error(await readError(response));
    await accepted(await response.json(), "the demo clip");
  } catch (err) {
    setError(`The demo clip: ${err.message}`);
    setStatus("Choose a video to start.");
  } finally {
    setBusy(false);
  }
});

const stage = $("stage");
stage.addEventListener("dragover", (e) => { e.preventDefault(); if (!state.busy) stage.classList.add("drag"); });
stage.addEventListener("dragleave", () => stage.classList.remove("drag"));
stage.addEventListener("drop", (e) => {
  e.preventDefault();
  stage.classList.remove("drag");
  const file = e.dataTransfer && e.dataTransfer.files[0];
  if (file && !state.busy) upload(file, file.name);
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
  $("empty").hidden = true;
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
  setBusy(false);
  await upload(new Blob(chunks, { type: recorder.mimeType }), "the recording");
});

// ------------------------------------------------------------------ points

function radius() { return Math.max(5, view.width / 110); }

function updatePoints() {
  $("count").textContent = plural(state.points.length, "point");
  const list = $("points");
  list.textContent = "";
  state.points.forEach(([x, y, f], i) => {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour(i);
    swatch.textContent = String(i + 1);
    const text = document.createElement("span");
    text.textContent = `(${x.toFixed(0)}, ${y.toFixed(0)})${f ? ` on frame ${f}` : ""}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = `remove point ${i + 1}`;
    remove.dataset.point = String(i);
    remove.addEventListener("click", () => removePoint(i));
    li.append(swatch, text, remove);
    list.append(li);
  });
  setBusy(state.busy);
}

function marker(x, y, fill, number, faded) {
  const r = radius();
  ctx.save();
  ctx.globalAlpha = faded ? 0.45 : 1;
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.fillStyle = fill;
  ctx.fill();
  ctx.lineWidth = Math.max(1.5, r / 4);
  ctx.strokeStyle = "#000";
  ctx.stroke();
  ctx.font = `bold ${Math.round(r * 1.5)}px system-ui, sans-serif`;
  ctx.lineWidth = Math.max(2, r / 3);
  ctx.strokeStyle = "#000";
  ctx.fillStyle = "#fff";
  ctx.strokeText(String(number), x + r * 1.2, y - r * 0.9);
  ctx.fillText(String(number), x + r * 1.2, y - r * 0.9);
  ctx.restore();
}

// The query frame with the points: those on this frame solid, those on other frames faded.
function redraw() {
  if (!state.image) return;
  ctx.drawImage(state.image, 0, 0, view.width, view.height);
  state.points.forEach(([x, y, f], i) => marker(x + 0.5, y + 0.5, colour(i), i + 1, f !== state.queryFrame));
}

// Editing the points makes the last result stale: it is dropped and the query frame comes back.
function edited(message) {
  if (state.done || state.cancelled || state.frames.length) {
    forgetResult();
    $("query").hidden = false;
  }
  state.shown = null;
  updatePoints();
  redraw();
  setError("");
  setStatus(message);
}

function removePoint(i) {
  if (state.busy || state.job) return;
  state.points.splice(i, 1);
  edited(`Removed point ${i + 1}; ${plural(state.points.length, "point")}.`);
}

$("undo").addEventListener("click", () => {
  if (!state.points.length) return;
  state.points.pop();
  edited(`Undone; ${plural(state.points.length, "point")}.`);
});

$("clear").addEventListener("click", () => {
  state.points = [];
  edited("Points cleared. Click points on the frame, then Track.");
});

// A CSS position p maps to the pixel coordinate x = p * width / cssWidth - 0.5 (pixel centres at integers,
// the top-left pixel's centre at 0, 0).
function toPixel(event) {
  const rect = view.getBoundingClientRect();
  return [
    ((event.clientX - rect.left) * view.width) / rect.width - 0.5,
    ((event.clientY - rect.top) * view.height) / rect.height - 0.5,
  ];
}

function nearest([x, y]) {
  let best = -1;
  let bestD = (radius() * 1.6) ** 2;
  state.points.forEach(([px, py, f], i) => {
    const d = (px - x) ** 2 + (py - y) ** 2;
    if (f === state.queryFrame && d <= bestD) { best = i; bestD = d; }
  });
  return best;
}

let drag = null; // {point, moved, from}: a press on a marker drags it; a click (no drag) adds a point
const round2 = (v) => Math.round(v * 100) / 100;

view.addEventListener("pointerdown", (event) => {
  if (!state.video || state.busy || state.job) return;
  if (state.shown !== null) edited(""); // editing again after a run: back to the query frame
  const at = toPixel(event);
  const i = nearest(at);
  drag = { point: i, moved: false, from: at };
  if (i >= 0) view.setPointerCapture(event.pointerId);
});

view.addEventListener("pointermove", (event) => {
  if (!drag || drag.point < 0) return;
  const [x, y] = toPixel(event);
  if (!drag.moved && (x - drag.from[0]) ** 2 + (y - drag.from[1]) ** 2 < 4) return; // a click's jitter
  const p = state.points[drag.point];
  p[0] = round2(Math.min(Math.max(x, -0.5), view.width - 0.5));
  p[1] = round2(Math.min(Math.max(y, -0.5), view.height - 0.5));
  drag.moved = true;
  redraw();
});

view.addEventListener("pointerup", (event) => {
  if (!drag) return;
  const { point, moved } = drag;
  drag = null;
  if (moved) {
    edited(`Moved point ${point + 1}.`);
    return;
  }
  const max = (state.info && state.info.max_points) || 256;
  if (state.points.length >= max) return setError(`At most ${max} points.`);
  const [x, y] = toPixel(event);
  state.points.push([round2(x), round2(y), state.queryFrame]);
  edited(`${plural(state.points.length, "point")}. Press Track when ready.`);
});

$("query-frame").addEventListener("input", async () => {
  const k = Number($("query-frame").value);
  $("query-label").textContent = String(k);
  const src = k === 0 ? state.video.first_frame : `/api/videos/${state.video.video}/frames/${k}.jpg`;
  try {
    const image = await loadImage(src);
    if (Number($("query-frame").value) !== k) return; // the slider moved on meanwhile
    state.image = image;
    state.queryFrame = k;
    edited(`New points go on frame ${k}.`);
  } catch (err) {
    setError(`Cannot show frame ${k}: ${err.message}`);
  }
});

// ------------------------------------------------------------------ replay

function showFrame(k) {
  const src = state.images[k];
  if (!src) return;
  state.shown = k;
  $("scrub").value = String(k);
  const total = state.video ? state.video.num_frames : state.images.length;
  $("frame-label").textContent = `frame ${k + 1} / ${total}`;
  const image = new Image();
  image.onload = () => { if (state.shown === k) ctx.drawImage(image, 0, 0, view.width, view.height); };
  image.src = src;
}

let timer = null;
function stopPlaying() {
  if (timer) clearInterval(timer);
  timer = null;
  state.playing = false;
  $("play").textContent = "Play";
}

$("play").addEventListener("click", () => {
  if (state.playing) return stopPlaying();
  if (!state.images.length) return;
  state.playing = true;
  $("play").textContent = "Pause";
  let k = state.shown === null || state.shown >= state.images.length - 1 ? 0 : state.shown;
  showFrame(k);
  const fps = Math.min(30, Math.max(5, (state.video && state.video.fps) || 25));
  timer = setInterval(() => {
    k += 1;
    if (k >= state.images.length) { stopPlaying(); return; }
    showFrame(k);
  }, 1000 / fps);
});

$("scrub").addEventListener("input", () => {
  stopPlaying();
  showFrame(Number($("scrub").value));
});

// ------------------------------------------------------------------ tracking

function summary(d) {
  const share = `${Math.round(100 * d.visible_share)}% visible`;
  if (!d.lost || !d.lost.length) return `${share}; no point lost`;
  const lost = d.lost.slice(0, 8);
  const more = d.lost.length > lost.length ? ` and ${d.lost.length - lost.length} more` : "";
  const pts = lost.map(([p]) => p).join(", ");
  const frames = lost.map(([, f]) => f).join(", ");
  return `${share}; point${lost.length > 1 ? "s" : ""} ${pts} lost at frame${lost.length > 1 ? "s" : ""} ${frames}${more}`;
}

$("track").addEventListener("click", async () => {
  setError("");
  forgetResult();
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
  setBusy(true);
  const bar = $("progress");
  bar.hidden = false;
  bar.value = 0;
  $("replay").hidden = false;
  $("query").hidden = true;
  $("scrub").max = String(job.num_frames - 1);
  const source = new EventSource(job.events);
  const started = performance.now();
  let follow = true; // the canvas follows the newest frame until the user scrubs
  $("scrub").addEventListener("input", () => { follow = false; }, { once: true });
  const finish = () => {
    source.close();
    state.job = null;
    bar.hidden = true;
    setBusy(false);
  };
  source.addEventListener("frame", (e) => {
    const msg = JSON.parse(e.data);
    if (msg.image) state.images[msg.frame] = msg.image;
    delete msg.image;
    state.frames.push(msg);
    bar.value = (msg.frame + 1) / msg.num_frames;
    if (follow && !state.playing) showFrame(msg.frame);
    const rate = state.frames.length / ((performance.now() - started) / 1000);
    setStatus(`Tracking: frame ${msg.frame + 1} / ${msg.num_frames} (${rate.toFixed(1)} frames/s)`);
  });
  source.addEventListener("done", (e) => {
    finish();
    state.done = JSON.parse(e.data);
    const d = state.done;
    setStatus(`Done: ${plural(d.points, "point")} through ${d.frames} frames (${d.fps} frames/s, ${d.model} on ` +
      `${d.device}): ${summary(d)}. Replay below, or edit the points and track again.`);
    showDownloads(d);
  });
  source.addEventListener("cancelled", (e) => {
    finish();
    state.cancelled = JSON.parse(e.data);
    setStatus(`Stopped after ${plural(state.cancelled.frames, "frame")}; replay them below, or press Track again.`);
  });
  source.addEventListener("failed", (e) => {
    finish();
    setError(`Tracking failed: ${JSON.parse(e.data).error}`);
  });
  source.onerror = () => {
    if (state.done || !state.job) return;
    finish();
    setError("Lost the connection to the server.");
  };
});

$("stop").addEventListener("click", async () => {
  if (!state.job) return;
  setStatus("Stopping…");
  try {
    const response = await fetch(`/api/jobs/${state.job}/cancel`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    if (!response.ok) throw new Error(await readError(response));
  } catch (err) {
    setError(`Cannot stop: ${err.message}`);
  }
});

fetch("/api/info")
  .then((r) => r.json())
  .then((info) => {
    state.info = info;
    if (info.palette && info.palette.length) PALETTE = info.palette;
    $("limits").textContent = `Model: ${info.model} on ${info.device}. Videos up to ${info.max_upload_mb} MB ` +
      `(${info.containers}); the first ${info.max_frames} frames are tracked.`;
    if (info.fallback) {
      // info.fallback: "sift is the weight-free fallback: expect drift; `track weights download distilldift` ..."
      const banner = $("banner");
      const [said, command, rest] = info.fallback.split("`");
      banner.textContent = said;
      if (command) {
        const code = document.createElement("code");
        code.textContent = command;
        banner.append(code, `${rest || ""}, then restart track serve.`);
      }
      banner.hidden = false;
    }
    updatePoints();
    redraw();
  })
  .catch(() => {});
