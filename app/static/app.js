// The upload page: one file goes to /v1/predict (numbers and mask PNG) and /v1/overlay (the picture to look at).
// Plain browser JavaScript, no framework and no build step, so the service can serve it as it is.
"use strict";

const KEY_STORAGE = "brain-tumor-api-key";

// Human wording per HTTP status; the server's own message goes beneath it, since that names the exact rule broken.
const ERROR_TITLES = {
  400: "The file could not be read as an MRI slice.",
  401: "The server needs a valid API key. Enter it in the API key field and try again.",
  413: "The file or the image is too large.",
  415: "This file type is not supported. Choose a PNG, JPEG, TIFF or DICOM slice.",
  422: "The request was incomplete or malformed.",
  429: "Too many requests for now.",
  503: "The service is not ready to analyse slices.",
};

const el = (id) => document.getElementById(id);
const ui = {
  fileInput: el("file-input"),
  dropZone: el("drop-zone"),
  fileName: el("file-name"),
  apiKey: el("api-key"),
  status: el("status"),
  error: el("error"),
  errorTitle: el("error-title"),
  errorDetail: el("error-detail"),
  result: el("result"),
  overlay: el("overlay"),
  decision: el("decision"),
  probability: el("probability"),
  comparison: el("comparison"),
  threshold: el("threshold"),
  area: el("area"),
  models: el("models"),
  requestId: el("request-id"),
  download: el("download-mask"),
};

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

let inFlight = null; // AbortController of the analysis running now: a newer file cancels it
let objectUrls = []; // blob: URLs of the shown result, released when it is replaced

function formatPercent(value) {
  return `${(value * 100).toFixed(1)} %`;
}

function requestHeaders() {
  const key = ui.apiKey.value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function errorFrom(response) {
  let message = response.statusText;
  try {
    message = (await response.json()).error.message;
  } catch {
    // Not our JSON error body (e.g. a proxy's HTML page): the status text is all there is.
  }
  return new ApiError(response.status, message, response.headers.get("Retry-After"));
}

async function postSlice(path, file, signal) {
  const form = new FormData();
  // A neutral file name: names can hold patient names, and the server judges the type by the content anyway.
  form.append("file", file, "slice");
  const response = await fetch(path, { method: "POST", body: form, headers: requestHeaders(), signal });
  if (!response.ok) {
    throw await errorFrom(response);
  }
  return response;
}

function base64ToBlob(base64, type) {
  const bytes = Uint8Array.from(atob(base64), (char) => char.charCodeAt(0));
  return new Blob([bytes], { type });
}

function newObjectUrl(blob) {
  const url = URL.createObjectURL(blob);
  objectUrls.push(url);
  return url;
}

function releaseObjectUrls() {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
}

function showError(error) {
  let title;
  let detail = "";
  if (error instanceof ApiError) {
    title = ERROR_TITLES[error.status] ?? `The server answered with an error (HTTP ${error.status}).`;
    if (error.retryAfter) {
      title += ` Try again in ${error.retryAfter} seconds.`;
    }
    detail = `Server message: ${error.message}`;
  } else if (error instanceof TypeError) {
    // fetch rejects with a TypeError only when no answer came back at all.
    title = "Could not reach the service. Check the connection and try again.";
  } else {
    title = "The result could not be shown.";
    detail = String(error.message ?? error);
  }
  ui.errorTitle.textContent = title;
  ui.errorDetail.textContent = detail;
  ui.error.hidden = false;
  ui.status.textContent = "";
}

function describeArea(mask) {
  if (!mask) {
    return "none";
  }
  const [height, width] = mask.size;
  const share = (100 * mask.area_pixels) / (height * width);
  return `${mask.area_pixels.toLocaleString("en")} pixels (${share.toFixed(1)} % of the ${width} × ${height} slice)`;
}

async function showResult(prediction, overlayBlob) {
  releaseObjectUrls();
  ui.overlay.src = newObjectUrl(overlayBlob);
  // Wait for the picture, so the result appears in one piece rather than text first and image later.
  await ui.overlay.decode();

  const probability = formatPercent(prediction.tumor_probability);
  const threshold = formatPercent(prediction.threshold);
  const verdict = prediction.tumor_detected ? "Tumor detected" : "No tumor detected";
  ui.decision.textContent = verdict;
  ui.decision.classList.toggle("positive", prediction.tumor_detected);
  ui.decision.classList.toggle("negative", !prediction.tumor_detected);
  ui.probability.textContent = probability;
  ui.probability.dataset.value = String(prediction.tumor_probability);
  ui.comparison.textContent = prediction.tumor_detected ? "is at or above" : "is below";
  ui.threshold.textContent = threshold;
  ui.area.textContent = describeArea(prediction.mask);
  ui.models.textContent = `${prediction.models.classifier}, ${prediction.models.segmenter}`;
  ui.requestId.textContent = prediction.request_id;

  const maskPng = prediction.mask?.png;
  ui.download.hidden = !maskPng;
  if (maskPng) {
    ui.download.href = newObjectUrl(base64ToBlob(maskPng, "image/png"));
  } else {
    ui.download.removeAttribute("href");
  }

  ui.result.hidden = false;
  // The status line is the live region: screen readers hear the outcome without moving focus.
  ui.status.textContent = `${verdict}: tumor probability ${probability}, threshold ${threshold}.`;
}

async function analyse(file) {
  inFlight?.abort();
  const controller = new AbortController();
  inFlight = controller;

  ui.fileName.textContent = `Selected: ${file.name}`;
  ui.fileName.hidden = false;
  ui.error.hidden = true;
  ui.result.hidden = true;
  ui.status.textContent = "Analysing the slice…";

  try {
    // Both requests at once: the server may even serve them in a single model run.
    const [prediction, overlayBlob] = await Promise.all([
      postSlice("/v1/predict?mask_format=png", file, controller.signal).then((response) => response.json()),
      postSlice("/v1/overlay", file, controller.signal).then((response) => response.blob()),
    ]);
    if (inFlight === controller) {
      await showResult(prediction, overlayBlob);
    }
  } catch (error) {
    controller.abort(); // the other request's answer is no longer wanted
    if (inFlight === controller && error.name !== "AbortError") {
      showError(error);
    }
  } finally {
    if (inFlight === controller) {
      inFlight = null;
    }
  }
}

function restoreApiKey() {
  ui.apiKey.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
  ui.apiKey.addEventListener("input", () => {
    const key = ui.apiKey.value.trim();
    if (key) {
      sessionStorage.setItem(KEY_STORAGE, key);
    } else {
      sessionStorage.removeItem(KEY_STORAGE);
    }
  });
}

function wireFileChoice() {
  ui.fileInput.addEventListener("change", () => {
    const [file] = ui.fileInput.files;
    if (file) {
      analyse(file);
    }
    ui.fileInput.value = ""; // so that choosing the same file again analyses it again
  });

  ui.dropZone.addEventListener("dragover", (event) => {
    event.preventDefault();
    ui.dropZone.classList.add("dragging");
  });
  ui.dropZone.addEventListener("dragleave", () => ui.dropZone.classList.remove("dragging"));
  ui.dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    ui.dropZone.classList.remove("dragging");
    const [file] = event.dataTransfer.files;
    if (file) {
      analyse(file);
    }
  });
  // A file dropped beside the drop zone would otherwise make the browser navigate away to show it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

restoreApiKey();
wireFileChoice();
