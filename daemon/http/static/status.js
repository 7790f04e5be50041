// The status page: the shards from GET /shards every few seconds, and a photo classified by POST /predict.
// Plain JavaScript, no library: the appliance is offline and its Content-Security-Policy allows only this file.
"use strict";

const REFRESH_MS = 2000;
const TOP = 5;
const TOKEN_KEY = "inferd-token";
const GIB = 2 ** 30;

class NeedToken extends Error {}

const $ = (id) => document.getElementById(id);

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// A JSON answer of the API; a 401 becomes NeedToken, any other error an Error with the API's own message.
async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) };
  const answer = await fetch(path, { ...options, headers });
  if (answer.status === 401) {
    throw new NeedToken();
  }
  let body = null;
  try {
    body = await answer.json();
  } catch {
    throw new Error(`${answer.status} ${answer.statusText}: the answer is not JSON`);
  }
  if (!answer.ok) {
    throw new Error(`${answer.status}: ${(body && body.error) || answer.statusText}`);
  }
  return body;
}

function askForToken() {
  const refused = sessionStorage.getItem(TOKEN_KEY) !== null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("main").hidden = true;
  $("token-form").hidden = false;
  $("token-message").textContent = refused ? "That token was refused; enter the right one." : "";
  $("token").focus();
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) {
    td.className = className;
  }
}

function fixed(value, digits) {
  return value === null || value === undefined ? "-" : value.toFixed(digits);
}

function gpuMemory(gpu) {
  if (!gpu || gpu.memory_used_bytes === null || gpu.memory_total_bytes === null) {
    return "-";
  }
  return `${(gpu.memory_used_bytes / GIB).toFixed(1)}/${(gpu.memory_total_bytes / GIB).toFixed(1)} GiB`;
}

function renderShards(document_) {
  const body = $("shards").tBodies[0];
  body.replaceChildren();
  const notes = [];
  for (const s of document_.shards) {
    const row = body.insertRow();
    row.dataset.shard = s.shard;
    cell(row, s.shard);
    cell(row, s.device_index === null ? s.device_name : `${s.device_index}: ${s.device_name}`);
    cell(row, s.status, s.status);
    cell(row, String(s.queue_depth), "num");
    cell(row, String(s.in_flight), "num");
    cell(row, fixed(s.images_per_s, 2), "num");
    cell(row, fixed(s.mean_batch_size, 1), "num");
    const util = s.gpu ? s.gpu.utilization_pct : null;
    cell(row, util === null ? "-" : `${util}%`, "num");
    cell(row, gpuMemory(s.gpu), "num");
    if (s.status === "failed" || s.status === "stuck") {
      notes.push(`${s.shard} ${s.status}: ${s.reason}`);
    } else if (s.fallback && s.live) {
      notes.push(`${s.shard} serves on the CPU: ${s.reason}`);
    }
  }
  const total = document_.shards.length;
  const down = document_.down;
  $("summary").textContent = total
    ? `${total} shard(s): ${total - down.length} live, ${down.length} down${down.length ? ` (${down.join(", ")})` : ""}`
    : "No shard registered: is the appliance starting?";
  $("notes").replaceChildren(
    ...notes.map((text) => {
      const item = document.createElement("li");
      item.textContent = text;
      return item;
    }),
  );
  $("updated").textContent = `updated ${new Date(document_.time * 1000).toLocaleTimeString()}`;
}

let refreshTimer = null;

async function refresh() {
  clearTimeout(refreshTimer);
  try {
    renderShards(await api("/shards"));
    $("shards-error").textContent = "";
    $("token-form").hidden = true;
    $("main").hidden = false;
  } catch (error) {
    if (error instanceof NeedToken) {
      askForToken();
      return; // no refresh until a token is given
    }
    $("main").hidden = false;
    $("shards-error").textContent = `Cannot read the shards: ${error.message}`;
  }
  refreshTimer = setTimeout(refresh, REFRESH_MS);
}

async function showModel() {
  try {
    const index = await api("/");
    $("model").textContent = `model ${index.model}, inferd ${index.version}`;
  } catch {
    // The table says what is wrong; the model's name is only a caption.
  }
}

function showPredictions(predictions) {
  $("predictions").replaceChildren(
    ...predictions.map((p) => {
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = p.label;
      const probability = document.createElement("span");
      probability.className = "p";
      probability.textContent = `${(p.probability * 100).toFixed(1)}%`;
      item.append(label, probability);
      return item;
    }),
  );
}

async function classify(file) {
  const message = $("predict-message");
  const preview = $("preview");
  if (preview.src) {
    URL.revokeObjectURL(preview.src);
  }
  preview.src = URL.createObjectURL(file);
  showPredictions([]);
  message.className = "";
  message.textContent = `Classifying ${file.name}...`;
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const answer = await api(`/predict?top=${TOP}`, { method: "POST", body: form });
    showPredictions(answer.predictions);
    message.textContent = "";
  } catch (error) {
    if (error instanceof NeedToken) {
      askForToken();
      return;
    }
    message.className = "error";
    message.textContent = `${file.name}: ${error.message}`;
  }
}

function wireUp() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    refresh();
    showModel();
  });
  $("photo").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) {
      classify(file);
    }
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) {
      classify(file);
    }
  });
}

wireUp();
refresh();
showModel();
