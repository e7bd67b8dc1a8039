// emovox web page: record (WebAudio -> 16 kHz PCM WAV encoded here) or pick a file, see the result.
// Plain JS, no build step, no third-party code; talks only to the server that served it.
"use strict";

const TARGET_SR = 16000;
const TIMELINE_MIN_S = 6;  // files longer than this also get their speech segments on a timeline
const COLORS = {
  neutral: "#8a94a6", calm: "#2fa39a", happy: "#e0a800", sad: "#3d6fd8", angry: "#d63b3b",
  fearful: "#8e5cc7", disgust: "#4f9a3a", surprised: "#f07f1a", boredom: "#9aa0a6",
};
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

const $ = (id) => document.getElementById(id);
let health = null;
let capture = null;  // {ctx, stream, source, node, chunks, mode, ws, started}

function colorFor(label, i) { return COLORS[label] || PALETTE[(i || 0) % PALETTE.length]; }
function pct(p) { return (100 * p).toFixed(1) + "%"; }
function setState(s) { document.body.dataset.state = s; }

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = false;
  setState("error");
}
function hideError() { $("error").hidden = true; }

function authHeaders() {
  const k = $("api-key").value.trim();
  return k ? { "X-API-Key": k } : {};
}
function labelsQuery(prefix) {
  const l = $("labels").value;
  return l ? prefix + "labels=" + encodeURIComponent(l) : "";
}

async function loadHealth() {
  try {
    const r = await fetch("/", { headers: { Accept: "application/json" } });
    health = await r.json();
  } catch (e) {
    $("service").textContent = "Cannot reach the service: " + e;
    return;
  }
  $("mock-banner").hidden = !health.mock;
  const a = health.models.audio;
  let line = `Speech model: ${a.name} (${a.kind}, version ${a.version}), ${health.labels.length} labels`;
  line += health.text_available ? " · text model: " + health.models.text.name : " · no text model";
  if (health.mock) line += " · MOCK";
  $("service").textContent = line;
  $("service").dataset.ready = "1";
  $("key-row").hidden = !health.auth.required;
  $("text-card").hidden = !health.text_available;
  const saved = sessionStorage.getItem("emovox-api-key");
  if (saved) $("api-key").value = saved;
}

// -- results --------------------------------------------------------------------------------

function renderBars(probs, top) {
  const el = $("bars");
  el.replaceChildren();
  Object.entries(probs).forEach(([label, p], i) => {
    const row = document.createElement("div");
    row.className = "bar" + (label === top ? " top" : "");
    row.dataset.label = label;
    row.style.display = "contents";
    const name = document.createElement("span");
    name.className = "bar-label";
    name.textContent = label;
    const track = document.createElement("div");
    track.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = (100 * p).toFixed(2) + "%";
    fill.style.background = colorFor(label, i);
    track.appendChild(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = pct(p);
    row.append(name, track, value);
    el.appendChild(row);
  });
}

function showResult(res, { live = false } = {}) {
  const probs = res.all_probabilities || res.scores || {};
  const confidence = res.confidence !== undefined && typeof res.confidence === "number" ? res.confidence : res.score;
  $("result-card").hidden = false;
  $("result-emotion").textContent = res.emotion;
  $("result-emotion").style.color = colorFor(res.emotion, Object.keys(probs).indexOf(res.emotion));
  $("result-confidence").textContent = pct(confidence);
  $("result-mood").textContent = "music mood: " + res.music_mood;
  const notes = [];
  if (live) notes.push(res.final ? `final, ${res.time_s.toFixed(1)} s streamed` : `live, ${res.time_s.toFixed(1)} s`);
  if (res.duration_s !== undefined) notes.push(`${res.duration_s.toFixed(1)} s clip`);
  if (res.low_confidence) notes.push(res.warning || "low confidence (below the service's threshold)");
  if (res.unsupported_labels) notes.push("this model cannot express: " + res.unsupported_labels.join(", "));
  if (res.silent) notes.push("the clip is (near) silent");
  if (res.mock) notes.push("MOCK answer");
  $("result-note").textContent = notes.join(" · ");
  renderBars(probs, res.emotion);
}

function niceStep(duration) {
  for (const s of [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300]) if (duration / s <= 8) return s;
  return 600;
}

const MIN_GAP_S = 0.001;  // pauses shorter than this between segments are not drawn

function fmtS(t) { return t.toFixed(2); }

function placedBand(start, end, d, kind) {
  const band = document.createElement("div");
  band.className = "band " + kind;
  band.dataset.start = String(start);
  band.dataset.end = String(end);
  band.style.left = ((100 * start) / d).toFixed(3) + "%";
  band.style.width = ((100 * (end - start)) / d).toFixed(3) + "%";
  return band;
}

function speechBand(seg, d, color) {
  const band = placedBand(seg.start, seg.end, d, "speech");
  band.dataset.emotion = seg.emotion;
  band.style.background = color;
  band.title = `${seg.emotion}: ${fmtS(seg.start)}–${fmtS(seg.end)} s, confidence ${pct(seg.confidence)}`;
  if ((100 * (seg.end - seg.start)) / d > 9) band.textContent = seg.emotion;
  band.addEventListener("click", () => seekTo(seg.start));
  return band;
}

function gapBand(start, end, d) {
  const band = placedBand(start, end, d, "gap");
  band.dataset.speech = "false";
  band.title = `no speech: ${fmtS(start)}–${fmtS(end)} s`;
  return band;
}

// the stretches without speech: before, between and after the segments
function speechGaps(segments, d) {
  const edges = [0, ...segments.flatMap((s) => [s.start, s.end]), d];
  const out = [];
  for (let i = 0; i < edges.length; i += 2) {
    if (edges[i + 1] - edges[i] > MIN_GAP_S) out.push([edges[i], edges[i + 1]]);
  }
  return out;
}

function seekTo(t) {
  const player = $("player");
  player.currentTime = t;
  player.play().catch(() => {});  // autoplay may be refused: the seek stands
}

function renderAxis(d) {
  const axis = $("timeline-axis");
  axis.replaceChildren();
  const step = niceStep(d);
  for (let t = 0; t <= d + 1e-6; t += step) {
    const tick = document.createElement("span");
    tick.style.left = ((100 * t) / d).toFixed(3) + "%";
    tick.textContent = t + " s";
    axis.appendChild(tick);
  }
}

function legendItem(text, swatchClass, color) {
  const item = document.createElement("span");
  const swatch = document.createElement("i");
  if (swatchClass) swatch.className = swatchClass;
  if (color) swatch.style.background = color;
  item.append(swatch, text);
  return item;
}

function renderLegend(seen, withGaps) {
  const legend = $("timeline-legend");
  legend.replaceChildren(...seen.map((emotion, i) => legendItem(emotion, "", colorFor(emotion, i))));
  if (withGaps) legend.appendChild(legendItem("no speech", "gap", ""));
}

function segmentRow(seg, i, color) {
  const row = document.createElement("tr");
  const cells = [String(i + 1), "", "", pct(seg.confidence) + (seg.low_confidence ? " (low)" : "")];
  cells.forEach((text) => { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); });
  const seek = document.createElement("button");
  seek.type = "button";
  seek.className = "link";
  seek.title = "play from " + fmtS(seg.start) + " s";
  seek.textContent = `${fmtS(seg.start)}–${fmtS(seg.end)} s`;
  seek.addEventListener("click", () => seekTo(seg.start));
  row.cells[1].appendChild(seek);
  row.cells[2].append(legendItem(seg.emotion, "", color));
  return row;
}

function showNoSpeech(res) {
  $("segments-view").hidden = true;
  $("segments-summary").textContent =
    `No speech found in this ${res.duration.toFixed(1)} s recording, so there is nothing to show over time.`;
}

function showSegments(res) {
  $("timeline-card").hidden = false;
  if (!res.segments.length) { showNoSpeech(res); return; }
  const d = res.duration || 1;
  const seen = [...new Set(res.segments.map((s) => s.emotion))];
  const color = (emotion) => colorFor(emotion, seen.indexOf(emotion));
  const gaps = speechGaps(res.segments, d);
  const bands = [...res.segments.map((s) => speechBand(s, d, color(s.emotion))), ...gaps.map(([a, b]) => gapBand(a, b, d))];
  $("timeline").replaceChildren(...bands.sort((a, b) => a.dataset.start - b.dataset.start));
  renderAxis(d);
  renderLegend(seen, gaps.length > 0);
  $("segments-rows").replaceChildren(...res.segments.map((s, i) => segmentRow(s, i, color(s.emotion))));
  const n = res.segments.length;
  $("segments-summary").textContent =
    `${n} speech segment${n === 1 ? "" : "s"}: ${res.speech.toFixed(1)} s of speech in ${d.toFixed(1)} s`;
  $("segments-view").hidden = false;
}

// -- requests -------------------------------------------------------------------------------

async function postAudio(path, blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  const r = await fetch(path + labelsQuery("?"), { method: "POST", body: form, headers: authHeaders() });
  let body;
  try { body = await r.json(); } catch (e) { body = {}; }
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

async function analyse(blob, name) {
  hideError();
  setState("busy");
  $("player").src = URL.createObjectURL(blob);
  $("player").hidden = false;
  $("timeline-card").hidden = true;
  try {
    const res = await postAudio("/predict-emotion/", blob, name);
    showResult(res);
    if (res.duration_s > TIMELINE_MIN_S) showSegments(await postAudio("/predict-segments/", blob, name));
    setState("done");
  } catch (e) {
    showError(e.message);
  }
}

// -- microphone -----------------------------------------------------------------------------

function encodeWav(samples, sampleRate) {
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const v = new DataView(buffer);
  const str = (off, s) => { for (let i = 0; i < s.length; i++) v.setUint8(off + i, s.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + samples.length * 2, true); str(8, "WAVE");
  str(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, sampleRate, true); v.setUint32(28, sampleRate * 2, true); v.setUint16(32, 2, true); v.setUint16(34, 16, true);
  str(36, "data"); v.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    v.setInt16(44 + 2 * i, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([buffer], { type: "audio/wav" });
}

function toPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
  }
  return out;
}

async function resampleTo16k(samples, fromRate) {
  if (fromRate === TARGET_SR) return samples;
  const n = Math.ceil((samples.length * TARGET_SR) / fromRate);
  const offline = new OfflineAudioContext(1, n, TARGET_SR);
  const buffer = offline.createBuffer(1, samples.length, fromRate);
  buffer.copyToChannel(samples, 0);
  const src = offline.createBufferSource();
  src.buffer = buffer;
  src.connect(offline.destination);
  src.start();
  return (await offline.startRendering()).getChannelData(0);
}

async function startCapture(mode) {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  let ctx;
  try { ctx = new AudioContext({ sampleRate: TARGET_SR }); } catch (e) { ctx = new AudioContext(); }
  const source = ctx.createMediaStreamSource(stream);
  const node = ctx.createScriptProcessor(4096, 1, 1);
  const c = { ctx, stream, source, node, chunks: [], mode, ws: null, started: Date.now() };
  node.onaudioprocess = (ev) => {
    const x = new Float32Array(ev.inputBuffer.getChannelData(0));
    if (c.mode === "clip") c.chunks.push(x);
    else if (c.ws && c.ws.readyState === WebSocket.OPEN) c.ws.send(toPcm16(x).buffer);
    const secs = (Date.now() - c.started) / 1000;
    $("rec-status").textContent = `${c.mode === "clip" ? "recording" : "streaming"} ${secs.toFixed(1)} s`;
    const limit = health ? Math.min(health.limits.max_duration_s, 300) : 60;
    if (secs >= limit) stopCapture();
  };
  source.connect(node);
  node.connect(ctx.destination);  // a ScriptProcessor runs only when connected; its output is silence
  return c;
}

function releaseCapture(c) {
  c.node.onaudioprocess = null;
  c.node.disconnect();
  c.source.disconnect();
  c.stream.getTracks().forEach((t) => t.stop());
  c.ctx.close();
}

async function stopCapture() {
  const c = capture;
  if (!c) return;
  capture = null;
  releaseCapture(c);
  $("record").textContent = "● Record";
  $("record").classList.remove("recording");
  $("live").textContent = "Live";
  $("live").classList.remove("recording");
  $("rec-status").textContent = "";
  if (c.mode === "clip") {
    const n = c.chunks.reduce((a, x) => a + x.length, 0);
    const all = new Float32Array(n);
    let off = 0;
    for (const x of c.chunks) { all.set(x, off); off += x.length; }
    if (n === 0) { showError("nothing was recorded"); return; }
    const wav = encodeWav(await resampleTo16k(all, c.ctx.sampleRate), TARGET_SR);
    await analyse(wav, "recording.wav");
  } else if (c.ws && c.ws.readyState === WebSocket.OPEN) {
    c.ws.send(JSON.stringify({ event: "end" }));
  }
}

async function toggleRecord(mode) {
  if (capture) { await stopCapture(); return; }
  hideError();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("this browser gives no microphone access here (it needs https or localhost)");
    return;
  }
  try {
    capture = await startCapture(mode);
  } catch (e) {
    showError("microphone unavailable: " + e.message);
    return;
  }
  const button = mode === "clip" ? $("record") : $("live");
  button.textContent = "■ Stop";
  button.classList.add("recording");
  if (mode === "live") openStream(capture);
}

function openStream(c) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const params = new URLSearchParams({ sample_rate_hz: String(c.ctx.sampleRate) });
  if ($("labels").value) params.set("labels", $("labels").value);
  if ($("api-key").value.trim()) params.set("api_key", $("api-key").value.trim());
  const ws = new WebSocket(`${proto}//${location.host}/stream?${params}`);
  ws.binaryType = "arraybuffer";
  c.ws = ws;
  $("timeline-card").hidden = true;
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.status === "error") { showError(msg.error); return; }
    if (msg.emotion) showResult(msg, { live: true });
    if (msg.final) ws.close();
  };
  ws.onclose = (ev) => {
    if (ev.code !== 1000 && ev.code !== 1005 && ev.reason) showError("stream closed: " + ev.reason);
    if (capture === c) stopCapture();
  };
}

// -- text -----------------------------------------------------------------------------------

async function analyseText() {
  const text = $("text-input").value;
  hideError();
  const out = $("text-result");
  out.replaceChildren();
  try {
    const r = await fetch("/predict-text/", {
      method: "POST", body: JSON.stringify({ text }),
      headers: { "Content-Type": "application/json", ...authHeaders() },
    });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    const chips = document.createElement("div");
    chips.className = "chips";
    const predicted = body.labels.length ? body.labels : [{ label: body.label, score: body.score }];
    predicted.forEach((l) => {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = `${l.label} ${pct(l.score)}`;
      chips.appendChild(chip);
    });
    out.appendChild(chips);
  } catch (e) {
    showError(e.message);
  }
}

// -- wiring ---------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("record").addEventListener("click", () => toggleRecord("clip"));
  $("live").addEventListener("click", () => toggleRecord("live"));
  $("file").addEventListener("change", (ev) => {
    const f = ev.target.files[0];
    if (f) analyse(f, f.name);
  });
  $("text-go").addEventListener("click", analyseText);
  $("api-key").addEventListener("change", () => sessionStorage.setItem("emovox-api-key", $("api-key").value.trim()));
  setState("idle");
  loadHealth();
});
