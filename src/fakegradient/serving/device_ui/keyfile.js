// The key, in the page: read and checked as fakegradient.key reads it, and the decryption of the 2N outputs
// (permutation[i] is where plain output i sits; plain outputs 0..N-1 are the real classes). Class-name files too.

import { DeviceError, isObject } from "./common.js";

export const MAX_KEY_BYTES = 8 * 2 ** 20; // as fakegradient.key
export const MAX_LABELS_BYTES = 16 * 2 ** 20; // as fakegradient.labels

/** The key in a key file's text, checked as fakegradient.key.Key.from_bytes checks it. */
export async function parseKey(text, source = "the key file") {
  const corrupt = () => new DeviceError(`${source} is not a fakegradient key file (truncated or corrupted)`);
  let payload;
  try {
    payload = JSON.parse(text, keepFloats);
  } catch {
    throw corrupt();
  }
  if (!isPlainObject(payload) || payload.format !== "fakegradient-key") throw new DeviceError(`${source} is not a fakegradient key file`);
  if (payload.version !== 1 && payload.version !== 2) {
    const newer = Number.isSafeInteger(payload.version) && payload.version > 2 ? " (made by a newer fakegradient: upgrade it)" : "";
    throw new DeviceError(`${source}: unsupported key format version ${String(payload.version).slice(0, 40)}${newer}`);
  }
  const { checksum, ...fields } = payload;
  const checksumVerified = await verifyChecksum(fields, checksum, source);
  const nReal = fields.n_real;
  const scale = fields.scale instanceof PyFloat ? fields.scale.value : fields.scale;
  const permutation = fields.permutation;
  const bad = (what) => new DeviceError(`${source} is missing or has a bad field: ${what}`);
  if (!Number.isSafeInteger(nReal) || nReal < 1) throw bad("n_real must be a positive integer");
  if (!Array.isArray(permutation) || permutation.length !== 2 * nReal
      || !permutation.every((v) => Number.isSafeInteger(v) && v >= 0 && v < 2 * nReal)) {
    throw bad(`permutation must be a list of ${2 * nReal} integers in [0, ${2 * nReal})`);
  }
  if (scale !== null && !Number.isFinite(scale)) throw bad("scale must be a finite number or null");
  for (const name of ["method", "model_fingerprint"]) {
    if (typeof fields[name] !== "string") throw bad(`${name} must be a string`);
  }
  if ("seeded" in fields && typeof fields.seeded !== "boolean") throw bad("seeded must be true or false");
  let labels = null; // version 2: the class names travel with the key
  if (payload.version === 2) {
    if (typeof fields.fingerprint_key !== "string" || !/^[0-9a-f]{64}$/.test(fields.fingerprint_key)) {
      throw bad("fingerprint_key must be 64 hex digits");
    }
    if (fields.labels !== null) labels = checkLabels(fields.labels, source, nReal);
  }
  const plainOf = new Int32Array(2 * nReal).fill(-1); // K^-1: the plain output at each served position
  permutation.forEach((position, plain) => { plainOf[position] = plain; });
  if (plainOf.includes(-1)) throw new DeviceError(`${source}: key is not a permutation of ${2 * nReal} outputs`);
  return {
    nReal, permutation: Int32Array.from(permutation), plainOf, fingerprint: fields.model_fingerprint,
    method: fields.method, seeded: fields.seeded === true, checksumVerified, labels,
  };
}

class PyFloat { constructor(value) { this.value = value; } } // a number written with a point or exponent

function keepFloats(key, value, context) {
  // JSON.parse source text access: whether Python wrote a float (20.0) or an int (20) matters to the checksum
  if (typeof value === "number" && context?.source !== undefined && /[.eE]/.test(context.source)) return new PyFloat(value);
  return value;
}

const SOURCE_TEXT_ACCESS = JSON.parse("1.0", (key, value, context) => context?.source === "1.0");

function isPlainObject(value) {
  return isObject(value) && !(value instanceof PyFloat);
}

/** Whether the checksum matches (fakegradient.key._checksum: SHA-256 of the sorted, compact, ASCII JSON);
 * null when it cannot be computed here (crypto.subtle needs a secure context: localhost or HTTPS). */
async function verifyChecksum(fields, checksum, source) {
  if (!globalThis.crypto?.subtle) return null;
  const candidates = [pythonJson(fields)];
  if (!SOURCE_TEXT_ACCESS && Number.isInteger(fields.scale)) { // an older browser: key files write scale as a float
    candidates.push(pythonJson({ ...fields, scale: new PyFloat(fields.scale) }));
  }
  for (const text of candidates) {
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
    const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
    if (hex === checksum) return true;
  }
  throw new DeviceError(`${source} has been modified or corrupted (checksum mismatch)`);
}

/** JSON text re-written as Python's json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")). */
export function canonicalJson(text) {
  return pythonJson(JSON.parse(text, keepFloats));
}

/** Python's json.dumps(value, sort_keys=True, separators=(",", ":")) (ensure_ascii, float repr). */
export function pythonJson(value) {
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (value instanceof PyFloat) return pythonFloat(value.value);
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : pythonFloat(value);
  if (typeof value === "string") {
    return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
  }
  if (Array.isArray(value)) return "[" + value.map(pythonJson).join(",") + "]";
  const keys = Object.keys(value).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return "{" + keys.map((k) => pythonJson(k) + ":" + pythonJson(value[k])).join(",") + "}";
}

/** Python's repr of a float: the shortest round-trip digits, exponent form below 1e-4 or from 1e16. */
export function pythonFloat(x) {
  if (Number.isNaN(x)) return "NaN";
  if (!Number.isFinite(x)) return x > 0 ? "Infinity" : "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const [mantissa, exponentText] = x.toExponential().split("e");
  const exponent = Number(exponentText);
  const digits = mantissa.replace("-", "").replace(".", "");
  const sign = x < 0 ? "-" : "";
  if (exponent < -4 || exponent >= 16) {
    const shown = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${shown}e${exponent < 0 ? "-" : "+"}${String(Math.abs(exponent)).padStart(2, "0")}`;
  }
  if (exponent < 0) return `${sign}0.${"0".repeat(-exponent - 1)}${digits}`;
  return `${sign}${digits.slice(0, exponent + 1).padEnd(exponent + 1, "0")}.${digits.slice(exponent + 1) || "0"}`;
}

/** Served outputs (2N) → what the cloud saw (its top-1 position, whether fake) and the real top-k. */
export function decryptOutputs(key, served, k = 5) {
  const n = key.nReal;
  if (served.length !== 2 * n) throw new DeviceError(`expected outputs of width ${2 * n} (2N), got ${served.length}`);
  if (!served.every(Number.isFinite)) throw new DeviceError("the outputs are not all finite");
  let cloudTop1 = 0;
  for (let i = 1; i < served.length; i++) if (served[i] > served[cloudTop1]) cloudTop1 = i;
  const real = Array.from({ length: n }, (_, i) => served[key.permutation[i]]); // plain outputs 0..N-1
  const max = Math.max(...real);
  const exp = real.map((v) => Math.exp(v - max));
  const sum = exp.reduce((a, b) => a + b, 0);
  const order = exp.map((_, i) => i).sort((a, b) => exp[b] - exp[a] || a - b).slice(0, k);
  return { cloudTop1, cloudTop1IsFake: key.plainOf[cloudTop1] >= n, top: order.map((c) => ({ index: c, p: exp[c] / sum })) };
}

/** Class names from a labels file's text, as fakegradient.labels.read_labels reads them. */
export function parseLabels(text, source, nReal) {
  text = text.replace(/^\ufeff/, "");
  let names;
  if (["[", "{"].includes(text.trimStart().slice(0, 1))) {
    try { names = JSON.parse(text); } catch (error) { throw new DeviceError(`cannot read labels from ${source}: ${error.message}`); }
  } else {
    names = text.replace(/^[\r\n]+|[\r\n]+$/g, "").split(/\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/).map((s) => s.trim());
    if (names.length && !names.every(Boolean)) throw new DeviceError(`${source} must hold one non-empty class name per line`);
  }
  return checkLabels(names, source, nReal);
}

export function checkLabels(names, source, nReal) {
  if (!Array.isArray(names) || !names.length || !names.every((x) => typeof x === "string")) {
    throw new DeviceError(`${source} holds no list of class names`);
  }
  if (names.length !== nReal) throw new DeviceError(`${names.length} labels (${source}) for a key of ${nReal} classes`);
  return names;
}

