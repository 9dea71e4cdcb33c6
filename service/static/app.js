// hashkd search page: plain JavaScript over the REST API (/v1/search, /v1/info, thumbnails).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, bits: 64 };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function apiError(response) {
  // Every API error is JSON {"detail": "..."}; fall back to the status line otherwise.
  try {
    const body = await response.json();
    if (body && typeof body.detail === "string") return `${response.status}: ${body.detail}`;
  } catch (_) { /* not JSON */ }
  return `${response.status}: ${response.statusText || "request failed"}`;
}

function labelText(metadata) {
  if (!metadata || typeof metadata !== "object") return "";
  if (typeof metadata.label === "string" || typeof metadata.label === "number") return String(metadata.label);
  if (Array.isArray(metadata.labels)) return "labels " + metadata.labels.join(", ");
  const keys = Object.keys(metadata).filter((k) => k !== "path");
  return keys.length ? JSON.stringify(Object.fromEntries(keys.map((k) => [k, metadata[k]]))) : "";
}

function sourcePath(metadata) {
  // Where the item came from (code sets and `hashkd add` record it as metadata `path`).
  return metadata && typeof metadata.path === "string" ? metadata.path : "";
}

function hitElement(hit) {
  const li = document.createElement("li");
  li.className = "hit";
  li.dataset.id = hit.id;
  li.dataset.distance = hit.distance;
  const path = sourcePath(hit.metadata);
  const img = document.createElement("img");
  img.className = "thumb";
  img.alt = path || `item ${hit.id}`;
  img.loading = "lazy";
  img.src = `/v1/items/${encodeURIComponent(hit.id)}/thumbnail`;
  img.addEventListener("error", () => {
    // Items added as bare codes have no thumbnail: show a placeholder instead.
    const ph = document.createElement("div");
    ph.className = "thumb placeholder";
    ph.textContent = "no image";
    img.replaceWith(ph);
  });
  const meta = document.createElement("div");
  meta.className = "meta";
  const dist = document.createElement("div");
  dist.className = "dist";
  dist.textContent = `d = ${hit.distance}`;
  const id = document.createElement("div");
  id.className = "labels";
  const label = labelText(hit.metadata);
  id.textContent = `#${hit.id}` + (label ? ` · ${label}` : "");
  meta.append(dist);
  if (path) {
    const name = document.createElement("div");
    name.className = "path";
    name.textContent = path.split("/").slice(-2).join("/"); // the file and its folder
    name.title = path;
    meta.append(name);
  }
  meta.append(id);
  li.append(img, meta);
  return li;
}

function render(body) {
  const grid = $("grid");
  grid.replaceChildren(...body.results.map(hitElement));
  $("count").textContent = `(${body.results.length}${body.truncated ? ", truncated" : ""})`;
  $("status").textContent = `${body.results.length} hits in ${body.took_ms.toFixed(1)} ms (${body.bits}-bit codes)`;
}

async function search() {
  if (!state.file) return;
  showError("");
  $("status").textContent = "searching…";
  const form = new FormData();
  form.append("image", state.file, state.file.name || "query");
  const params = new URLSearchParams();
  if ($("use-radius").checked) params.set("radius", $("radius").value);
  else params.set("k", $("k").value);
  try {
    const response = await fetch(`/v1/search?${params}`, { method: "POST", body: form });
    if (!response.ok) {
      $("grid").replaceChildren();
      $("count").textContent = "";
      $("status").textContent = "";
      showError(await apiError(response));
      return;
    }
    render(await response.json());
  } catch (err) {
    $("status").textContent = "";
    showError(`The service could not be reached: ${err}`);
  }
}

function setFile(file) {
  if (!file) return;
  state.file = file;
  $("search").disabled = false;
  const preview = $("preview");
  if (file.type.startsWith("image/")) {
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
  } else {
    preview.hidden = true;
  }
  $("drop-text").textContent = file.name || "selected image";
  search();
}

async function loadInfo() {
  const dl = $("info");
  try {
    const response = await fetch("/v1/info");
    if (!response.ok) throw new Error(await apiError(response));
    const info = await response.json();
    state.bits = info.bits;
    $("radius").max = String(info.bits);
    const rows = [
      ["protocol", info.protocol],
      ["bits", info.bits],
      ["query model", `${info.query_model.backbone} (${info.query_model.role}, ${info.query_model.backend})`],
      ["database model", `${info.database_model.backbone} (${info.database_model.role}, ${info.database_model.backend})`],
      ["index", `${info.index.spec} (${info.index.kind})`],
      ["index size", info.index.size],
      ["items", info.items],
      ["batching", info.batching.enabled ? `on (≤${info.batching.max_batch}, ${info.batching.max_wait_ms} ms)` : "off"],
      ["version", info.version],
    ];
    dl.replaceChildren(...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = String(v);
      dd.dataset.key = k;
      return [dt, dd];
    }));
  } catch (err) {
    dl.replaceChildren();
    showError(`Service info unavailable: ${err.message || err}`);
  }
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => setFile(e.target.files[0]));
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => setFile(e.dataTransfer.files[0]));
  $("k").addEventListener("input", () => { $("k-value").textContent = $("k").value; });
  $("radius").addEventListener("input", () => { $("r-value").textContent = $("radius").value; });
  ["k", "radius"].forEach((id) => $(id).addEventListener("change", search));
  $("use-radius").addEventListener("change", () => {
    const radius = $("use-radius").checked;
    $("k-row").hidden = radius;
    $("r-row").hidden = !radius;
    search();
  });
  $("search").addEventListener("click", search);
  loadInfo();
}

wire();
