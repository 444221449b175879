// CT-FM semantic search page: viewers of the CT-FM grid (S, P, L voxels), a click sets the query, the server searches.
"use strict";

const $ = (id) => document.getElementById(id);
const AXIS_DIM = { axial: 0, coronal: 1, sagittal: 2 };  // the grid axis a view scrolls along
const VIEW_WIDTH = 420;  // canvas pixels across
const state = { config: null, point: null, job: null, viewers: {} };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
  if (message) document.body.dataset.state = "error";
}

// the server encodes a scan in the background as soon as it is picked, so the first search on it is quick
function prepare(id) {
  fetch("/api/prepare", { method: "POST", body: JSON.stringify({ scan: id }) }).catch(() => {});
  watchEncoding();
}

// each viewer's title says how far the background encoding of its scan is, until every shown scan is encoded
async function watchEncoding() {
  if (state.watching) return;
  state.watching = true;
  for (let busy = true; busy;) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const encoded = await getJSON("/api/encoded").catch(() => ({}));
    busy = false;
    for (const viewer of Object.values(state.viewers)) {
      const [done, needed] = encoded[viewer.scanId] || [0, 1];
      const text = done < needed ? `encoding in the background: ${done}/${needed} passes` : "encoded";
      viewer.encoding.textContent = viewer.failed ? "" : text;
      busy ||= !viewer.failed && done < needed;
    }
  }
  state.watching = false;
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `${url}: ${response.status} ${response.statusText}` }));
  if (!response.ok || body.error) throw new Error(body.error || `${url}: ${response.status}`);
  return body;
}

const fmt = (values, digits = 1) => values.map((v) => Number(v).toFixed(digits)).join(", ");

// One scan in one view: a canvas, a slider through the slices, markers for the query or the match.
class Viewer {
  constructor(container, scanId, role) {
    this.scanId = scanId;
    this.role = role;  // "source" or "target"
    this.job = null;   // the search whose heatmap is shown, and its stage ("coarse" or "final")
    this.stage = null;
    this.marker = null;  // {centre: [s, p, l], box: [s, p, l] or null}
    this.el = document.createElement("div");
    this.el.className = "viewer";
    this.el.dataset.scan = scanId;
    this.el.innerHTML = `<h2><span></span> <small class="encoding"></small></h2><canvas></canvas><input type="range" min="0" value="0"><div class="slice"></div><div class="result"></div>`;
    this.el.querySelector("h2 span").textContent = `${role === "source" ? "Source" : "Target"}: ${scanId}`;
    this.encoding = this.el.querySelector(".encoding");
    this.canvas = this.el.querySelector("canvas");
    this.slider = this.el.querySelector("input");
    this.result = this.el.querySelector(".result");
    container.appendChild(this.el);
    this.slider.addEventListener("input", () => this.render());
    this.canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      this.setIndex(Number(this.slider.value) + Math.sign(event.deltaY));
    });
    if (role === "source") this.canvas.addEventListener("click", (event) => this.click(event));
    this.ready = this.load();
  }

  async load() {
    this.result.textContent = "reading the scan...";
    try {
      this.info = await getJSON(`/api/scan?id=${encodeURIComponent(this.scanId)}`);
      this.result.textContent = "";
      this.layout();
    } catch (err) {
      this.result.textContent = "";
      this.failed = true;
      showError(err.message);
    }
  }

  // rows/cols of the current view, and mm per row/col (coronal and sagittal: superior up)
  dims() {
    const [S, P, L] = this.info.shape, [ss, sp, sl] = this.info.spacing;
    const axis = $("axis").value;
    if (axis === "axial") return { rows: P, cols: L, rowMm: sp, colMm: sl };
    if (axis === "coronal") return { rows: S, cols: L, rowMm: ss, colMm: sl };
    return { rows: S, cols: P, rowMm: ss, colMm: sp };
  }

  layout() {
    if (!this.info) return;
    const d = this.dims(), n = this.info.shape[AXIS_DIM[$("axis").value]];
    this.canvas.width = VIEW_WIDTH;
    this.canvas.height = Math.round(VIEW_WIDTH * (d.rows * d.rowMm) / (d.cols * d.colMm));
    this.slider.max = n - 1;
    const centre = this.marker ? this.marker.centre[AXIS_DIM[$("axis").value]] : (n - 1) / 2;
    this.setIndex(Math.round(centre));
  }

  setIndex(index) {
    if (!this.info) return;
    this.slider.value = Math.max(0, Math.min(Number(this.slider.max), index));
    this.render();
  }

  toCanvas(v) {  // grid voxel (fractional) -> canvas pixel
    const d = this.dims(), S = this.info.shape[0], axis = $("axis").value;
    const [row, col] = axis === "axial" ? [v[1], v[2]] : axis === "coronal" ? [S - 1 - v[0], v[2]] : [S - 1 - v[0], v[1]];
    return [(col + 0.5) * this.canvas.width / d.cols, (row + 0.5) * this.canvas.height / d.rows];
  }

  toVoxel(x, y) {  // canvas pixel -> grid voxel on the current slice
    const d = this.dims(), S = this.info.shape[0], axis = $("axis").value, index = Number(this.slider.value);
    const col = Math.min(d.cols - 1, Math.floor(x * d.cols / this.canvas.width));
    const row = Math.min(d.rows - 1, Math.floor(y * d.rows / this.canvas.height));
    if (axis === "axial") return [index, row, col];
    if (axis === "coronal") return [S - 1 - row, index, col];
    return [S - 1 - row, col, index];
  }

  render() {
    if (!this.info) return;
    const index = Number(this.slider.value), axis = $("axis").value;
    this.el.querySelector(".slice").textContent = `${axis} slice ${index + 1} / ${Number(this.slider.max) + 1}`;
    const url = `/api/slice?scan=${encodeURIComponent(this.scanId)}&axis=${axis}&index=${index}` +
      `&window=${encodeURIComponent($("window").value)}` +
      // the stage too: a page reuses the image it has for a URL, and the final heatmap replaces the coarse one
      (this.job ? `&job=${this.job}&stage=${this.stage}` : "");
    const image = new Image();
    image.onload = () => {
      if (index !== Number(this.slider.value)) return;  // a later slice is on its way
      const ctx = this.canvas.getContext("2d");
      ctx.drawImage(image, 0, 0, this.canvas.width, this.canvas.height);
      this.drawMarker(ctx, index);
      this.el.dataset.rendered = `${axis}:${index}:${this.job || ""}:${this.stage || ""}`;
    };
    image.onerror = () => fetch(url).then((r) => r.json()).then((b) => showError(b.error)).catch(() => showError(`cannot load ${url}`));
    image.src = url;
  }

  drawMarker(ctx, index) {
    if (!this.marker) return;
    const { centre, box } = this.marker, dim = AXIS_DIM[$("axis").value];
    ctx.strokeStyle = this.role === "source" ? "#0f0" : "#ff0";
    ctx.lineWidth = 2;
    const [x, y] = this.toCanvas(centre);
    ctx.beginPath();
    ctx.moveTo(x - 8, y); ctx.lineTo(x + 8, y); ctx.moveTo(x, y - 8); ctx.lineTo(x, y + 8);
    ctx.stroke();
    if (!box) return;
    const lo = centre.map((c, a) => c - (box[a] - 1) / 2 - 0.5), hi = centre.map((c, a) => c + (box[a] - 1) / 2 + 0.5);
    if (index < lo[dim] || index > hi[dim]) return;  // the box does not cross this slice
    const [x0, y0] = this.toCanvas(lo), [x1, y1] = this.toCanvas(hi);  // lo/hi are voxel edges
    ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
  }

  click(event) {
    if (!this.info) return;
    const rect = this.canvas.getBoundingClientRect();
    const voxel = this.toVoxel((event.clientX - rect.left) * this.canvas.width / rect.width,
                               (event.clientY - rect.top) * this.canvas.height / rect.height);
    state.point = voxel;
    this.marker = { centre: voxel, box: null };
    $("query").textContent = `Query point: grid voxel (S, P, L) ${voxel.join(", ")}. Box and search: step 5.`;
    $("query").dataset.point = JSON.stringify(voxel);
    this.render();
    updateRunButton();
  }

  show(job, result) {
    this.job = job;
    this.stage = result.stage;
    this.shown = `${job}:${result.stage}`;
    this.marker = { centre: result.centre_grid, box: result.box };
    this.result.innerHTML = "";
    const line = document.createElement("div");
    line.className = "match";
    line.dataset.worldMm = JSON.stringify(result.world_mm);
    line.dataset.fileVoxel = JSON.stringify(result.file_voxel);
    line.dataset.stage = result.stage;
    const label = result.stage === "coarse" ? "coarse match (coarser grid, fewer windows; refining...)" : "best match";
    line.textContent = `${label}: ` +
      `${fmt(result.world_mm, 2)} mm (world RAS); file voxel ${fmt(result.file_voxel)}; ` +
      `cosine similarity ${result.similarity.toFixed(3)} (after ${result.seconds} s)`;
    this.result.appendChild(line);
    this.layout();
  }
}

// each target's match as it comes: a coarse one first for a scan the encoder has not seen, then the final one
async function showResults(job, wanted) {
  for (const result of job.results) {
    const viewer = state.viewers[`target:${result.target}`];
    if (viewer && wanted(viewer, result)) { await viewer.ready; viewer.show(job.id, result); }
  }
}

function updateRunButton() {
  $("run").disabled = !(state.point && selectedTargets().length && document.body.dataset.state !== "running");
}

const selectedTargets = () => [...document.querySelectorAll("input[name=target]:checked")].map((c) => c.value);

function setSource() {
  $("source-viewer").innerHTML = "";
  state.point = null;
  $("query").textContent = "4. Click a point in the source.";
  delete $("query").dataset.point;
  state.viewers.source = new Viewer($("source-viewer"), $("source").value, "source");
  prepare($("source").value);
  updateRunButton();
}

function setTargets() {
  const wanted = selectedTargets(), keep = {};
  for (const id of wanted) keep[id] = state.viewers[`target:${id}`] || null;
  $("target-viewers").innerHTML = "";
  for (const id of wanted) {
    const viewer = keep[id];
    if (viewer) $("target-viewers").appendChild(viewer.el);
    else { state.viewers[`target:${id}`] = new Viewer($("target-viewers"), id, "target"); prepare(id); }
  }
  for (const key of Object.keys(state.viewers)) {
    if (key.startsWith("target:") && !wanted.includes(key.slice(7))) delete state.viewers[key];
  }
  updateRunButton();
}

async function runSearch() {
  showError("");
  const box = ["box-s", "box-p", "box-l"].map((id) => Number($(id).value));
  const request = { source: $("source").value, point: state.point, targets: selectedTargets(), box };
  document.body.dataset.state = "running";
  updateRunButton();
  $("progress").hidden = false;
  try {
    let job = await getJSON("/api/search", { method: "POST", headers: { "Content-Type": "application/json" },
                                               body: JSON.stringify(request) });
    while (job.state === "queued" || job.state === "running") {
      $("progress-bar").max = job.steps;
      $("progress-bar").value = job.step;
      $("progress-text").textContent = `${job.message} (${job.elapsed} s)`;
      await showResults(job, (viewer, result) => viewer.shown !== `${job.id}:${result.stage}`);
      await new Promise((resolve) => setTimeout(resolve, 300));
      job = await getJSON(`/api/job?id=${job.id}`);
    }
    if (job.state === "error") throw new Error(job.error);
    $("progress-bar").value = $("progress-bar").max;
    $("progress-text").textContent = `searched ${job.results.length} target(s) in ${job.seconds} s`;
    const q = job.query;
    state.viewers.source.marker = { centre: q.centre_grid, box: q.box };
    state.viewers.source.render();
    $("query").textContent = `Query box ${q.box.join(" x ")} voxels centred at ${fmt(q.world_mm, 2)} mm ` +
      `(file voxel ${fmt(q.file_voxel)}).`;
    $("query").dataset.worldMm = JSON.stringify(q.world_mm);
    await showResults(job, () => true);
    document.body.dataset.state = "done";
  } catch (err) {
    showError(err.message);
  }
  updateRunButton();
}

async function start() {
  try {
    state.config = await getJSON("/api/config");
  } catch (err) {
    showError(err.message);
    return;
  }
  const c = state.config;
  $("about").textContent = `weights ${c.weights}; encoder ${c.precision}; window stride ${c.stride.join(" x ")} voxels`;
  for (const id of c.scans) {
    $("source").add(new Option(id, id));
    const label = document.createElement("label");
    label.innerHTML = `<span><input type="checkbox" name="target"> </span>`;
    label.querySelector("input").value = id;
    label.querySelector("span").append(id);
    $("targets").appendChild(label);
  }
  for (const a of c.axes) $("axis").add(new Option(a, a));
  for (const w of c.windows) $("window").add(new Option(w, w));
  ["box-s", "box-p", "box-l"].forEach((id, i) => { $(id).value = c.box[i]; });
  $("source").addEventListener("change", setSource);
  $("targets").addEventListener("change", setTargets);
  $("axis").addEventListener("change", () => Object.values(state.viewers).forEach((v) => v.layout()));
  $("window").addEventListener("change", () => Object.values(state.viewers).forEach((v) => v.render()));
  $("run").addEventListener("click", runSearch);
  document.body.dataset.state = "idle";
  setSource();
}

start();
