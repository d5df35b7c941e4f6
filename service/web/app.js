// maskserve's web annotator: an image encoded by the service, objects segmented by clicks and boxes through
// SegmentPrompt (each refining the previous answer by its logits handle), a hover preview decoded in the page,
// Segment everything, and the annotations exported as COCO JSON. Plain ES modules, no build step.

import * as rle from './rle.js';
import { HoverDecoder, fromBase64, loadOrt } from './hover.js';

const $ = (id) => document.getElementById(id);
const canvas = $('canvas');
const layers = { annotations: $('annotation-layer'), mask: $('mask-layer'), hover: $('hover-layer'),
                 prompts: $('prompt-layer') };
const MASK = { rgb: [30, 144, 255], alpha: 120, edge: 255 }; // the object being made
const HOVER = { rgb: [200, 235, 255], alpha: 90, edge: 170 }; // lighter: only a preview
const DRAG_PX = 4; // a press that moves further (CSS pixels) draws a box instead of a point

const state = {
  info: null, // ModelInfo
  image: null, // {id, width, height, name, bitmap}
  actions: [], // the current object's prompts, in order: {kind: 'point'|'box', ..., answer}
  annotations: [],
  nextId: 1,
  hover: null, // the HoverDecoder, once the image's embedding is in it
  drag: null,
};

// What the tests (and a curious console) read.
const hooks = window.maskserve = {
  ready: Promise.resolve(false), // resolves once the image is encoded and the hover decoder loaded (or refused)
  imageId: null, hoverAvailable: false,
  lastMask: null, hoverMask: null, hoverPoint: null, hoverTimesMs: [], hoverBusy: false,
  annotations: state.annotations, points: [], pending: 0, answered: 0, everythingTotal: null,
};

// -- the service ------------------------------------------------------------------------------------------

class ServiceError extends Error {
  constructor(status, httpStatus) {
    super(status?.message || `HTTP ${httpStatus}`);
    this.status = status;
  }
}

const keyInput = $('api-key');
keyInput.value = sessionStorage.getItem('maskserve.apiKey') || '';
$('key-form').addEventListener('submit', (e) => e.preventDefault()); // Enter in the field: no page reload
keyInput.addEventListener('input', () => sessionStorage.setItem('maskserve.apiKey', keyInput.value.trim()));
keyInput.addEventListener('change', () => { if (!state.info) loadInfo(); }); // the key GetModelInfo wanted

/** GET (no body) or POST (JSON, or a FormData as multipart) to the service; a failure throws its Status. */
async function call(path, body) {
  const init = { headers: {} };
  const key = keyInput.value.trim();
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) {
    init.method = 'POST';
    if (body instanceof FormData) init.body = body;
    else { init.body = JSON.stringify(body); init.headers['Content-Type'] = 'application/json'; }
  }
  const response = await fetch(path, init); // relative: the page may sit under a proxy's prefix
  if (!response.ok) {
    let status;
    try { status = await response.json(); } catch { status = null; }
    throw new ServiceError(status, `${response.status} ${response.statusText}`);
  }
  return response;
}

/** The lines of an NDJSON answer, parsed, as they arrive. */
async function* ndjson(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buffer += value;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) yield JSON.parse(line);
    }
    if (done) break;
  }
  if (buffer.trim()) yield JSON.parse(buffer);
}

function say(text, kind = '') {
  const el = $('status');
  el.textContent = text;
  el.className = kind;
}

function fail(err, what) {
  console.error(what, err);
  say(`${what}: ${err.message}`, 'error');
}

const note = (text) => { $('hover-note').textContent = text; };

async function loadInfo() {
  try {
    state.info = await (await call('v1/model')).json();
    const { modelType, family, imageSize } = state.info;
    $('model').textContent = `${modelType} · ${family || 'sam'} · ${imageSize}px`;
    state.info.family ||= 'sam'; // an older service leaves it empty
    if (!state.image) say('Open an image, or drop one on the page.');
  } catch (err) {
    fail(err, 'The service did not answer GetModelInfo');
  }
}

// -- images -----------------------------------------------------------------------------------------------

let imageSeq = 0; // the newest image: answers for an older one are dropped

async function openImage(file) {
  const seq = ++imageSeq;
  let settle;
  hooks.ready = new Promise((resolve, reject) => { settle = { resolve, reject }; });
  hooks.ready.catch(() => {}); // a failure is shown in the status line; only a test awaits this
  resetImage();
  say(`Encoding ${file.name}…`, 'busy');
  try {
    if (!state.info) await loadInfo();
    const form = new FormData();
    form.append('request', JSON.stringify({ wait: true }));
    form.append('image', file, file.name);
    const encoded = await (await call('v1/images:encode', form)).json();
    const bitmap = await createImageBitmap(file); // upright by its EXIF orientation, as the service reads it
    if (seq !== imageSeq) return;
    state.image = { id: encoded.imageId, width: encoded.width, height: encoded.height, name: file.name, bitmap };
    hooks.imageId = encoded.imageId;
    showImage();
    say(`${file.name} (${encoded.width}×${encoded.height}): click an object.`);
    await setupHover(seq);
    settle.resolve(true);
  } catch (err) {
    if (seq === imageSeq) fail(err, 'Encoding failed');
    settle.reject(err);
  }
}

function resetImage() {
  state.image = null; state.hover = null; state.actions = []; state.annotations.length = 0;
  Object.assign(hooks, { imageId: null, hoverAvailable: false, lastMask: null, hoverMask: null, hoverPoint: null,
                         everythingTotal: null });
  for (const layer of Object.values(layers)) layer.getContext('2d').clearRect(0, 0, layer.width, layer.height);
  $('layers').hidden = true; // not the last image while this one encodes (or fails to)
  $('drop-hint').hidden = false;
  showAnswer();
  renderAnnotations();
}

function showImage() {
  const { width, height, bitmap } = state.image;
  for (const c of [canvas, ...Object.values(layers)]) { c.width = width; c.height = height; }
  canvas.getContext('2d').drawImage(bitmap, 0, 0, width, height);
  $('layers').hidden = false;
  $('drop-hint').hidden = true;
}

let decoderLoad = null; // {version, promise}: the decoder graph is fetched once, kept across images

/** The hover decoder for this image: ONNX Runtime Web, the model's decoder graph and the image's embedding.
 * Without them the page still works: clicks go through the service. */
async function setupHover(seq) {
  let ort;
  try {
    ort = await loadOrt();
  } catch (err) {
    console.warn('ONNX Runtime Web is not served here', err);
    note('Hover preview off: the server lacks ONNX Runtime Web (run `maskserve web pull` there).');
    return;
  }
  try {
    const version = state.info.modelVersion;
    if (decoderLoad?.version !== version) {
      const promise = call('v1/model/decoder.onnx').then((r) => r.arrayBuffer())
        .then((bytes) => HoverDecoder.create(ort, new Uint8Array(bytes), state.info));
      decoderLoad = { version, promise };
      promise.catch(() => { if (decoderLoad?.promise === promise) decoderLoad = null; }); // retried next image
    }
    const [decoder, embedding] = await Promise.all([
      decoderLoad.promise,
      call(`v1/images/${encodeURIComponent(state.image.id)}/embedding`).then((r) => r.json()),
    ]);
    if (seq !== imageSeq) return;
    decoder.setEmbedding(embedding);
    state.hover = decoder;
    hooks.hoverAvailable = true;
    hooks.hoverThreads = ort.env.wasm.numThreads;
    note('');
  } catch (err) {
    console.warn('hover preview', err);
    note(`Hover preview off: ${err.message}`);
  }
}

$('file').addEventListener('change', (e) => {
  const file = e.target.files[0];
  e.target.value = ''; // choosing the same file again is a change too
  if (file) openImage(file);
});
document.addEventListener('dragover', (e) => e.preventDefault());
document.addEventListener('drop', (e) => {
  e.preventDefault();
  const file = e.dataTransfer?.files?.[0];
  if (file) openImage(file);
});

// -- the pointer ------------------------------------------------------------------------------------------

/** Where an event falls on the image, in its pixels (the canvas is shown scaled). */
function toImage(e) {
  const r = canvas.getBoundingClientRect(), { width, height } = state.image;
  const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
  return { x: clamp((e.clientX - r.left) * width / r.width, width),
           y: clamp((e.clientY - r.top) * height / r.height, height) };
}

const boxOf = (a, b) => ({ x0: Math.min(a.x, b.x), y0: Math.min(a.y, b.y), x1: Math.max(a.x, b.x),
                           y1: Math.max(a.y, b.y) });

canvas.addEventListener('contextmenu', (e) => e.preventDefault()); // right click is a negative point
canvas.addEventListener('pointerdown', (e) => {
  if (!state.image || (e.button !== 0 && e.button !== 2)) return;
  e.preventDefault();
  canvas.setPointerCapture(e.pointerId);
  state.drag = { start: toImage(e), x: e.clientX, y: e.clientY, negative: e.button === 2 || e.shiftKey, box: false };
  hideHover();
});
canvas.addEventListener('pointermove', (e) => {
  if (!state.image) return;
  const d = state.drag, p = toImage(e);
  if (!d) return requestHover(p);
  if (!d.negative && Math.hypot(e.clientX - d.x, e.clientY - d.y) > DRAG_PX) d.box = true;
  if (d.box) drawPrompts(boxOf(d.start, p));
});
canvas.addEventListener('pointerup', (e) => {
  const d = state.drag;
  if (!d) return;
  state.drag = null;
  if (d.box) addAction({ kind: 'box', ...boxOf(d.start, toImage(e)) });
  else addAction({ kind: 'point', x: d.start.x, y: d.start.y, label: d.negative ? 0 : 1 });
});
canvas.addEventListener('pointercancel', () => { state.drag = null; drawPrompts(); });
canvas.addEventListener('pointerleave', hideHover);
new ResizeObserver(() => drawPrompts()).observe(canvas); // markers keep their on-screen size

// -- the hover preview: at most one decode in flight, the latest position wins --------------------------

let hoverNext = null, hoverShown = false;

function requestHover(p) {
  if (!state.hover) return;
  hoverNext = p;
  hoverShown = true;
  if (!hooks.hoverBusy) runHover();
}

async function runHover() {
  hooks.hoverBusy = true;
  while (hoverNext && state.hover) {
    const decoder = state.hover, p = hoverNext;
    hoverNext = null;
    try {
      const { mask, ms } = await decoder.decode(p.x, p.y);
      hooks.hoverTimesMs.push(ms);
      if (decoder !== state.hover) continue; // another image since
      hooks.hoverMask = mask;
      hooks.hoverPoint = p;
      if (hoverShown && !state.drag) paintMask(layers.hover, mask, HOVER);
    } catch (err) {
      console.error('hover decode', err);
      note(`Hover preview off: ${err.message}`);
      state.hover = null;
      hooks.hoverAvailable = false;
    }
  }
  hooks.hoverBusy = false;
}

function hideHover() {
  hoverShown = false;
  hoverNext = null;
  paintMask(layers.hover, null);
}

// -- the current object: prompts through the service --------------------------------------------------

function addAction(action) {
  const points = state.actions.filter((a) => a.kind === 'point').length;
  if (action.kind === 'point' && state.info && points >= state.info.maxPoints) {
    say(`At most ${state.info.maxPoints} points per object: press Enter for a new object.`, 'error');
    return drawPrompts();
  }
  state.actions.push(action);
  drawPrompts();
  segment(action);
}

let queue = Promise.resolve(); // one SegmentPrompt at a time: each refines the answer before it

function segment(action) {
  hooks.pending++;
  queue = queue.then(() => runSegment(action)).finally(() => { hooks.pending--; hooks.answered++; });
}

/** The object's points and newest box up to `action`, refining the previous answer's chosen mask. */
function promptOf(actions, previous) {
  const prompt = {};
  const points = actions.filter((a) => a.kind === 'point').map(({ x, y, label }) => ({ x, y, label }));
  if (points.length) prompt.points = points;
  const box = actions.findLast((a) => a.kind === 'box');
  if (box) prompt.box = { x0: box.x0, y0: box.y0, x1: box.x1, y1: box.y1 };
  if (previous?.handle) {
    prompt.maskFrom = { handle: previous.handle, outputIndex: previous.masks[previous.chosen].outputIndex };
  }
  return prompt;
}

async function runSegment(action) {
  const i = state.actions.indexOf(action), image = state.image;
  if (i < 0 || !image) return; // undone, or another image, before its turn
  const request = { imageId: image.id, prompts: [promptOf(state.actions.slice(0, i + 1),
                                                           state.actions[i - 1]?.answer)],
                    options: { maskFormat: 'MASK_FORMAT_BITMAP' } };
  try {
    say('Segmenting…', 'busy');
    const started = performance.now();
    const { results: [result] } = await (await call('v1/images:segment', request)).json();
    if (image !== state.image) return;
    const masks = result.masks.map((m) => ({
      width: m.width, height: m.height, data: unpackBits(fromBase64(m.bitmap), m.width * m.height),
      iou: m.predictedIou, outputIndex: m.outputIndex ?? 0,
    }));
    let chosen = 0; // the highest predicted IoU, the first of equals: bestMaskOnly's choice
    masks.forEach((m, k) => { if (m.iou > masks[chosen].iou) chosen = k; });
    action.answer = { masks, handle: result.logitsHandle, chosen };
    showAnswer();
    say(`${state.actions.length} prompt${state.actions.length > 1 ? 's' : ''}: predicted IoU ` +
        `${masks[chosen].iou.toFixed(3)} (${Math.round(performance.now() - started)} ms). Enter: new object.`);
  } catch (err) {
    if (image !== state.image) return;
    fail(err, 'Segmenting failed');
    if (state.actions.at(-1) === action) state.actions.pop(); // the prompt the service refused
    showAnswer();
  }
}

/** numpy.packbits of the row-major mask (most significant bit first) → one byte per pixel. */
function unpackBits(bytes, n) {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (bytes[i >> 3] >> (7 - (i & 7))) & 1;
  return out;
}

/** The newest answer of the current object (its last prompt's, or the one before while that is in flight). */
const currentAnswer = () => state.actions.findLast((a) => a.answer)?.answer ?? null;

function showAnswer() {
  const answer = currentAnswer();
  const mask = answer ? answer.masks[answer.chosen] : null;
  hooks.lastMask = mask && { width: mask.width, height: mask.height, data: mask.data };
  hooks.points = state.actions.map(({ answer: _, ...a }) => a);
  paintMask(layers.mask, mask, MASK);
  drawCandidates(answer);
  drawPrompts();
}

function undo() {
  if (!state.actions.length) return;
  state.actions.pop();
  showAnswer();
  say(state.actions.length ? 'Undone.' : 'Undone: no prompts left.');
}

function clearObject() {
  state.actions = [];
  showAnswer();
}

/** Enter / New object: the current mask becomes an annotation; the next click starts another object. */
function commitObject() {
  const answer = state.actions.at(-1)?.answer;
  if (!answer) return say(state.actions.length ? 'Wait for the answer first.' : 'Click an object first.');
  const m = answer.masks[answer.chosen];
  addAnnotation(rle.encode(m.data, m.height, m.width), m.iou);
  clearObject();
  renderAnnotations();
  say(`Annotation #${state.annotations.at(-1).id} added. Click the next object.`);
}

function drawCandidates(answer) {
  const box = $('candidates');
  box.replaceChildren();
  if (!answer) return;
  answer.masks.forEach((m, k) => {
    const button = document.createElement('button');
    button.dataset.index = k;
    button.setAttribute('aria-pressed', String(k === answer.chosen));
    button.title = 'Use this mask (the next prompt refines it)';
    button.append(thumbnail(m), Object.assign(document.createElement('span'),
                                             { textContent: `IoU ${m.iou.toFixed(3)}` }));
    button.addEventListener('click', () => { answer.chosen = k; showAnswer(); });
    box.append(button);
  });
}

/** The image, small, with the mask over it (sampled, not the full-size mask painted and scaled). */
function thumbnail(mask) {
  const w = 96, h = Math.max(1, Math.round(96 * mask.height / mask.width));
  const c = Object.assign(document.createElement('canvas'), { width: w, height: h });
  const ctx = c.getContext('2d');
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, w, h);
  ctx.globalAlpha = 0.5; // the image dimmed, so that a small mask still stands out
  ctx.drawImage(state.image.bitmap, 0, 0, w, h);
  ctx.globalAlpha = 1;
  const over = new ImageData(w, h);
  for (let y = 0; y < h; y++) {
    const row = Math.floor((y + 0.5) * mask.height / h) * mask.width;
    for (let x = 0; x < w; x++) {
      if (!mask.data[row + Math.floor((x + 0.5) * mask.width / w)]) continue;
      over.data.set([...MASK.rgb, 230], 4 * (y * w + x));
    }
  }
  const layer = Object.assign(document.createElement('canvas'), { width: w, height: h });
  layer.getContext('2d').putImageData(over, 0, 0);
  ctx.drawImage(layer, 0, 0);
  return c;
}

// -- drawing ----------------------------------------------------------------------------------------------

/** A 0/1 mask on its layer at the image's resolution, its edge stronger; null clears the layer. */
function paintMask(layer, mask, style) {
  const ctx = layer.getContext('2d');
  ctx.clearRect(0, 0, layer.width, layer.height);
  if (!mask) return;
  const { width: w, height: h, data } = mask;
  const img = ctx.createImageData(w, h), px = img.data, [r, g, b] = style.rgb;
  for (let y = 0, i = 0; y < h; y++) {
    for (let x = 0; x < w; x++, i++) {
      if (!data[i]) continue;
      const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 || !data[i - 1] || !data[i + 1] ||
                   !data[i - w] || !data[i + w];
      px[4 * i] = r; px[4 * i + 1] = g; px[4 * i + 2] = b; px[4 * i + 3] = edge ? style.edge : style.alpha;
    }
  }
  ctx.putImageData(img, 0, 0);
}

/** The object's points and box (and the box being dragged), sized for the screen, not the image. */
function drawPrompts(dragging = null) {
  const ctx = layers.prompts.getContext('2d');
  ctx.clearRect(0, 0, layers.prompts.width, layers.prompts.height);
  if (!state.image) return;
  const shown = canvas.getBoundingClientRect().width;
  const s = shown ? state.image.width / shown : 1; // image pixels per CSS pixel
  const boxes = state.actions.filter((a) => a.kind === 'box');
  const strokeBox = (b, dash) => {
    ctx.setLineDash(dash.map((d) => d * s));
    ctx.lineWidth = 2 * s;
    ctx.strokeStyle = '#fff';
    ctx.strokeRect(b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0);
  };
  if (boxes.length) strokeBox(boxes.at(-1), []);
  if (dragging) strokeBox(dragging, [6, 4]);
  ctx.setLineDash([]);
  for (const a of state.actions) {
    if (a.kind !== 'point') continue;
    ctx.beginPath();
    ctx.arc(a.x, a.y, 5 * s, 0, 2 * Math.PI);
    ctx.fillStyle = a.label ? '#16a34a' : '#dc2626';
    ctx.fill();
    ctx.lineWidth = 1.5 * s;
    ctx.strokeStyle = '#fff';
    ctx.stroke();
  }
}

// -- annotations ------------------------------------------------------------------------------------------

/** Distinct colours: hues a golden angle apart. */
function colourOf(id) {
  const h = (id * 137.508) % 360 / 60, c = 0.75, x = c * (1 - Math.abs(h % 2 - 1)), m = 0.2;
  const [r, g, b] = [[c, x, 0], [x, c, 0], [0, c, x], [0, x, c], [x, 0, c], [c, 0, x]][Math.floor(h) % 6];
  return [r, g, b].map((v) => Math.round((v + m) * 255));
}

/** An annotation from a mask's COCO RLE (its runs, or the compressed counts string). */
function addAnnotation(counts, score) {
  const { width: w, height: h } = state.image;
  const runs = typeof counts === 'string' ? rle.countsFromString(counts) : counts;
  const id = state.nextId++;
  state.annotations.push({
    id, segmentation: { size: [h, w], counts: typeof counts === 'string' ? counts : rle.countsToString(runs) },
    area: rle.area(runs), bbox: rle.bbox(runs, h, w), score, colour: colourOf(id), runs,
  });
}

function renderAnnotations() {
  const layer = layers.annotations, ctx = layer.getContext('2d');
  ctx.clearRect(0, 0, layer.width, layer.height);
  if (state.image && state.annotations.length) {
    const { width: w, height: h } = state.image;
    const img = ctx.createImageData(w, h), px = img.data;
    for (const a of state.annotations) {
      const [r, g, b] = a.colour;
      rle.forEachPixel(a.runs, h, (x, y) => {
        const o = 4 * (y * w + x);
        px[o] = r; px[o + 1] = g; px[o + 2] = b; px[o + 3] = 140;
      });
    }
    ctx.putImageData(img, 0, 0);
  }
  const list = $('annotations');
  list.replaceChildren(...state.annotations.map((a) => {
    const li = document.createElement('li');
    const swatch = Object.assign(document.createElement('span'), { className: 'swatch' });
    swatch.style.background = `rgb(${a.colour.join(',')})`;
    const remove = Object.assign(document.createElement('button'), { textContent: '×', title: 'Remove' });
    remove.addEventListener('click', () => {
      state.annotations.splice(state.annotations.indexOf(a), 1);
      renderAnnotations();
    });
    li.append(swatch, `#${a.id} · ${a.area} px · ${a.score.toFixed(2)}`, remove);
    return li;
  }));
  $('count').textContent = state.annotations.length ? `(${state.annotations.length})` : '';
}

// -- segment everything -----------------------------------------------------------------------------------

async function segmentEverything() {
  const image = state.image;
  if (!image) return say('Open an image first.');
  const options = {};
  const number = (id, parse, name) => { const v = $(id).value.trim(); if (v !== '') options[name] = parse(v); };
  number('points-per-side', (v) => parseInt(v, 10), 'pointsPerSide');
  number('pred-iou-thresh', parseFloat, 'predIouThresh');
  number('stability-thresh', parseFloat, 'stabilityScoreThresh');
  const button = $('everything'), progress = $('progress');
  button.disabled = true;
  progress.hidden = false;
  progress.removeAttribute('value');
  say('Segment everything: starting…', 'busy');
  let found = 0, filtered = {};
  try {
    const response = await call('v1/images:segmentEverything', { imageId: image.id, options });
    for await (const line of ndjson(response)) {
      if (image !== state.image) return;
      if (line.error) throw new ServiceError(line.error);
      if (line.progress) {
        const { stage, done = 0, total = 0 } = line.progress;
        progress.max = total || 1;
        progress.value = done;
        say(`Segment everything: ${stage} ${done}/${total}`, 'busy');
      }
      if (line.masks) {
        for (const m of line.masks.masks) addAnnotation(atob(m.segmentation.counts), m.predictedIou);
        found += line.masks.masks.length;
        if (line.masks.last) {
          hooks.everythingTotal = line.masks.totalMasks;
          filtered = line.masks.filtered ?? {};
        }
        renderAnnotations();
      }
    }
    // Why there are few masks: how many of the grid's candidates each filter removed.
    const { candidates, ...removed } = filtered;
    const why = Object.entries(removed).filter(([, n]) => n).map(([name, n]) => `${name} ${n}`).join(', ');
    say(`Segment everything: ${found} masks added as annotations` +
        (candidates ? ` (of ${candidates} candidates${why ? `; removed by ${why}` : ''}).` : '.'));
  } catch (err) {
    if (image === state.image) fail(err, 'Segment everything failed');
  } finally {
    button.disabled = false;
    progress.hidden = true;
  }
}

// -- export -----------------------------------------------------------------------------------------------

function exportCoco() {
  if (!state.image || !state.annotations.length) return say('Nothing to export: add annotations first.');
  const { width, height, name } = state.image;
  const coco = {
    info: { description: 'maskserve annotator', model_version: state.info?.modelVersion ?? '',
            date_created: new Date().toISOString() },
    images: [{ id: 1, file_name: name, width, height }],
    annotations: state.annotations.map((a, i) => ({
      id: i + 1, image_id: 1, category_id: 1, segmentation: a.segmentation, area: a.area, bbox: a.bbox,
      iscrowd: 0, score: a.score,
    })),
    categories: [{ id: 1, name: 'object' }],
  };
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([JSON.stringify(coco)], { type: 'application/json' }));
  link.download = `${name.replace(/\.[^.]*$/, '') || 'image'}.coco.json`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  say(`Exported ${coco.annotations.length} annotations` +
      (state.actions.length ? ' (not the object in progress: press Enter to add it).' : '.'));
}

// -- buttons and keys -------------------------------------------------------------------------------------

$('undo').addEventListener('click', undo);
$('new-object').addEventListener('click', commitObject);
$('clear').addEventListener('click', clearObject);
$('everything').addEventListener('click', segmentEverything);
$('export').addEventListener('click', exportCoco);
document.addEventListener('keydown', (e) => {
  if (e.target.closest?.('input, textarea, select')) return; // typing in a field
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === 'z') { e.preventDefault(); undo(); }
  else if (e.key === 'Enter') { e.preventDefault(); commitObject(); }
  else if (e.key === 'Escape') clearObject();
});

loadInfo();
