// unclip serve's page: submit a job, poll its progress, show the gallery. Plain JavaScript, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;   // the id of the job this page waits for
let opened = null;    // the gallery entry in the viewer
let start = null;     // the first end of an interpolation, once chosen

function headers(extra = {}) {
  const key = localStorage.getItem("unclip-api-key");
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (response.status === 401) {
    const key = prompt("This server needs its API key:");
    if (key) {
      localStorage.setItem("unclip-api-key", key);
      return api(path, options);
    }
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
}

async function imageUrl(url) {  // through fetch, so that an API key reaches /files too
  const response = await fetch(url, { headers: headers() });
  return URL.createObjectURL(await response.blob());
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function loadInfo() {
  const info = await api("/api/info");
  $("model").textContent = `model: ${info.model}`;
  $("size").innerHTML = info.sizes.map((s) => `<option value="${s}x${s}">${s} × ${s}</option>`).join("");
  $("size").value = `${info.sizes[info.sizes.length - 1]}x${info.sizes[info.sizes.length - 1]}`;
  $("n").max = Math.min(10, info.max_batch);
  const stages = Object.entries(info.stages).map(([stage, settings]) => {
    const fields = Object.entries(settings).filter(([name]) => ["steps", "guidance", "scheduler"].includes(name))
      .map(([name, s]) => name === "scheduler"
        ? `<label>${name} <select data-keyword="${s.keyword}"><option value="">default</option>` +
          info.schedulers.map((x) => `<option>${x}</option>`).join("") + "</select></label>"
        : `<label>${name} <input type="number" step="${name === "steps" ? 1 : 0.5}" data-keyword="${s.keyword}" ` +
          `placeholder="${s.default ?? ""}"></label>`);
    return `<div class="stage"><strong>${stage}</strong> ${fields.join(" ")}</div>`;
  });
  $("stages").innerHTML = stages.join("");
}

function settings() {
  const out = {};
  for (const field of document.querySelectorAll("[data-keyword]")) {
    if (field.value === "") continue;
    const name = field.dataset.keyword;
    out[name] = field.tagName === "SELECT" ? field.value : Number(field.value);
  }
  return out;
}

function request(extra = {}) {
  return {
    prompt: $("prompt").value, negative_prompt: $("negative").value, size: $("size").value,
    n: Number($("n").value), seed: $("random").checked ? -1 : Number($("seed").value), settings: settings(), ...extra,
  };
}

async function run(body) {
  $("generate").disabled = true;
  $("interrupt").disabled = false;
  $("bar").hidden = false;
  $("bar").value = 0;
  try {
    const job = await api("/api/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify(body) });
    current = job.id;
    status("queued");
    for (;;) {
      const state = await api(`/api/jobs/${job.id}`);
      if (state.progress) {
        const p = state.progress;
        $("bar").value = p.progress;
        status(`${p.stage || "starting"}: step ${p.step} of ${p.steps}` + (p.queued ? ` (${p.queued} waiting)` : ""));
      } else if (state.state === "queued") status("queued");
      if (state.state === "done") { status(`done: ${state.images.length} image(s)`); break; }
      if (state.state === "cancelled") { status("interrupted"); break; }
      if (state.state === "failed") { status(state.error, true); break; }
      await new Promise((r) => setTimeout(r, 300));
    }
  } catch (err) {
    status(err.message, true);
  } finally {
    current = null;
    $("generate").disabled = false;
    $("interrupt").disabled = true;
    $("bar").hidden = true;
    await loadGallery();
  }
}

async function loadGallery() {
  const { images } = await api("/api/gallery");
  const gallery = $("gallery");
  gallery.innerHTML = "";
  for (const image of images) {  // newest first
    const img = document.createElement("img");
    img.alt = image.metadata.prompt;
    img.title = image.metadata.prompt;
    img.dataset.file = image.file;
    imageUrl(image.url).then((u) => { img.src = u; });
    img.addEventListener("click", () => view(image, img));
    gallery.appendChild(img);
  }
}

function view(image, img) {
  opened = image;
  $("full").src = img.src;
  $("parameters").textContent = image.parameters;
  $("download").href = img.src;
  $("download").download = image.file;
  $("to").hidden = !start || start.file === image.file;
  $("to").textContent = start ? `Interpolate from ${start.file} to here` : "";
  $("viewer").showModal();
}

async function uploadVariations(file) {
  const form = new FormData();
  form.append("image", file);
  form.append("n", $("n").value);
  form.append("size", $("size").value);
  form.append("response_format", "url");
  if (!$("random").checked) form.append("seed", $("seed").value);
  status("variations: working");
  try {
    await api("/v1/images/variations", { method: "POST", body: form });
    status("variations: done");
  } catch (err) {
    status(err.message, true);
  }
  await loadGallery();
}

$("form").addEventListener("submit", (event) => { event.preventDefault(); run(request()); });
$("interrupt").addEventListener("click", async () => {
  if (current) await api(`/api/jobs/${current}`, { method: "DELETE" });
});
$("vary").addEventListener("click", () => {
  $("viewer").close();
  run(request({ variation_of: opened.file, prompt: opened.metadata.prompt }));
});
$("from").addEventListener("click", () => {
  start = opened;
  $("viewer").close();
  status(`interpolation from ${start.file}: open its other end`);
});
$("to").addEventListener("click", () => {
  $("viewer").close();
  const ends = [start.file, opened.file];
  start = null;
  run(request({ interpolate: ends, n: Number($("frames").value) }));
});
$("close").addEventListener("click", () => $("viewer").close());
$("upload").addEventListener("change", (event) => { if (event.target.files[0]) uploadVariations(event.target.files[0]); });
$("random").addEventListener("change", () => { $("seed").disabled = $("random").checked; });
$("seed").disabled = true;
loadInfo().then(loadGallery).catch((err) => status(err.message, true));
