// An Open Inference Protocol v2 client over fetch (binary tensor extension), as
// fakegradient.serving.client.InferenceClient; it sends tensors and the bearer token, never the key.

import { DeviceError, Unreachable, isObject } from "./common.js";

export const HEADER_LENGTH = "Inference-Header-Content-Length";
const TOKEN_PATTERN = /^[A-Za-z0-9\-._~+/]+=*$/; // as fakegradient.serving.auth
// the cloud is not trusted: answers are bounded as in fakegradient.serving.client
export const MAX_JSON_ANSWER = 4 * 2 ** 20;
const MAX_ERROR_ANSWER = 64 * 2 ** 10;
const JSON_BYTES_PER_VALUE = 32;
const ANSWER_HEAD_BYTES = 64 * 2 ** 10;
const MAX_OUTPUTS_PER_ROW = 2 ** 18;

/** The most bytes an infer answer of `rows` x `width` outputs may take (client.answer_limit). */
export function answerLimit(rows, width) {
  return rows * width * JSON_BYTES_PER_VALUE + ANSWER_HEAD_BYTES;
}

/** The body of `response`, read as it arrives and refused past `limit` bytes (`cut`: keep the first `limit`). */
export async function readBounded(response, limit, path, cut = false) {
  const declared = Number(response.headers.get("Content-Length"));
  if (!cut && response.headers.has("Content-Length") && declared > limit) {
    await response.body?.cancel();
    throw new DeviceError(`the server's answer to ${path} is ${declared} bytes, over the ${limit} expected: refused`);
  }
  const chunks = [];
  let total = 0;
  const reader = response.body ? response.body.getReader() : null;
  while (reader) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    total += value.length;
    if (total > limit) {
      await reader.cancel();
      if (!cut) throw new DeviceError(`the server's answer to ${path} is over the ${limit} bytes expected: refused`);
      break;
    }
  }
  const body = new Uint8Array(Math.min(total, limit));
  let offset = 0;
  for (const chunk of chunks) {
    const part = chunk.subarray(0, body.length - offset);
    body.set(part, offset);
    offset += part.length;
  }
  return body;
}

/** An Open Inference Protocol v2 client (fetch), like fakegradient.serving.client.InferenceClient. */
export class CloudClient {
  constructor(url, token) {
    let parsed;
    try { parsed = new URL(url); } catch { throw new DeviceError(`invalid server URL ${JSON.stringify(url)}`); }
    if (!["http:", "https:"].includes(parsed.protocol)) throw new DeviceError(`invalid server URL ${JSON.stringify(url)}: use http:// or https://`);
    if (token && !TOKEN_PATTERN.test(token)) throw new DeviceError("the bearer token may hold letters, digits and -._~+/ only");
    this.url = url.replace(/\/+$/, "");
    this.token = token || null;
  }

  async call(path, { method = "GET", body, headers = {} } = {}) {
    if (this.token) headers = { ...headers, Authorization: `Bearer ${this.token}` };
    let response;
    try {
      // redirect: "manual": a redirect is refused, never followed (a 307 would carry the photo elsewhere)
      response = await fetch(this.url + path, { method, body, headers, mode: "cors", credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer", redirect: "manual" });
    } catch {
      throw await this.unreachable();
    }
    if (response.type === "opaqueredirect" || (response.status >= 300 && response.status < 400)) {
      await response.body?.cancel();
      throw new Unreachable(`the server redirected ${path} elsewhere: refused, so that neither the token nor the photos go `
                            + "there; if another server is meant, enter its address");
    }
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const text = new TextDecoder().decode(await readBounded(response, MAX_ERROR_ANSWER, path, true));
        detail = text.trim() ? text : detail;
        detail = JSON.parse(text).error ?? detail;
      } catch { /* not JSON: the text or the status text */ }
      throw new DeviceError(`the server answered ${response.status}: ${String(detail).split(/\s+/).join(" ").trim().slice(0, 300)}`);
    }
    return response;
  }

  /** Why a request failed: nothing answers, or the server answers but does not allow this page's origin. */
  async unreachable() {
    try {
      await fetch(this.url + "/v2/health/live", { mode: "no-cors", credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer" });
    } catch {
      return new Unreachable(`Cannot reach the server at ${this.url}: is it running, and is the URL right?`);
    }
    return new Unreachable(`The server at ${this.url} answers but does not let this page call it: start it with `
                           + `--cors-origin ${location.origin} (this page's address).`);
  }

  async json(path, options) {
    const response = await this.call(path, options);
    const body = await readBounded(response, MAX_JSON_ANSWER, path);
    try { return JSON.parse(new TextDecoder().decode(body)); } catch { throw new DeviceError(`the server's answer to ${path} is not JSON`); }
  }

  /** The model's metadata: input and output names and the public parameters (from the config on Triton). */
  async model(name) {
    if (!name) {
      const index = await this.json("/v2/repository/index", { method: "POST", body: "{}", headers: { "Content-Type": "application/json" } });
      const names = Array.isArray(index) ? index.map((entry) => entry?.name) : [];
      if (names.length !== 1 || typeof names[0] !== "string") throw new DeviceError(`the server has models ${JSON.stringify(names)}: enter the model name`);
      name = names[0];
    }
    const path = "/v2/models/" + encodeURIComponent(name);
    const meta = await this.json(path);
    const input = meta?.inputs?.[0];
    const output = meta?.outputs?.[0];
    if (typeof meta?.name !== "string" || typeof input?.name !== "string" || typeof output?.name !== "string") {
      throw new DeviceError(`the server's metadata of model ${JSON.stringify(name)} is malformed`);
    }
    const parameters = isObject(meta.parameters) ? { ...meta.parameters } : {};
    if (parameters.fingerprint == null || parameters.preprocess == null) {
      Object.entries(await this.configParameters(path)).forEach(([k, v]) => { parameters[k] ??= v; });
    }
    return { name: meta.name, input: input.name, inputShape: input.shape, output: output.name, parameters };
  }

  async configParameters(path) {
    let config;
    try {
      config = await this.json(path + "/config");
    } catch (error) {
      if (error instanceof Unreachable) throw error;
      return {}; // no config endpoint
    }
    const out = {};
    for (const [key, entry] of Object.entries(isObject(config?.parameters) ? config.parameters : {})) {
      let value = entry?.string_value;
      if (typeof value === "string" && ["preprocess", "categories"].includes(key)) {
        try { value = JSON.parse(value); } catch { /* refused by the checks that use it */ }
      }
      if (value != null) out[key] = value;
    }
    return out;
  }

  /** One image's tensor (3, crop, crop) → the served outputs (2N), tensors as binary data both ways; `width`: the
   * outputs expected (the key's 2N), which bounds the answer. */
  async infer(model, tensor, crop, width = MAX_OUTPUTS_PER_ROW) {
    const data = new Uint8Array(tensor.length * 4);
    const view = new DataView(data.buffer);
    tensor.forEach((v, i) => view.setFloat32(i * 4, v, true));
    const header = new TextEncoder().encode(JSON.stringify({
      inputs: [{ name: model.input, shape: [1, 3, crop, crop], datatype: "FP32", parameters: { binary_data_size: data.length } }],
      outputs: [{ name: model.output, parameters: { binary_data: true } }],
    }));
    const body = new Uint8Array(header.length + data.length);
    body.set(header);
    body.set(data, header.length);
    const path = `/v2/models/${encodeURIComponent(model.name)}/infer`;
    const response = await this.call(path, {
      method: "POST", body, headers: { "Content-Type": "application/octet-stream", [HEADER_LENGTH]: String(header.length) },
    });
    const answer = await readBounded(response, answerLimit(1, width), path);
    return parseInferAnswer(answer, response.headers.get(HEADER_LENGTH), model.output);
  }
}

/** The output tensor of an infer answer (JSON or binary data) as one row of numbers (client._output). */
export function parseInferAnswer(body, headerLength, name) {
  const length = headerLength === null ? body.length : Number(headerLength);
  const malformed = (why) => new DeviceError(`malformed inference answer: ${why}`);
  if (!Number.isSafeInteger(length) || length <= 0 || length > body.length) throw malformed(`${HEADER_LENGTH} ${headerLength} does not fit an answer of ${body.length} bytes`);
  let head;
  try { head = JSON.parse(new TextDecoder().decode(body.subarray(0, length))); } catch { throw malformed("its header is not JSON"); }
  const outputs = Array.isArray(head?.outputs) ? head.outputs.filter((o) => o?.name === name) : [];
  if (outputs.length !== 1) throw malformed(`expected one output ${JSON.stringify(name)}, got ${outputs.length}`);
  const [output] = outputs;
  const shape = output.shape;
  if (!Array.isArray(shape) || shape.length !== 2 || shape[0] !== 1 || !Number.isSafeInteger(shape[1])) throw malformed(`expected 1 row of outputs, got shape ${JSON.stringify(shape)}`);
  if (Array.isArray(output.data)) return Float64Array.from(output.data.map(Number));
  if (output.datatype !== "FP32" || body.length - length !== 4 * shape[1]) throw malformed(`binary output of ${body.length - length} bytes is not ${JSON.stringify(shape)} ${output.datatype}`);
  const view = new DataView(body.buffer, body.byteOffset + length, 4 * shape[1]);
  return Float64Array.from({ length: shape[1] }, (_, i) => view.getFloat32(i * 4, true));
}

