// The search page: a text query (or an image, picked or dropped) -> POST /v1/search -> thumbnails and
// scores. /?q=... runs that query on load, so a search can be linked. With an API key on the server, the
// key is asked for once (kept for this tab only) and sent as a bearer token; thumbnails are fetched with
// it and shown as blobs.
"use strict";

const $ = (id) => document.getElementById(id);
const K = 24;
let index = null;

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = sessionStorage.getItem("pe-api-key");
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    $("key").hidden = false;
    throw new Error("this server needs an API key: enter it above");
  }
  return response;
}

async function answer(response) {
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((data.error && data.error.message) || response.status + " " + response.statusText);
  return data;
}

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function describe() {
  try {
    index = await answer(await call("GET", "/v1/index"));
    $("about").textContent = `${index.rows.toLocaleString()} rows of ${index.dataset} · ${index.model}`;
    if (!index.text_queries) $("q").placeholder = "This dataset is searched with images: drop one";
  } catch (e) {
    $("about").textContent = e.message;
  }
}

async function thumbnail(url, img) {
  try {
    const response = await call("GET", url);
    if (!response.ok) throw new Error(response.statusText);
    img.src = URL.createObjectURL(await response.blob());
  } catch (e) {
    img.replaceWith(placeholder("no picture"));
  }
}

function placeholder(text) {
  const div = document.createElement("div");
  div.className = "thumb none";
  div.textContent = text;
  return div;
}

function show(hits, label, ms) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of hits) {
    const li = document.createElement("li");
    li.className = "hit";
    li.dataset.rank = hit.rank;
    li.dataset.row = hit.row;
    li.dataset.id = hit.id;
    li.dataset.score = hit.score.toFixed(6);
    if (hit.thumbnail) {
      const img = document.createElement("img");
      img.className = "thumb";
      img.alt = hit.id;
      li.append(img);
      thumbnail(hit.thumbnail, img);
    } else {
      li.append(placeholder("no picture"));
    }
    const caption = document.createElement("div");
    caption.className = "caption";
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = `#${hit.rank} · ${hit.score.toFixed(3)}`;
    const id = document.createElement("div");
    id.className = "id";
    id.textContent = hit.id;
    caption.append(score, id);
    li.append(caption);
    list.append(li);
  }
  status(`${hits.length} results for ${label} in ${ms} ms`);
}

async function search(query, label) {
  status(`Searching for ${label}…`);
  const start = performance.now();
  try {
    const data = await answer(await call("POST", "/v1/search", { ...query, k: K }));
    show(data.data, label, Math.round(performance.now() - start));
  } catch (e) {
    $("results").replaceChildren();
    status(e.message, true);
  }
}

function searchText(text) {
  const url = new URL(location.href);
  url.searchParams.set("q", text);
  history.replaceState(null, "", url);
  return search({ text }, `“${text}”`);
}

function searchFile(file) {
  const reader = new FileReader();
  reader.onload = () => search({ image: reader.result }, file.name || "the image");
  reader.readAsDataURL(file);
}

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("q").value.trim();
  if (text) searchText(text);
});
$("file").addEventListener("change", () => {
  if ($("file").files.length) searchFile($("file").files[0]);
});
$("key").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("pe-api-key", $("apikey").value);
  $("key").hidden = true;
  start();
});
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  $("drop").hidden = false;
});
document.addEventListener("dragleave", (event) => {
  if (event.target === $("drop")) $("drop").hidden = true;
});
document.addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").hidden = true;
  const file = event.dataTransfer.files[0];
  if (file) searchFile(file);
});

async function start() {
  await describe();
  const q = new URLSearchParams(location.search).get("q");
  if (q) {
    $("q").value = q;
    await searchText(q);
  }
}

start();
