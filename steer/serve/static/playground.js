// The steer playground: pick vectors, move their multipliers, stream steered next to unsteered.
"use strict";

const $ = (id) => document.getElementById(id);
let modelName = null;

function selectedSteers() {
  const steers = [];
  for (const row of document.querySelectorAll(".vector")) {
    const box = row.querySelector("input[type=checkbox]");
    const slider = row.querySelector("input[type=range]");
    if (box.checked) {
      steers.push({ vector: box.value, multiplier: Number(slider.value), positions: $("positions").value });
    }
  }
  return steers;
}

function requestBody(steered) {
  const body = {
    model: modelName,
    messages: [{ role: "user", content: $("prompt").value }],
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    seed: Number($("seed").value),
    stream: true,
  };
  if (steered) body.steer = selectedSteers();
  return body;
}

function showRequest() {
  $("request").textContent = JSON.stringify(requestBody(true), null, 2);
}

function addVector(container, vector) {
  const row = document.createElement("div");
  row.className = "vector";
  const [low, high] = vector.multiplier_range || [-4, 4];
  const id = "v-" + vector.id.replace(/[^A-Za-z0-9_-]/g, "_");
  row.innerHTML = `<input type="checkbox" id="${id}-on"><label for="${id}-on"></label>` +
    `<input type="range" id="${id}-mult" step="0.5"><output id="${id}-value"></output>`;
  const box = row.querySelector("input[type=checkbox]");
  const label = row.querySelector("label");
  const slider = row.querySelector("input[type=range]");
  const value = row.querySelector("output");
  box.value = vector.id;
  label.textContent = vector.id.replace(/^library:/, "");
  label.title = vector.concept || vector.source || "";
  slider.min = Math.min(low, 0);
  slider.max = Math.max(high, 0);
  slider.value = vector.recommended_multiplier ?? 1;
  value.textContent = slider.value;
  slider.addEventListener("input", () => { value.textContent = slider.value; box.checked = true; showRequest(); });
  box.addEventListener("change", showRequest);
  container.appendChild(row);
}

async function loadVectors() {
  const [models, vectors] = await Promise.all([
    fetch("/v1/models").then((r) => r.json()),
    fetch("/v1/vectors").then((r) => r.json()),
  ]);
  modelName = models.data[0].id;
  $("model").textContent = modelName;
  const container = $("vectors");
  container.textContent = "";
  const usable = vectors.data.filter((v) => v.source !== "library" || v.model === modelName || !v.model);
  const list = usable.length ? usable : vectors.data;
  for (const vector of list) addVector(container, vector);
  if (!list.length) container.innerHTML = '<span class="muted">no vectors: start the server with --vector NAME=FILE</span>';
  showRequest();
}

async function streamInto(body, textId, statusId) {
  const out = $(textId);
  const status = $(statusId);
  out.textContent = "";
  out.classList.remove("error");
  status.textContent = "generating…";
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (!response.ok) {
    const error = await response.json().catch(() => ({ error: { message: response.statusText } }));
    out.textContent = error.error.message;
    out.classList.add("error");
    status.textContent = `HTTP ${response.status}`;
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) !== -1) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) { out.textContent += "\n" + chunk.error.message; out.classList.add("error"); continue; }
      const choice = chunk.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) out.textContent += choice.delta.content;
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  status.textContent = finish ? `done (${finish})` : "done";
  out.dataset.done = "1";
}

async function send() {
  $("send").disabled = true;
  for (const id of ["reply-plain", "reply-steered"]) delete $(id).dataset.done;
  showRequest();
  try {
    await Promise.all([
      streamInto(requestBody(false), "reply-plain", "status-plain"),
      streamInto(requestBody(true), "reply-steered", "status-steered"),
    ]);
  } finally {
    $("send").disabled = false;
  }
}

for (const id of ["prompt", "max-tokens", "temperature", "seed", "positions"]) {
  $(id).addEventListener("input", showRequest);
}
$("send").addEventListener("click", send);
loadVectors().catch((error) => { $("vectors").textContent = "could not load vectors: " + error; });
