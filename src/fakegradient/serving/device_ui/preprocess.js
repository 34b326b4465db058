// Preprocessing as the Python client does it (fakegradient.serving.client.preprocess): Pillow's resize of the
// shorter side (its fixed-point resampling, reproduced), centre crop with Python's rounding, /255, (x - mean) / std
// in float32.

import { DeviceError, isObject } from "./common.js";

const MAX_IMAGE_PIXELS = 50_000_000; // the decoded-pixel budget of fakegradient.data (MAX_PIXELS)
const MAX_ASPECT_RATIO = 20; // as fakegradient.data
export const MAX_SIDE = 1024; // preprocess.resize and crop, as fakegradient.serving.client
const MAX_ABS_MEAN = 1e3;
const STD_RANGE = [1e-3, 1e3];

/** A photo → {width, height, rgba}: decoded upright (EXIF orientation applied) without colour management,
 * as Pillow decodes it, transparency composited on black (onBlack); refused past the pixel budget or more
 * elongated than 1:20. */
export async function decodeImage(blob, name = blob.name ?? "the image") {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    throw new DeviceError(`${name} is not a readable image`);
  }
  try {
    const { width, height } = bitmap;
    if (width * height > MAX_IMAGE_PIXELS) throw new DeviceError(`${name} is refused: ${width}x${height} pixels exceed the limit of ${MAX_IMAGE_PIXELS}`);
    if (Math.max(width, height) > MAX_ASPECT_RATIO * Math.max(Math.min(width, height), 1)) {
      throw new DeviceError(`${name} is refused: ${width}x${height} is more elongated than 1:${MAX_ASPECT_RATIO}`);
    }
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    return { width, height, rgba: onBlack(context.getImageData(0, 0, width, height).data) };
  } finally {
    bitmap.close();
  }
}

/** RGBA pixels composited on black, in place: each channel becomes round(c * alpha / 255) and alpha 255, as
 * fakegradient.data.on_black does. The canvas keeps colours premultiplied (zero under alpha 0), so the colours
 * under transparency are not known here: black is the one rule both sides can apply alike. */
export function onBlack(rgba) {
  for (let p = 0; p < rgba.length; p += 4) {
    const alpha = rgba[p + 3];
    if (alpha === 255) continue;
    for (let c = 0; c < 3; c++) rgba[p + c] = Math.round((rgba[p + c] * alpha) / 255);
    rgba[p + 3] = 255;
  }
  return rgba;
}

const FILTERS = { // Pillow's (libImaging/Resample.c): kernel and support
  bilinear: { support: 1, kernel: (x) => { x = Math.abs(x); return x < 1 ? 1 - x : 0; } },
  bicubic: {
    support: 2,
    kernel: (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    },
  },
};
const PRECISION_BITS = 22; // Pillow's fixed-point coefficients for 8-bit images

/** Pillow's coefficients of one axis: for each output pixel, its first input pixel, count and weights. */
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filter.support * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const count = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let total = 0;
    for (let x = 0; x < count; x++) {
      const w = filter.kernel((x + xmin - center + 0.5) * (1 / filterScale));
      weights[xx * ksize + x] = w;
      total += w;
    }
    for (let x = 0; x < count; x++) {
      const w = total !== 0 ? weights[xx * ksize + x] / total : weights[xx * ksize + x];
      weights[xx * ksize + x] = Math.trunc(w < 0 ? -0.5 + w * 2 ** PRECISION_BITS : 0.5 + w * 2 ** PRECISION_BITS);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = count;
  }
  return { bounds, weights, ksize };
}

/** One 8-bit pass along x (``horizontal``) or y of an RGBA image, as Pillow's ImagingResample*_8bpc. */
function resamplePass(src, width, height, outSize, horizontal, filter) {
  const { bounds, weights, ksize } = coefficients(horizontal ? width : height, outSize, filter);
  const outWidth = horizontal ? outSize : width;
  const outHeight = horizontal ? height : outSize;
  const out = new Uint8ClampedArray(outWidth * outHeight * 4);
  const half = 1 << (PRECISION_BITS - 1);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const o = horizontal ? x : y;
      const first = bounds[o * 2];
      const count = bounds[o * 2 + 1];
      let r = half, g = half, b = half;
      for (let i = 0; i < count; i++) {
        const p = (horizontal ? y * width + first + i : (first + i) * width + x) * 4;
        const w = weights[o * ksize + i];
        r += src[p] * w;
        g += src[p + 1] * w;
        b += src[p + 2] * w;
      }
      const q = (y * outWidth + x) * 4; // >> as C's int shift; the clamped array clips to 0..255 as clip8
      out[q] = r >> PRECISION_BITS;
      out[q + 1] = g >> PRECISION_BITS;
      out[q + 2] = b >> PRECISION_BITS;
      out[q + 3] = 255;
    }
  }
  return out;
}

/** Pillow's nearest-neighbour resize (ImagingScaleAffine: positions accumulated as it does). */
function resizeNearest(src, width, height, outWidth, outHeight) {
  const columns = new Int32Array(outWidth);
  for (let x = 0, xo = (width / outWidth) * 0.5; x < outWidth; x++, xo += width / outWidth) columns[x] = Math.trunc(xo);
  const out = new Uint8ClampedArray(outWidth * outHeight * 4);
  for (let y = 0, yo = (height / outHeight) * 0.5; y < outHeight; y++, yo += height / outHeight) {
    const row = Math.trunc(yo);
    for (let x = 0; x < outWidth; x++) out.set(src.subarray((row * width + columns[x]) * 4, (row * width + columns[x]) * 4 + 4), (y * outWidth + x) * 4);
  }
  return out;
}

/** RGBA pixels (width x height) resized as Pillow's Image.resize(size, interpolation) resizes an RGB image. */
export function resize(rgba, width, height, outWidth, outHeight, interpolation = "bilinear") {
  if (outWidth === width && outHeight === height) return rgba;
  if (interpolation === "nearest") return resizeNearest(rgba, width, height, outWidth, outHeight);
  const filter = FILTERS[interpolation];
  if (!filter) throw new DeviceError(`unsupported interpolation ${interpolation}`);
  let pixels = rgba;
  if (outWidth !== width) pixels = resamplePass(pixels, width, height, outWidth, true, filter);
  if (outHeight !== height) pixels = resamplePass(pixels, outWidth, height, outHeight, false, filter);
  return pixels;
}

function roundHalfEven(x) { // Python's round(), which the centre crop uses
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Decoded pixels → {tensor: Float32Array (3, crop, crop), crop: RGBA pixels of the crop} as the Python client
 * makes them: shorter side resized to spec.resize, centre crop, /255, (x - mean) / std, in float32. */
export function preprocessPixels({ width, height, rgba }, spec) {
  const size = spec.resize;
  const crop = spec.crop;
  const [short, long] = width <= height ? [width, height] : [height, width];
  const newLong = Math.trunc((size * long) / short);
  const [w, h] = width <= height ? [size, newLong] : [newLong, size];
  const resized = resize(rgba, width, height, w, h, spec.interpolation ?? "bilinear");
  const top = roundHalfEven((h - crop) / 2);
  const left = roundHalfEven((w - crop) / 2);
  const mean = spec.mean.map(Math.fround);
  const std = spec.std.map(Math.fround);
  const tensor = new Float32Array(3 * crop * crop);
  const pixels = new Uint8ClampedArray(crop * crop * 4);
  for (let y = 0; y < crop; y++) {
    for (let x = 0; x < crop; x++) {
      const p = ((top + y) * w + left + x) * 4;
      for (let c = 0; c < 3; c++) {
        const value = Math.fround(Math.fround(resized[p + c] / 255) - mean[c]);
        tensor[c * crop * crop + y * crop + x] = Math.fround(value / std[c]);
        pixels[(y * crop + x) * 4 + c] = resized[p + c];
      }
      pixels[(y * crop + x) * 4 + 3] = 255;
    }
  }
  return { tensor, pixels };
}

/** A photo (Blob/File) → what preprocessPixels returns. */
export async function preprocess(blob, spec, name) {
  return preprocessPixels(await decodeImage(blob, name), spec);
}

/** The server's preprocessing parameters, refused unless complete, sane and within bounds (client.check_spec). */
export function checkSpec(spec) {
  const positive = (v) => Number.isSafeInteger(v) && v > 0;
  const three = (v, low) => Array.isArray(v) && v.length === 3 && v.every((x) => Number.isFinite(x) && x > low);
  if (!(isObject(spec) && positive(spec.resize) && positive(spec.crop) && spec.crop <= spec.resize
        && ["bilinear", "bicubic", "nearest"].includes(String(spec.interpolation ?? "bilinear"))
        && three(spec.mean, -Infinity) && three(spec.std, 0))) {
    throw new DeviceError(`the server's preprocessing parameters are invalid: ${JSON.stringify(spec).slice(0, 200)}`);
  }
  const outside = [];
  if (spec.resize > MAX_SIDE) outside.push(`resize ${spec.resize} (at most ${MAX_SIDE})`);
  if (!spec.mean.every((m) => Math.abs(m) <= MAX_ABS_MEAN)) outside.push(`mean [${spec.mean.join(", ")}] (|mean| at most ${MAX_ABS_MEAN})`);
  if (!spec.std.every((x) => x >= STD_RANGE[0] && x <= STD_RANGE[1])) outside.push(`std [${spec.std.join(", ")}] (within ${STD_RANGE[0]}..${STD_RANGE[1]})`);
  if (outside.length) throw new DeviceError(`the server's preprocessing parameters are out of bounds: ${outside.join("; ")}`);
  return spec;
}

