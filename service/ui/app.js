// The page's logic: /info names the model, /encode turns images into tokens, /decode turns tokens into a
// picture, /ui/input returns the exact (S, S, 3) image the model was given. Relative URLs throughout, so the
// page also works behind a proxy that serves the service under a path prefix.
"use strict";

const KEY_STORE = "titok-api-key";
const $ = (selector, root = document) => root.querySelector(selector);
let model = null; // /info's "model": name, image_size, num_tokens, codebook_size, device, dtype, ...
let lastFiles = []; // encoded again when the resize mode or the API key changes
let runs = 0; // only the newest run may fill the results

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// fetch with the API key (when one was given), every failure turned into a sentence a person can read
async function api(path, init = {}) {
  const headers = { ...(init.headers || {}) };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = `Bearer ${key}`;
  let res;
  try {
    res = await fetch(path, { ...init, headers });
  } catch (e) {
    throw new ApiError(0, "network", `could not reach the service (${e.message})`);
  }
  if (res.ok) return res;
  let code = `http_${res.status}`;
  let message = res.statusText || "the request failed";
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not JSON (a proxy's error page, say): the status line is all there is
  }
  if (res.status === 401) {
    showAuth();
    message += "; enter the service's API key above";
  }
  const retry = res.headers.get("Retry-After");
  if (retry) message += `; retry in ${retry} s`;
  throw new ApiError(res.status, code, `${message} (HTTP ${res.status}, ${code})`);
}

function setStatus(text) {
  $("#status").textContent = text;
}

function showError(text) {
  const el = $("#error");
  el.textContent = text;
  el.hidden = !text;
}

function showAuth() {
  const form = $("#auth");
  if (!form.hidden) return;
  form.hidden = false;
  $("#api-key").focus();
}

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

// Golden-angle hues: neighbouring IDs get far-apart colours; three lightness steps separate more of them.
function colour(id) {
  return `hsl(${(id * 137.508) % 360} 62% ${34 + (id % 3) * 11}%)`;
}

// PNG bytes -> RGBA pixels, exactly as stored: no colour management, no premultiplied alpha
async function pixelsOf(blob) {
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
}

// PSNR over the RGB samples, as model/quality.py computes it (MSE floored at 1e-10)
function psnr(a, b) {
  if (a.width !== b.width || a.height !== b.height) return null;
  let sum = 0;
  for (let i = 0; i < a.data.length; i += 4) {
    for (let c = 0; c < 3; c++) sum += (a.data[i + c] - b.data[i + c]) ** 2;
  }
  return 10 * Math.log10(255 ** 2 / Math.max(sum / (a.width * a.height * 3), 1e-10));
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // the Clipboard API needs a secure context (https or localhost): fall back to a selected textarea
    const area = Object.assign(document.createElement("textarea"), { value: text });
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    if (!ok) throw new Error("the browser refused to copy");
  }
}

class Card {
  constructor(file, tokens, answer, resize) {
    this.file = file;
    this.original = [...tokens];
    this.tokens = [...tokens];
    this.codebook = answer.codebook_size;
    this.resize = resize;
    this.selected = 0;
    this.decodes = 0; // bumped by each decode request: an answer to an older one is dropped
    this.el = $("#card").content.firstElementChild.cloneNode(true);
    const name = file.name || "pasted image";
    this.stem = name.replace(/\.[^.]*$/, "") || "image";
    this.el.setAttribute("aria-label", name);
    $(".name", this.el).textContent = name;
    const k = tokens.length;
    $(".recon-caption", this.el).textContent = `Reconstruction from ${k} tokens`;
    $(".recon", this.el).alt = `Reconstruction of ${name} from its ${k} tokens`;
    $(".tokens-legend", this.el).textContent = `${k} tokens, IDs from 0 to ${this.codebook - 1}`;
    if (answer.content_hash) {
      const hash = $(".hash", this.el);
      hash.textContent = `Model content hash: ${answer.content_hash}`;
      hash.hidden = false;
    }
    this.buildGrid();
    $(".randomise", this.el).addEventListener("click", () => this.randomise(this.selected));
    $(".reset", this.el).addEventListener("click", () => this.reset());
    $(".copy", this.el).addEventListener("click", () => this.copy());
  }

  buildGrid() {
    const grid = $(".grid", this.el);
    const k = this.tokens.length;
    // a power of two near sqrt(2K): 8 x 4 for 32 tokens, 16 wide at most so a phone still fits it
    grid.style.setProperty("--cols", Math.min(16, 2 ** Math.ceil(Math.log2(Math.sqrt(2 * k)))));
    this.cells = this.tokens.map((_, i) => {
      const cell = Object.assign(document.createElement("input"), {
        type: "text", inputMode: "numeric", autocomplete: "off", spellcheck: false, className: "cell" });
      cell.setAttribute("aria-label", `Token ${i + 1}`);
      cell.addEventListener("focus", () => this.select(i));
      cell.addEventListener("change", () => this.commit(i));
      cell.addEventListener("keydown", (e) => this.key(i, e));
      grid.append(cell);
      return cell;
    });
    this.tokens.forEach((_, i) => this.paint(i));
  }

  paint(i) {
    const id = this.tokens[i];
    const cell = this.cells[i];
    cell.value = String(id);
    cell.title = `Token ${i + 1}: ID ${id}`;
    cell.style.setProperty("--bg", colour(id));
    cell.classList.toggle("edited", id !== this.original[i]);
  }

  select(i) {
    this.cells[this.selected].classList.remove("selected");
    this.selected = i;
    this.cells[i].classList.add("selected");
    $(".randomise", this.el).textContent = `Randomise token ${i + 1}`;
  }

  key(i, e) {
    const steps = { ArrowUp: 1, ArrowDown: -1 };
    if (e.key === "Enter") {
      e.preventDefault();
      this.commit(i);
    } else if (e.key in steps) {
      e.preventDefault();
      this.set(i, (this.tokens[i] + steps[e.key] + this.codebook) % this.codebook);
    } else if (e.key === "r" || e.key === "R") {
      e.preventDefault();
      this.randomise(i);
    } else if (e.key === "Escape") {
      this.paint(i);
    }
  }

  commit(i) {
    const text = this.cells[i].value.trim();
    if (!/^\d+$/.test(text) || Number(text) >= this.codebook) {
      this.fail(`Token ${i + 1}: "${text}" is not a token ID; IDs are whole numbers from 0 to ${this.codebook - 1}.`);
      this.paint(i);
      return;
    }
    if (Number(text) !== this.tokens[i]) this.set(i, Number(text));
  }

  randomise(i) {
    const current = this.tokens[i];
    let id = current;
    while (id === current && this.codebook > 1) id = Math.floor(Math.random() * this.codebook);
    this.select(i);
    this.set(i, id);
  }

  set(i, id) {
    this.tokens[i] = id;
    this.paint(i);
    this.decode();
  }

  reset() {
    this.tokens = [...this.original];
    this.tokens.forEach((_, i) => this.paint(i));
    this.decode();
  }

  async copy() {
    try {
      await copyText(JSON.stringify({ tokens: this.tokens })); // the body /decode takes, ready for curl
      setStatus(`Copied the ${this.tokens.length} tokens of ${this.file.name || "the image"} as JSON.`);
    } catch (e) {
      this.fail(`Could not copy the tokens: ${e.message}`);
    }
  }

  fail(text) {
    const el = $(".card-error", this.el);
    el.textContent = text;
    el.hidden = !text;
  }

  start() {
    return Promise.all([this.loadInput(), this.decode()]);
  }

  async loadInput() {
    const img = $(".input", this.el);
    try {
      const res = await api(`ui/input?resize=${this.resize}`, { method: "POST", body: this.file,
        headers: { "Content-Type": this.file.type || "application/octet-stream" } });
      const blob = await res.blob();
      this.inputPixels = await pixelsOf(blob);
      img.src = URL.createObjectURL(blob);
      await img.decode();
      const s = this.inputPixels.width;
      $(".input-caption", this.el).textContent = `Model input, ${s} × ${s} (${this.resize})`;
      img.alt = `Model input: ${this.file.name || "the image"} resized to ${s} × ${s} (${this.resize})`;
      this.showPsnr();
    } catch (e) {
      this.fail(`Could not show the model input: ${e.message}`);
    }
  }

  async decode() {
    const n = ++this.decodes;
    this.el.setAttribute("aria-busy", "true");
    $(".reset", this.el).disabled = this.tokens.every((t, i) => t === this.original[i]);
    try {
      const res = await api("decode", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ tokens: this.tokens }) });
      const blob = await res.blob();
      const pixels = await pixelsOf(blob);
      if (n !== this.decodes) return; // a newer edit is on its way
      const img = $(".recon", this.el);
      URL.revokeObjectURL(img.src);
      img.src = URL.createObjectURL(blob);
      await img.decode();
      const link = $(".download", this.el);
      link.href = img.src;
      link.download = `${this.stem}-reconstruction.png`;
      this.reconPixels = pixels;
      this.showPsnr();
      this.fail("");
    } catch (e) {
      if (n === this.decodes) this.fail(`Could not decode the tokens: ${e.message}`);
    } finally {
      if (n === this.decodes) {
        this.el.removeAttribute("aria-busy");
        this.el.dataset.decoded = String(n); // tests and assistive tech: this edit's picture is shown
      }
    }
  }

  showPsnr() {
    if (!this.inputPixels || !this.reconPixels) return;
    const db = psnr(this.inputPixels, this.reconPixels);
    $(".psnr-value", this.el).textContent = db === null ? "n/a (sizes differ)" : `${db.toFixed(2)} dB`;
  }
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
  const cards = files.map((f, i) => new Card(f, answer.tokens[i], answer, resize));
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
    sessionStorage.setItem(KEY_STORE, $("#api-key").value.trim());
    $("#auth").hidden = true;
    showError("");
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
