// COCO run-length encoding, as pycocotools' maskApi.c writes it: runs over the mask in column-major order
// (down each column, then the next column), starting with a run of zeros; the "compressed" string packs each
// count (from the fourth on, as its difference to the count two before) in 5-bit groups, 6 bits per char + 48.

/** A compressed counts string → the runs (rleFrString). */
export function countsFromString(s) {
  const counts = [];
  for (let p = 0; p < s.length;) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = s.charCodeAt(p++) - 48;
      x += (c & 0x1f) * 2 ** (5 * k); // multiplication, not <<: no 32-bit overflow on long runs
      more = (c & 0x20) !== 0;
      k++;
      if (!more && (c & 0x10)) x -= 2 ** (5 * k); // sign-extend the last group
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/** Runs → the compressed counts string (rleToString). */
export function countsToString(counts) {
  let s = '';
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i] - (i > 2 ? counts[i - 2] : 0);
    let more = true;
    while (more) {
      const shifted = Math.floor(x / 32); // x >> 5 without 32-bit overflow, negative differences too
      let c = x - shifted * 32;
      x = shifted;
      more = (c & 0x10) ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      s += String.fromCharCode(c + 48);
    }
  }
  return s;
}

/** A row-major (H, W) 0/1 mask → its runs (column-major). */
export function encode(data, height, width) {
  const counts = [];
  let value = 0, run = 0;
  for (let x = 0; x < width; x++) {
    for (let i = x; i < height * width; i += width) {
      const v = data[i] ? 1 : 0;
      if (v !== value) { counts.push(run); run = 0; value = v; }
      run++;
    }
  }
  counts.push(run);
  return counts;
}

/** Runs → a row-major (H, W) Uint8Array of 0/1. */
export function decode(counts, height, width) {
  const out = new Uint8Array(height * width);
  forEachPixel(counts, height, (x, y) => { out[y * width + x] = 1; });
  return out;
}

/** Calls fn(x, y) for every pixel of the mask (the odd runs), column by column. */
export function forEachPixel(counts, height, fn) {
  let pos = 0;
  for (let j = 0; j < counts.length; j++) {
    if (j % 2) {
      let x = Math.floor(pos / height), y = pos - x * height;
      for (let k = 0; k < counts[j]; k++) {
        fn(x, y);
        if (++y === height) { y = 0; x++; }
      }
    }
    pos += counts[j];
  }
}

export const area = (counts) => counts.reduce((sum, c, j) => (j % 2 ? sum + c : sum), 0);

/** [x, y, w, h] of the mask's pixels, as pycocotools' toBbox computes it (rleToBbox). */
export function bbox(counts, height, width) {
  const m = counts.length - (counts.length % 2);
  if (m === 0) return [0, 0, 0, 0];
  let xs = width, ys = height, xe = 0, ye = 0, cc = 0, xp = 0;
  for (let j = 0; j < m; j++) {
    cc += counts[j];
    const t = cc - (j % 2), y = t % height, x = (t - y) / height;
    if (j % 2 === 0) xp = x;
    else if (xp < x) { ys = 0; ye = height - 1; } // a run over a column's end covers every row
    xs = Math.min(xs, x); xe = Math.max(xe, x); ys = Math.min(ys, y); ye = Math.max(ye, y);
  }
  return [xs, ys, xe - xs + 1, ye - ys + 1];
}
