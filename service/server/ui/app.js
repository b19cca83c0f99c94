// The page: /info names the model, /encode turns images into tokens (all of them in one request), then each
// card (card.js) asks /decode for its picture and /ui/input for the exact (S, S, 3) image the model was given.

import { $, api, setStatus, showError, useKey } from "./api.js";
import { Card } from "./card.js";

let model = null; // /info's "model": name, image_size, num_tokens, codebook_size, device, dtype, ...
let lastFiles = []; // encoded again when the resize mode or the API key changes
let runs = 0; // only the newest run may fill the results

async function loadInfo() {
  const info = await (await api("info")).json();
  model = info.model;
  const facts = [["Model", model.name], ["Image size", `${model.image_size} × ${model.image_size} px`],
    ["Tokens", model.num_tokens], ["Codebook", model.codebook_size],
    ["Device", [model.device, model.dtype].filter(Boolean).join(", ")]];
  const hash = model.content_hash || (model.meta && model.meta.content_hash);
  if (hash) facts.push(["Content hash", String(hash).slice(0, 12)]);
  const dl = document.createElement("dl");
  for (const [term, value] of facts) {
    const div = document.createElement("div");
    div.append(Object.assign(document.createElement("dt"), { textContent: term }),
      Object.assign(document.createElement("dd"), { textContent: value }));
    dl.append(div);
  }
  $("#model").replaceChildren(dl);
}

// Names the file behind each images[i] in the service's messages.
function withNames(message, files) {
  return message.replace(/images\[(\d+)\]/g, (m, i) => (files[i] ? `${m} "${files[i].name}"` : m));
}

async function run(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  const mine = ++runs;
  lastFiles = files;
  showError("");
  const resize = $("#resize").value;
  const what = files.length === 1 ? `"${files[0].name}"` : `${files.length} images`;
  setStatus(`Encoding ${what}…`);
  const form = new FormData();
  for (const f of files) form.append("images", f, f.name);
  let answer;
  try {
    if (!model) await loadInfo();
    answer = await (await api(`encode?resize=${resize}`, { method: "POST", body: form })).json();
  } catch (e) {
    if (mine !== runs) return;
    setStatus("");
    showError(`Could not encode ${what}: ${withNames(e.message, files)}`);
    return;
  }
  if (mine !== runs) return;
  const cards = files.map((f, i) => new Card(f, answer.tokens[i], answer, resize, Boolean(model.prefix_decodable)));
  for (const img of document.querySelectorAll("#results img")) URL.revokeObjectURL(img.src); // the old cards' blobs
  $("#results").replaceChildren(...cards.map((c) => c.el));
  await Promise.all(cards.map((c) => c.start()));
  if (mine === runs) setStatus(`Encoded ${what} into ${answer.num_tokens} tokens each.`);
}

function wire() {
  $("#files").addEventListener("change", (e) => run(e.target.files));
  $("#resize").addEventListener("change", () => run(lastFiles));
  // Anywhere on the page takes a drop; without preventDefault the browser would open the file instead.
  window.addEventListener("dragover", (e) => {
    e.preventDefault();
    document.body.classList.add("dragging");
  });
  window.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) document.body.classList.remove("dragging");
  });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    run(e.dataTransfer.files);
  });
  document.addEventListener("paste", (e) => {
    const files = [...e.clipboardData.files];
    if (!files.length) return; // text pasted into a token cell stays text
    e.preventDefault();
    run(files);
  });
  $("#auth").addEventListener("submit", async (e) => {
    e.preventDefault();
    useKey($("#api-key").value.trim());
    try {
      await loadInfo();
      if (lastFiles.length) await run(lastFiles);
    } catch (err) {
      showError(`Could not load the model's details: ${err.message}`);
    }
  });
}

wire();
loadInfo().catch((e) => showError(`Could not load the model's details: ${e.message}`));
