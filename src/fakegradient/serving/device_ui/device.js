// The device as a web page: the key and the photos stay here. Each photo is preprocessed in the page, only its
// tensor goes to the cloud server, and the page decrypts the answer with the key and shows what each side saw.

import { CloudClient } from "./cloud.js";
import { DeviceError, Unreachable } from "./common.js";
import { MAX_KEY_BYTES, MAX_LABELS_BYTES, checkLabels, decryptOutputs, parseKey, parseLabels } from "./keyfile.js";
import { checkSpec, preprocess } from "./preprocess.js";

const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function readFile(file, limit, what) {
  if (file.size > limit) throw new DeviceError(`${what} ${file.name} is larger than ${limit / 2 ** 20} MiB`);
  return file.text();
}

/** Connect: the key, the class names and the model; refuses a key made for another model. */
async function connect() {
  const keyFile = $("key-file").files[0];
  if (!keyFile) throw new DeviceError("Pick the key file (the one `fakegradient protect --key` wrote).");
  if (!$("photos").files.length) throw new DeviceError("Pick one or more photos.");
  const key = await parseKey(await readFile(keyFile, MAX_KEY_BYTES, "key file"), `key file ${keyFile.name}`);
  const labelsFile = $("labels-file").files[0];
  const labels = labelsFile ? parseLabels(await readFile(labelsFile, MAX_LABELS_BYTES, "labels file"), labelsFile.name, key.nReal)
    : key.labels ?? (servedLabels ? checkLabels(servedLabels, "device-ui --labels", key.nReal) : null);
  const client = new CloudClient($("server-url").value.trim(), $("token").value.trim());
  const model = await client.model($("model-name").value.trim());
  const fingerprint = model.parameters.fingerprint;
  if (typeof fingerprint !== "string") throw new DeviceError(`model ${JSON.stringify(model.name)} publishes no fakegradient fingerprint: is it protected?`);
  if (fingerprint !== key.fingerprint) {
    throw new DeviceError(`Wrong key: this key belongs to another model. The key is for model ${key.fingerprint.slice(0, 16)}…, `
                          + `the server's model ${JSON.stringify(model.name)} is ${fingerprint.slice(0, 16)}…. `
                          + "Pick the key that was made together with this server's cloud folder.");
  }
  if (model.parameters.preprocess == null) throw new DeviceError(`model ${JSON.stringify(model.name)} publishes no preprocessing parameters`);
  const spec = checkSpec(model.parameters.preprocess);
  const shape = model.inputShape;
  if (Array.isArray(shape) && shape.length === 4 && (shape[2] !== spec.crop || shape[3] !== spec.crop)) {
    throw new DeviceError(`the model takes ${shape[2]}x${shape[3]} inputs, but its preprocessing crops ${spec.crop}x${spec.crop}`);
  }
  const categories = labels ?? (Array.isArray(model.parameters.categories) ? model.parameters.categories : null);
  return { key, client, model, spec, categories };
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  Object.entries(attributes).forEach(([k, v]) => node.setAttribute(k, v));
  node.append(...children);
  return node;
}

function cropCanvas(pixels, crop) {
  const canvas = element("canvas", { width: crop, height: crop, class: "crop", title: "the pixels the cloud received" });
  canvas.getContext("2d").putImageData(new ImageData(pixels, crop, crop), 0, 0);
  return canvas;
}

function label(categories, index) {
  return categories && index < categories.length ? String(categories[index]) : `class ${index}`;
}

function renderResult(row, result, pixels, crop, key, categories) {
  const fake = result.cloudTop1IsFake;
  row.dataset.cloudPosition = result.cloudTop1;
  row.dataset.cloudFake = fake;
  row.dataset.top1 = result.top[0].index;
  row.querySelector(".cloud").replaceChildren(
    cropCanvas(pixels, crop),
    element("p", {}, "Top-1 position ", element("strong", {}, `${result.cloudTop1}`), ` of ${2 * key.nReal} `,
            element("span", { class: fake ? "tag fake" : "tag real" }, fake ? "fake output" : "a real class")),
    element("p", { class: "note" }, fake ? "The cloud's answer is a decoy: it names no real class unless the cloud recovers the key."
                                         : "This time the cloud's top-1 was a real class."));
  const list = element("ol", { class: "top" });
  for (const { index, p } of result.top) {
    const bar = element("span", { class: "bar" });
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    list.append(element("li", { "data-class": index }, element("span", { class: "name" }, label(categories, index)),
                        element("span", { class: "p" }, `${(100 * p).toFixed(1)}%`), bar));
  }
  row.querySelector(".real").replaceChildren(list);
  row.classList.add("done");
}

async function classify(event) {
  event.preventDefault();
  showError("");
  $("notice").hidden = true;
  const button = $("classify");
  const results = $("results");
  results.querySelectorAll("img").forEach((image) => URL.revokeObjectURL(image.src));
  results.replaceChildren();
  button.disabled = true;
  try {
    $("status").textContent = "Reading the key and asking the server for the model…";
    const { key, client, model, spec, categories } = await connect();
    const notes = [];
    if (key.checksumVerified === null) notes.push("The key file's checksum is not verified: this page is not served from localhost or HTTPS.");
    if (key.seeded) notes.push("This key was made with --seed: reproducible, hence NOT secure (experiments only).");
    $("notice").textContent = notes.join(" ");
    $("notice").hidden = !notes.length;
    const photos = Array.from($("photos").files);
    for (const [i, photo] of photos.entries()) {
      $("status").textContent = `Classifying ${i + 1} of ${photos.length}: ${photo.name}…`;
      const image = element("img", { src: URL.createObjectURL(photo), alt: photo.name });
      const row = element("div", { class: "row", "data-photo": photo.name },
                          element("figure", { class: "photo" }, image, element("figcaption", {}, photo.name)),
                          element("div", { class: "cloud" }), element("div", { class: "real" }));
      results.append(row);
      try {
        const { tensor, pixels } = await preprocess(photo, spec, photo.name);
        const served = await client.infer(model, tensor, spec.crop, 2 * key.nReal);
        renderResult(row, decryptOutputs(key, served, 5), pixels, spec.crop, key, categories);
      } catch (error) {
        if (error instanceof Unreachable || !(error instanceof DeviceError)) throw error;
        row.classList.add("failed");
        row.querySelector(".cloud").replaceChildren(element("p", { class: "row-error", role: "alert" }, error.message));
      }
    }
    const failed = results.querySelectorAll(".failed").length;
    $("status").textContent = `Done: ${photos.length - failed} of ${photos.length} photos classified${failed ? `, ${failed} failed` : ""}.`
      + " The key never left this page.";
  } catch (error) {
    $("status").textContent = "";
    showError(error instanceof DeviceError ? error.message : `Unexpected error: ${error}`);
  } finally {
    button.disabled = false;
  }
}

let servedLabels = null; // the class names `fakegradient device-ui --labels` offers

async function loadServedLabels() {
  try {
    const response = await fetch("labels.json", { cache: "no-store" });
    servedLabels = response.ok ? await response.json() : null;
  } catch { /* none */ }
  if (Array.isArray(servedLabels)) $("labels-source").textContent = ` Without one: the ${servedLabels.length} names device-ui was given.`;
}

if (typeof document !== "undefined" && $("device-form")) {
  $("device-form").addEventListener("submit", classify);
  $("origin").textContent = location.origin;
  loadServedLabels();
}
