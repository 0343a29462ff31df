// The newbie serve page: no build step, no libraries, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const PRESETS = {
  demo: { sampler: "midpoint", steps: 18, shift: 6, cfg: 5, cfg_trunc: 0.25, renorm: 0 },
  sample: { sampler: "midpoint", steps: 18, shift: 6, cfg: 4, cfg_trunc: 100, renorm: 1 },
  draft: { sampler: "euler", steps: 8, shift: 6, cfg: 5, cfg_trunc: 0.25, renorm: 0 },
};
const NUMBER_FIELDS = ["width", "height", "steps", "shift", "cfg", "cfg_trunc", "renorm", "count"];
const TEXT_FIELDS = ["sampler", "system_prompt", "negative_prompt"];

let token = localStorage.getItem("newbie-token") || "";
let currentJob = null;
let nextCursor = null;
const characters = [];

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  if (r.status === 401) {
    $("token-box").hidden = false;
    throw new Error("this server needs a token: enter it at the top");
  }
  let data = null;
  const type = r.headers.get("Content-Type") || "";
  if (type.startsWith("application/json")) data = await r.json();
  return { status: r.status, data, headers: r.headers };
}

// ---- prompt editor with live checking -------------------------------------------------------

let checkTimer = null;
let checkSeq = 0;

function scheduleCheck() {
  clearTimeout(checkTimer);
  checkTimer = setTimeout(checkPrompt, 250);
}

async function checkPrompt() {
  const text = $("prompt").value;
  const seq = ++checkSeq;
  const ta = $("prompt");
  if (!text.trim()) {
    ta.className = ""; $("issues").innerHTML = ""; $("prompt-status").textContent = "";
    return;
  }
  try {
    const r = await api("POST", "/v1/prompt/check", { prompt: text });
    if (seq !== checkSeq) return;  // an older answer
    if (r.status !== 200) { $("prompt-status").textContent = (r.data && r.data.error) || ("check failed: " + r.status); return; }
    const c = r.data;
    ta.className = c.valid ? "valid" : "invalid";
    const list = $("issues");
    list.innerHTML = "";
    for (const i of c.issues) {
      const li = document.createElement("li");
      li.className = i.severity;
      li.textContent = `line ${i.line}, column ${i.column}: ${i.severity}: ${i.message}`;
      li.dataset.line = i.line; li.dataset.column = i.column;
      li.addEventListener("click", () => selectPosition(i.line, i.column));
      list.appendChild(li);
    }
    $("prompt-status").textContent = c.plain ? "plain prompt (no XML tags)" :
      c.valid ? `XML OK: ${c.characters} character(s), general_tags with ${c.general_tags} field(s)` + (c.warnings ? `, ${c.warnings} warning(s)` : "") :
      `${c.errors} error(s), ${c.warnings} warning(s)`;
  } catch (e) {
    $("prompt-status").textContent = e.message;
  }
}

function selectPosition(line, column) {
  const ta = $("prompt");
  const lines = ta.value.split("\n");
  let offset = 0;
  for (let k = 0; k < line - 1 && k < lines.length; k++) offset += lines[k].length + 1;
  offset += Math.max(0, column - 1);
  ta.focus();
  ta.setSelectionRange(offset, offset + 1);
}

async function formatPrompt() {
  const r = await api("POST", "/v1/prompt/format", { prompt: $("prompt").value });
  if (r.status === 200) { $("prompt").value = r.data.text; checkPrompt(); }
  else $("prompt-status").textContent = (r.data && r.data.error) || ("format failed: " + r.status);
}

// ---- the character form ---------------------------------------------------------------------

function escapeXML(s) { return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }

function readCharacter() {
  const c = {};
  for (const el of document.querySelectorAll("[data-char]")) if (el.value.trim()) c[el.dataset.char] = el.value.trim();
  return c;
}

function addCharacter() {
  const c = readCharacter();
  if (Object.keys(c).length === 0) return;
  characters.push(c);
  for (const el of document.querySelectorAll("[data-char]")) el.value = "";
  $("built-count").textContent = `${characters.length} character(s) added`;
}

function buildXML() {
  const chars = characters.slice();
  const pending = readCharacter();
  if (Object.keys(pending).length) chars.push(pending);
  const blocks = [];
  chars.forEach((c, k) => {
    const fields = ["n", "gender", "appearance", "clothing", "expression", "action", "position"]
      .filter((f) => c[f]).map((f) => `<${f}>${escapeXML(c[f])}</${f}>`);
    blocks.push([`<character_${k + 1}>`, ...fields, `</character_${k + 1}>`].join("\n"));
  });
  const general = [];
  for (const el of document.querySelectorAll("[data-general]")) {
    if (el.value.trim()) general.push(`<${el.dataset.general}>${escapeXML(el.value.trim())}</${el.dataset.general}>`);
  }
  if (general.length) blocks.push(["<general_tags>", ...general, "</general_tags>"].join("\n"));
  $("prompt").value = blocks.join("\n\n");
  characters.length = 0;
  $("built-count").textContent = "";
  checkPrompt();
}

// ---- parameters -----------------------------------------------------------------------------

function applyPreset(name) {
  const p = PRESETS[name];
  for (const k in p) $(k).value = p[k];
}

function readParameters() {
  const body = { prompt: $("prompt").value };
  for (const f of NUMBER_FIELDS) body[f] = Number($(f).value);
  for (const f of TEXT_FIELDS) body[f] = $(f).value;
  const seed = $("seed").value.trim();
  body.seed = seed === "" || seed === "random" ? "random" : Number(seed);
  return body;
}

function useSettings(p) {
  $("prompt").value = p.prompt;
  for (const f of NUMBER_FIELDS) if (p[f] !== undefined) $(f).value = p[f];
  for (const f of TEXT_FIELDS) if (p[f] !== undefined) $(f).value = p[f];
  $("seed").value = p.seed;
  checkPrompt();
  window.scrollTo(0, 0);
}

// ---- jobs: submit, follow, cancel -----------------------------------------------------------

async function submit() {
  $("submit-status").textContent = "";
  try {
    const r = await api("POST", "/v1/jobs", readParameters());
    if (r.status === 429) {
      $("submit-status").textContent = `the queue is full; try again in ${r.headers.get("Retry-After")} s`;
      return;
    }
    if (r.status !== 201) {
      $("submit-status").textContent = (r.data && (r.data.field ? r.data.field + ": " : "") + r.data.error) || ("refused: " + r.status);
      return;
    }
    follow(r.data);
  } catch (e) { $("submit-status").textContent = e.message; }
}

function imageURL(url) {
  // with a token, images come through fetch (an <img> cannot send the header)
  if (!token) return Promise.resolve(url);
  return fetch(url, { headers: headers() }).then((r) => r.blob()).then((b) => URL.createObjectURL(b));
}

async function follow(job) {
  currentJob = job.id;
  $("current").hidden = false;
  $("job-id").textContent = job.id;
  $("progress").value = 0;
  $("progress-text").textContent = job.state === "queued" ? `queued, position ${job.position ?? "?"}` : job.state;
  $("preview").hidden = true;
  $("result").innerHTML = "";
  $("cancel").disabled = false;
  const r = await fetch(`/v1/jobs/${job.id}/events`, { headers: headers() });
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "", data = "{}";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        if (line.startsWith("data: ")) data = line.slice(6);
      }
      if (job.id === currentJob) await onEvent(job, name, JSON.parse(data));
    }
  }
  if (job.id === currentJob) { $("cancel").disabled = true; }
  loadGallery(true);
}

async function onEvent(job, name, d) {
  const text = $("progress-text");
  switch (name) {
    case "queued": case "position": text.textContent = `queued, position ${d.position}`; break;
    case "started": text.textContent = d.attempt > 1 ? `running (attempt ${d.attempt})` : "running"; break;
    case "step": {
      const total = d.steps * d.images, done = d.image * d.steps + d.step;
      $("progress").value = done / total;
      text.textContent = `image ${d.image + 1}/${d.images}, step ${d.step}/${d.steps}, t=${d.t.toFixed(3)}, ETA ${d.eta_s.toFixed(1)} s`;
      break;
    }
    case "preview": $("preview").src = "data:image/png;base64," + d.png; $("preview").hidden = false; break;
    case "image": {
      const img = document.createElement("img");
      img.src = await imageURL(d.url);
      img.alt = `image ${d.index}`;
      $("result").appendChild(img);
      break;
    }
    case "done": $("progress").value = 1; text.textContent = "done"; break;
    case "error": text.textContent = "failed: " + d.message; break;
    case "cancelled": text.textContent = "cancelled"; break;
  }
}

async function cancel() {
  if (!currentJob) return;
  $("cancel").disabled = true;
  const r = await api("DELETE", `/v1/jobs/${currentJob}`);
  if (r.status >= 400 && r.data) $("progress-text").textContent = r.data.error;
}

// ---- gallery --------------------------------------------------------------------------------

async function loadGallery(reset) {
  if (reset) { nextCursor = null; $("gallery").innerHTML = ""; }
  const q = nextCursor ? `?limit=12&before=${nextCursor}` : "?limit=12";
  let r;
  try { r = await api("GET", "/v1/jobs" + q); } catch (e) { $("gallery").textContent = e.message; return; }
  if (r.status !== 200) return;
  for (const j of r.data.jobs) $("gallery").appendChild(await card(j));
  nextCursor = r.data.next;
  $("more").hidden = !nextCursor;
}

async function card(j) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.job = j.id;
  const p = j.parameters;
  for (const u of j.images) {
    const img = document.createElement("img");
    img.src = await imageURL(u);
    img.alt = p.prompt.slice(0, 80);
    div.appendChild(img);
  }
  const state = document.createElement("div");
  state.className = "state-" + j.state;
  state.textContent = j.state + (j.error && j.state !== "cancelled" ? ": " + j.error : "");
  div.appendChild(state);
  const prompt = document.createElement("div");
  prompt.className = "prompt";
  prompt.textContent = p.prompt;
  div.appendChild(prompt);
  const meta = document.createElement("div");
  meta.className = "muted";
  meta.textContent = `${p.width}x${p.height}, ${p.sampler} ${p.steps} steps, shift ${p.shift}, cfg ${p.cfg} (trunc ${p.cfg_trunc}, renorm ${p.renorm}), seed ${p.seed}` +
    (p.count > 1 ? `, ${p.count} images` : "");
  div.appendChild(meta);
  const again = document.createElement("button");
  again.type = "button";
  again.textContent = "Use these settings again";
  again.addEventListener("click", () => useSettings(p));
  div.appendChild(again);
  return div;
}

// ---- start ----------------------------------------------------------------------------------

async function start() {
  $("token").value = token;
  $("token").addEventListener("change", () => {
    token = $("token").value.trim();
    localStorage.setItem("newbie-token", token);
    init();
  });
  $("prompt").addEventListener("input", scheduleCheck);
  $("format").addEventListener("click", formatPrompt);
  $("add-character").addEventListener("click", addCharacter);
  $("build").addEventListener("click", buildXML);
  $("preset").addEventListener("change", () => applyPreset($("preset").value));
  $("submit").addEventListener("click", submit);
  $("cancel").addEventListener("click", cancel);
  $("more").addEventListener("click", () => loadGallery(false));
  init();
}

async function init() {
  try {
    const h = await (await fetch("/healthz")).json();
    $("health").textContent = `${h.queued} queued, worker ${h.worker}`;
    const m = await api("GET", "/v1/models");
    if (m.status === 200) {
      $("models").textContent = `${m.data.models.dit} on ${m.data.device}, ${m.data.precision}`;
      $("steps").max = m.data.limits.max_steps; $("count").max = m.data.limits.max_count;
      $("width").max = m.data.limits.max_width; $("height").max = m.data.limits.max_height;
    }
    await loadGallery(true);
  } catch (e) { $("submit-status").textContent = e.message; }
}

document.addEventListener("DOMContentLoaded", start);
