// One uploaded image: the model's input beside the reconstruction, the PSNR, and the editable token grid.

import { $, api, setStatus } from "./api.js";

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

export class Card {
  // prefix: the model decodes any first k tokens (/info's prefix_decodable): the slider, curve and target box show
  constructor(file, tokens, answer, resize, prefix = false) {
    this.file = file;
    this.original = [...tokens];
    this.tokens = [...tokens];
    this.prefix = prefix;
    this.k = tokens.length; // the tokens used: the first k are decoded, the rest are marked unused
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
    if (prefix) this.wireBudget();
  }

  wireBudget() {
    $(".budget", this.el).hidden = false;
    const slider = $(".k", this.el);
    slider.max = String(this.tokens.length);
    slider.value = String(this.k);
    slider.setAttribute("aria-valuetext", `${this.k} tokens`);
    // Every step redraws: a coarse picture at small k, finer as k grows; older answers are dropped.
    slider.addEventListener("input", () => this.setK(Number(slider.value)));
    $(".target-form", this.el).addEventListener("submit", (e) => {
      e.preventDefault();
      this.findTarget($(".target", this.el).value.trim());
    });
    this.showK();
  }

  setK(k) {
    this.k = k;
    $(".k", this.el).value = String(k);
    this.showK();
    this.drawCurve();
    this.decode();
  }

  showK() {
    const n = this.tokens.length;
    $(".k-value", this.el).textContent = `${this.k} of ${n}`;
    $(".k", this.el).setAttribute("aria-valuetext", `${this.k} tokens`);
    $(".recon-caption", this.el).textContent = `Reconstruction from ${this.k} tokens`;
    this.tokens.forEach((_, i) => this.paint(i));
  }

  async loadCurve() {
    const canvas = $(".curve", this.el);
    try {
      const res = await api(`ui/curve?resize=${this.resize}`, { method: "POST", body: this.file,
        headers: { "Content-Type": this.file.type || "application/octet-stream" } });
      this.curve = await res.json(); // {num_tokens: [k...], psnr: [dB...]}
      canvas.dataset.psnr = JSON.stringify(this.curve.psnr);
      const p = this.curve.psnr;
      canvas.setAttribute("aria-label", `PSNR from ${p[0].toFixed(1)} dB with ${this.curve.num_tokens[0]} token to ` +
        `${p[p.length - 1].toFixed(1)} dB with ${this.curve.num_tokens[p.length - 1]} tokens`);
      this.drawCurve();
    } catch (e) {
      this.fail(`Could not measure the PSNR curve: ${e.message}`);
    }
  }

  // The service's figures as a polyline, k on x and dB on y; a dot at the k in use.
  drawCurve() {
    if (!this.curve) return;
    const canvas = $(".curve", this.el);
    const ctx = canvas.getContext("2d");
    const { width: w, height: h } = canvas;
    const ks = this.curve.num_tokens;
    const db = this.curve.psnr;
    const pad = 18;
    const lo = Math.floor(Math.min(...db));
    const hi = Math.ceil(Math.max(...db)) + (Math.max(...db) === Math.min(...db) ? 1 : 0);
    const x = (k) => pad + ((k - 1) / Math.max(1, ks[ks.length - 1] - 1)) * (w - 2 * pad);
    const y = (v) => h - pad - ((v - lo) / Math.max(1e-9, hi - lo)) * (h - 2 * pad);
    ctx.clearRect(0, 0, w, h);
    ctx.fillStyle = "#444";
    ctx.font = "10px sans-serif";
    ctx.fillText(`${hi} dB`, 2, pad - 6);
    ctx.fillText(`${lo} dB`, 2, h - 4);
    ctx.fillText(`k = ${ks[ks.length - 1]}`, w - 40, h - 4);
    ctx.strokeStyle = "#1f5fa8";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ks.forEach((k, i) => (i ? ctx.lineTo(x(k), y(db[i])) : ctx.moveTo(x(k), y(db[i]))));
    ctx.stroke();
    let nearest = 0; // the measured k closest to the one in use
    ks.forEach((k, i) => { if (Math.abs(k - this.k) < Math.abs(ks[nearest] - this.k)) nearest = i; });
    ctx.fillStyle = "#c0392b";
    ctx.beginPath();
    ctx.arc(x(ks[nearest]), y(db[nearest]), 4, 0, 2 * Math.PI);
    ctx.fill();
  }

  // /encode?target_psnr: the service's binary search finds the fewest tokens; the slider moves there.
  async findTarget(text) {
    const out = $(".target-result", this.el);
    out.textContent = "Searching…";
    const form = new FormData();
    form.append("images", this.file, this.file.name || "image");
    try {
      const q = `encode?resize=${this.resize}&target_psnr=${encodeURIComponent(text)}`;
      const answer = await (await api(q, { method: "POST", body: form })).json();
      const k = answer.num_tokens[0];
      const db = answer.psnr[0].toFixed(2);
      out.textContent = answer.reached[0] ? `${k} tokens reach ${text} dB (${db} dB)`
        : `not reached: all ${k} tokens give ${db} dB`;
      this.el.dataset.targetK = String(k);
      this.fail("");
      this.setK(k);
    } catch (e) {
      out.textContent = "";
      this.fail(`Could not find the tokens for that target: ${e.message}`);
    }
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
    const unused = i >= this.k;
    cell.title = `Token ${i + 1}: ID ${id}` + (unused ? ` (unused: beyond the first ${this.k})` : "");
    cell.classList.toggle("unused", unused);
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
      const used = this.tokens.slice(0, this.k); // the body /decode takes, ready for curl
      await copyText(JSON.stringify({ tokens: used }));
      setStatus(`Copied the ${used.length} tokens of ${this.file.name || "the image"} as JSON.`);
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
    return Promise.all([this.loadInput(), this.decode(), ...(this.prefix ? [this.loadCurve()] : [])]);
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
        body: JSON.stringify({ tokens: this.tokens.slice(0, this.k) }) });
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
