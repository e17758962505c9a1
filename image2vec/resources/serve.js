// The page of `image2vec serve`: it asks the server's JSON API and shows the answers.
// Every text from the server is set with textContent: a file name is never read as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // what the summary shows: {file} (an upload) or {name} (a folder image)

async function ask(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
  if (!response.ok || body.error) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

function say(id, text, info) {
  $(id).textContent = text;
  $(id).classList.toggle("info", Boolean(info));
}

function wordButton(word) {
  const button = document.createElement("button");
  button.className = "word";
  button.textContent = word;
  button.dataset.word = word;
  button.addEventListener("click", () => similar(word));
  return button;
}

function chip(word, score) {
  const li = document.createElement("li");
  li.append(wordButton(word), " ");
  const s = document.createElement("span");
  s.className = "score";
  s.textContent = score.toFixed(2);
  li.append(s);
  return li;
}

async function loadModel() {
  try {
    const m = await ask("/api/model");
    const parts = [`${m.system} model`, `${m.n_words} words`, `dimension ${m.dim}`, `features: ${m.extractor}`];
    if (m.source) parts.push(`trained on ${m.n_images ?? "?"} images of ${m.source.split("/").pop()}`);
    if (m.trained) parts.push(`on ${m.trained}`);
    $("model-info").textContent = parts.join(" \u00b7 ");
    $("model-info").title = m.source || "";
    if (m.folder) watchFolder(m.folder);
    else say("search-message", "No image folder: start the server with --images DIR to search one.", true);
  } catch (e) {
    $("model-info").textContent = e.message;
  }
}

async function watchFolder(status) {
  while (status.state === "extracting") {
    say("search-message", `Extracting the features of ${status.folder}: ${status.done} of ${status.total} images`, true);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    status = await ask("/api/folder").catch((e) => ({ state: "failed", error: e.message }));
  }
  if (status.state === "failed") say("search-message", `The folder's features could not be extracted: ${status.error}`);
  else say("search-message", `${status.total} images in ${status.folder}`, true);
}

async function summarize() {
  if (!current) return;
  const k = $("k").value || "3";
  say("summary-message", "summarizing\u2026", true);
  try {
    let s;
    if (current.file) {
      s = await ask(`/api/summarize?k=${encodeURIComponent(k)}&name=${encodeURIComponent(current.file.name)}`,
                    { method: "POST", body: current.file, headers: { "Content-Type": "application/octet-stream" } });
    } else {
      s = await ask(`/api/summary?k=${encodeURIComponent(k)}&name=${encodeURIComponent(current.name)}`);
    }
    showSummary(s);
    say("summary-message", "");
  } catch (e) {
    $("summary").hidden = true;
    say("summary-message", e.message);
  }
}

function showSummary(s) {
  const image = $("summary-image");
  if (image.dataset.url) URL.revokeObjectURL(image.dataset.url);
  if (current.file) {
    image.dataset.url = URL.createObjectURL(current.file);
    image.src = image.dataset.url;
  } else {
    delete image.dataset.url;
    image.src = `/images/${encodeURIComponent(current.name)}`;
  }
  $("summary-title").textContent = current.file ? current.file.name : current.name;
  const most = Math.max(...s.scores.map(Math.abs), 1e-12);
  const list = $("summary-words");
  list.replaceChildren();
  s.words.forEach((word, i) => {
    const li = document.createElement("li");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(120 * Math.abs(s.scores[i]) / most)}px`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = s.scores[i].toFixed(3);
    li.append(wordButton(word), bar, score);
    list.append(li);
  });
  if (!s.words.length) list.textContent = "(no word)";
  $("summary-next").replaceChildren(...s.next.map((n) => chip(n.word, n.score)));
  $("summary").hidden = false;
}

function choose(file) {
  if (!file) return;
  current = { file };
  summarize();
}

async function search(event) {
  event.preventDefault();
  const q = $("query").value;
  try {
    const r = await ask(`/api/search?q=${encodeURIComponent(q)}`);
    say("search-message", `images for ${r.words.join(" + ")} (${r.metric} score)`, true);
    $("results").replaceChildren(...r.results.map((hit) => {
      const button = document.createElement("button");
      button.className = "thumb";
      button.dataset.name = hit.name;
      const img = document.createElement("img");
      img.src = `/images/${encodeURIComponent(hit.name)}`;
      img.alt = hit.name;
      img.loading = "lazy";
      const caption = document.createElement("div");
      caption.textContent = `${hit.name} \u00b7 ${hit.score.toFixed(3)}`;
      button.append(img, caption);
      button.addEventListener("click", () => { current = { name: hit.name }; summarize(); });
      return button;
    }));
  } catch (e) {
    $("results").replaceChildren();
    say("search-message", e.message);
  }
}

async function similar(word) {
  $("word").value = word;
  try {
    const r = await ask(`/api/similar?word=${encodeURIComponent(word)}`);
    $("similar-title").textContent = `words that look like ${r.word}`;
    $("similar").replaceChildren(...r.similar.map((n) => chip(n.word, n.score)));
    say("word-message", "");
  } catch (e) {
    $("similar-title").textContent = "";
    $("similar").replaceChildren();
    say("word-message", e.message);
  }
}

$("file").addEventListener("change", (e) => choose(e.target.files[0]));
$("k").addEventListener("change", summarize);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  choose(e.dataTransfer.files[0]);
});
$("search-form").addEventListener("submit", search);
$("word-form").addEventListener("submit", (e) => { e.preventDefault(); similar($("word").value); });
loadModel();
