// The hover preview: the model's prompt decoder run in the page (ONNX Runtime Web, WebAssembly) on the image's
// embedding, with the service's own arithmetic around it (engines/transforms.py, engines/sam2_transforms.py,
// service/decoding.py), so that the preview for a point is the mask SegmentPrompt answers with bestMaskOnly.

const ORT = 'static/ort/ort.wasm.bundle.min.mjs';
const WASM = 'static/ort/ort-wasm-simd-threaded.wasm';

let ortLoading = null;

/** ONNX Runtime Web from this server (never a CDN), or an Error saying why not. */
export function loadOrt() {
  ortLoading ??= import(new URL(ORT, document.baseURI).href).then((ort) => {
    ort.env.wasm.wasmPaths = { wasm: new URL(WASM, document.baseURI).href }; // the bundle carries its own glue
    // Threads need SharedArrayBuffer, i.e. the page's COOP/COEP headers.
    ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(2, navigator.hardwareConcurrency || 1) : 1;
    return ort;
  });
  return ortLoading;
}

// float16 → float32 by table: exact, and fast enough for a 4 MB embedding.
let halfTable = null;
function halfToFloat(bits) {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, f = h & 1023;
      halfTable[h] = e === 0 ? sign * f * 2 ** -24
        : e === 31 ? (f ? NaN : sign * Infinity) : sign * (1 + f / 1024) * 2 ** (e - 15);
    }
  }
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = halfTable[bits[i]];
  return out;
}

export function fromBase64(text) {
  if (Uint8Array.fromBase64) return Uint8Array.fromBase64(text);
  const bin = atob(text), out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// -- the service's arithmetic ----------------------------------------------------------------------------

const f32 = Math.fround; // float32 rounding, where the service computes in float32

/** SAM: (h, w) of the image resized so its longest side is `side` (transforms.resized_shape). */
export function resizedShape(h, w, side) {
  const scale = side * 1.0 / Math.max(h, w);
  return [Math.floor(h * scale + 0.5), Math.floor(w * scale + 0.5)];
}

/** A point (x, y) in original pixels → the decoder's point_coords / point_labels for a one-point prompt. Both
 * families put it first and then one padding point (0, 0) labelled −1; they scale it differently. */
const STRETCHED = new Set(['sam2.1', 'sam3']); // resized straight to the square (SAM 3: its interactive head)

export function pointPrompt(family, x, y, h, w, side) {
  x = f32(x); y = f32(y); // the proto's Point holds float32
  let px, py;
  if (STRETCHED.has(family)) { // float32: x / W · side
    px = f32(f32(x / w) * side); py = f32(f32(y / h) * side);
  } else { // SAM: float64 x · (new_w / old_w), then float32
    const [nh, nw] = resizedShape(h, w, side);
    px = f32(x * (nw / w)); py = f32(y * (nh / h));
  }
  return { coords: new Float32Array([px, py, 0, 0]), labels: new Float32Array([1, -1]) };
}

/** cv2.resize(INTER_LINEAR) on float32, which the service upscales with: half-pixel centres, edges clamped, no
 * antialiasing; a horizontal pass, then a vertical one, each rounded to float32. Sample positions in double
 * precision, as pip's OpenCV computes them through Intel IPP (within an ulp or two of it; OpenCV's own path
 * rounds them to float32, ~1e-5 relative apart). Returns the top-left outH × outW of the (dstH, dstW) resize
 * of the srcH × srcW map (row stride `stride`). */
export function resizeLinear(src, srcH, srcW, stride, dstH, dstW, outH = dstH, outW = dstW) {
  const [xo, xa] = taps(srcW, dstW, outW), [yo, ya] = taps(srcH, dstH, outH);
  const rows = new Map(); // source row → its horizontal pass
  const row = (sy) => {
    let r = rows.get(sy);
    if (!r) {
      r = new Float32Array(outW);
      const base = sy * stride;
      for (let x = 0; x < outW; x++) {
        const s = base + xo[x], a = xa[x];
        r[x] = a ? src[s] * (1 - a) + src[s + 1] * a : src[s];
      }
      rows.set(sy, r);
    }
    return r;
  };
  const out = new Float32Array(outH * outW);
  for (let y = 0; y < outH; y++) {
    const b = ya[y], r0 = row(yo[y]), o = y * outW;
    if (!b) { out.set(r0, o); continue; }
    const r1 = row(yo[y] + 1);
    for (let x = 0; x < outW; x++) out[o + x] = r0[x] * (1 - b) + r1[x] * b;
  }
  return out;
}

/** The first of the two source samples, and the second's weight, for each of the first n of `dst` samples. */
function taps(srcN, dst, n) {
  const scale = srcN / dst, ofs = new Int32Array(n), frac = new Float64Array(n);
  for (let d = 0; d < n; d++) {
    const f = (d + 0.5) * scale - 0.5, s = Math.floor(f);
    if (s < 0) ofs[d] = 0; // before the first centre: the first sample alone
    else if (s >= srcN - 1) ofs[d] = srcN - 1; // past the last: the last alone
    else { ofs[d] = s; frac[d] = f - s; }
  }
  return [ofs, frac];
}

// Holes filled before the upscale, as the family's predictor does by default (engines/families/sam3.py).
const HOLE_AREA = new Map([['sam3', 256]]);

/** The (M, M) map with its holes (8-connected regions of cells ≤ 0) of at most `maxArea` cells set to +10, as
 * sam2_transforms.fill_holes_and_sprinkles does them. */
export function fillHoles(low, M, maxArea) {
  const out = Float32Array.from(low), seen = new Uint8Array(M * M), region = new Int32Array(M * M);
  for (let s = 0; s < M * M; s++) {
    if (seen[s] || !(low[s] <= 0)) continue;
    let n = 0, next = 0; // the region's cells so far; those not yet expanded are region[next..n)
    region[n++] = s; seen[s] = 1;
    while (next < n) {
      const i = region[next++], y = (i / M) | 0, x = i - y * M;
      for (let yy = Math.max(y - 1, 0); yy <= Math.min(y + 1, M - 1); yy++) {
        for (let xx = Math.max(x - 1, 0); xx <= Math.min(x + 1, M - 1); xx++) {
          const j = yy * M + xx;
          if (!seen[j] && low[j] <= 0) { seen[j] = 1; region[n++] = j; }
        }
      }
    }
    if (n <= maxArea) for (let k = 0; k < n; k++) out[region[k]] = 10;
  }
  return out;
}

/** One (M, M) low-res logit map → (H, W) logits, as the family upscales: SAM to the padded square (only the
 * part the crop keeps), cropped to the resized image, then to the original size; SAM 2.1 straight there (SAM 3
 * after filling small holes). */
export function upscale(family, low, M, h, w, side) {
  if (HOLE_AREA.has(family)) low = fillHoles(low, M, HOLE_AREA.get(family));
  if (STRETCHED.has(family)) return resizeLinear(low, M, M, M, h, w);
  const [ih, iw] = resizedShape(h, w, side);
  const up = resizeLinear(low, M, M, M, side, side, ih, iw);
  return ih === h && iw === w ? up : resizeLinear(up, ih, iw, iw, h, w);
}

// -- the decoder -------------------------------------------------------------------------------------------

export class HoverDecoder {
  constructor(ort, session, info) {
    this.ort = ort; this.session = session; this.info = info; this.feeds = null;
    const M = info.lowResSide;
    this.maskInput = new ort.Tensor('float32', new Float32Array(M * M), [1, 1, M, M]); // no mask input
    this.hasMask = new ort.Tensor('float32', new Float32Array([0]), [1]);
  }

  /** The model's decoder graph (GET /v1/model/decoder.onnx, as bytes) in a session. */
  static async create(ort, modelBytes, info) {
    const session = await ort.InferenceSession.create(modelBytes, { executionProviders: ['wasm'],
                                                                    graphOptimizationLevel: 'all' });
    return new HoverDecoder(ort, session, info);
  }

  /** An Embedding (GET /v1/images/{id}/embedding) as the session's constant inputs. */
  setEmbedding(embedding) {
    this.size = [embedding.height, embedding.width];
    this.feeds = {};
    for (const a of embedding.arrays) {
      if (!this.session.inputNames.includes(a.name)) continue;
      const bytes = fromBase64(a.float16);
      const shape = a.shape.map(Number);
      this.feeds[a.name] = new this.ort.Tensor('float32', halfToFloat(new Uint16Array(bytes.buffer, bytes.byteOffset,
                                                                                       bytes.length / 2)), shape);
    }
  }

  /** The best of the three candidate masks for a positive point at (x, y): {mask, iou, ms}. */
  async decode(x, y) {
    const t0 = performance.now();
    const { family, imageSize: side, lowResSide: M } = this.info;
    const [h, w] = this.size;
    const p = pointPrompt(family, x, y, h, w, side);
    const out = await this.session.run({
      ...this.feeds,
      point_coords: new this.ort.Tensor('float32', p.coords, [1, 2, 2]),
      point_labels: new this.ort.Tensor('float32', p.labels, [1, 2]),
      mask_input: this.maskInput, has_mask_input: this.hasMask,
    });
    const iou = out.iou_predictions.data, low = out.low_res_masks.data;
    let best = 1; // the multimask candidates are tokens 1..3; the first of equals, as numpy's argmax
    for (let k = 2; k <= 3; k++) if (iou[k] > iou[best]) best = k;
    const logits = upscale(family, low.subarray(best * M * M, (best + 1) * M * M), M, h, w, side);
    const data = new Uint8Array(h * w);
    for (let i = 0; i < data.length; i++) data[i] = logits[i] > 0 ? 1 : 0;
    for (const t of Object.values(out)) t.dispose?.();
    return { mask: { width: w, height: h, data }, iou: iou[best], ms: performance.now() - t0 };
  }
}
