// The upload page: the chosen slices go to /v1/predict/batch in one request; the page draws each slice with its
// returned mask itself (no second request for an overlay), and lets people scroll the series.
// Plain browser JavaScript modules, no framework and no build step, so the service can serve them as they are.
import {
  DecodeStopped, FormatError, MAX_DRAWN_FILE_PIXELS, MAX_DRAWN_PIXELS, isBareDicom, isDicom, isZip, rasterSize, readDicom,
  readPng, readTiff, splitMultipart, tiffSize, withStoredOrientation, writeGreyPng, writeZip, zipEntries,
} from "./formats.js";

const KEY_STORAGE = "brain-tumor-api-key";
// Relative to the page, as are its style sheet and script: under a proxy's path prefix (the page at
// https://research.example/bt/) they reach /bt/v1/...; absolute, they would go to the proxy's own /v1/.
const BATCH_URL = "v1/predict/batch";
const MODELS_URL = "v1/models";
// GET /v1/models is asked for the limit on files before an upload: a service that does not answer by then is not
// waited for (the upload goes, and the server refuses it if need be).
const LIMIT_QUERY_TIMEOUT_MS = 10_000;
// A slice is "close to the threshold" when its probability is this close to it in log-odds (ln(p / (1 - p))): a band
// that scales with the threshold, where a fixed ±0.05 did not (around a threshold of 0.116 it took in a third of a
// series, the model's baseline on tumor-free slices). 0.25 gives 0.44-0.56 around 0.5, 0.093-0.144 around 0.116.
const NEAR_THRESHOLD_LOGIT_MARGIN = 0.25;
// Probabilities and thresholds are clamped into (0, 1) before the logit, so that a threshold of 0 or 1 stays finite.
const LOGIT_CLAMP = 1e-6;
// Plausible spacings in mm (a typed decimal comma read as a point): outside them the value is refused, never used.
const PIXEL_SPACING_RANGE_MM = [0.05, 5];
const SLICE_SPACING_RANGE_MM = [0.1, 20];
// Pixel-mode wheel movement that makes one slice step. One notch is 53 px (Chromium on Linux) to 100-120 px
// (Windows, macOS): each wheel event moves at most one slice, so one notch is one slice whatever its size, while the
// many small events of a touchpad add up to a step.
const WHEEL_STEP_PIXELS = 50;
// A mask of at most this many pixels is a speck at the viewer's size (even at full opacity): the caption says so
// instead of pointing at a fill nobody can see.
const TINY_MASK_PIXELS = 9;
// The outline's least width on screen. One canvas pixel is less than one CSS pixel once the image is larger than the
// viewer (a 512 px slice shown at 416 px), too faint to see; the outline is drawn this many CSS pixels wide or more.
const OUTLINE_CSS_PIXELS = 1.5;
// Pixel spacings whose rows and columns differ by at most this share are drawn square; a slice whose true proportions
// would fall outside the sides and aspect of any slice is drawn pixel for pixel (app/dicom/square_pixels.py).
const PIXEL_ASPECT_TOLERANCE = 0.01;
const MIN_SLICE_SIDE = 32;
const MAX_SLICE_ASPECT = 8;
// Fields where keystrokes go: a result that arrives while one has focus does not take the focus away.
const TEXT_ENTRY = "input:not([type=file], [type=range], [type=checkbox], [type=radio], [type=button]), textarea, "
  + "[contenteditable]";
// The recomputed volume is announced once typing in a spacing field pauses this long, not once per keystroke.
const VOLUME_ANNOUNCE_DELAY_MS = 500;
// Past this many slices the probability strip's bars touch: 1 px gaps would take most of a phone's strip.
const DENSE_STRIP_SLICES = 64;
// Most missing slices drawn in one place of the strip: a DICOM series' positions may put any distance between two
// slices (the count stays in the volume's caveat).
const MAX_GAP_DRAWN = 16;

// The first bytes of PNG, JPEG and TIFF (also BigTIFF) files, as app/imaging.py's _SIGNATURES judges them.
const RASTER_SIGNATURES = [
  [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a],
  [0xff, 0xd8, 0xff],
  [0x49, 0x49, 0x2a, 0x00],
  [0x4d, 0x4d, 0x00, 0x2a],
  [0x49, 0x49, 0x2b, 0x00],
  [0x4d, 0x4d, 0x00, 0x2b],
];
// An analysis refused as busy (503 overloaded) this soon after one was cancelled or replaced is most likely refused for
// the cancelled one's slices, which the server finishes before it lets them go ("232 of 256 slices
// waiting" may be the user's own): the page waits as Retry-After says and tries again, at most this many times.
const CANCELLED_WORK_MS = 60_000;
const BUSY_RETRIES_AFTER_CANCEL = 4;
const MAX_BUSY_WAIT_SECONDS = 60;
// Refusals that the same files may pass later, so the error offers "Try again": a key to
// type (401), a rate limit (429), a busy, loading or timed-out service (503), a proxy's timeouts (408, 502, 504). The
// others (400, 413, 415, 422: about the files) would refuse the same files again.
const RETRYABLE_STATUSES = new Set([401, 408, 429, 502, 503, 504]);
// File names listed in the "Selected" line's note of the files left out; more are counted.
const MAX_NAMES_LISTED = 5;
// Failed files shown per reason under Result; the others are folded into a <details> (233
// failures would make one paragraph of 40,000 characters).
const MAX_FAILURES_SHOWN = 3;

// What to do with a series of more files than the service takes in one analysis.
const TOO_LARGE_SLICE_ADVICE = "The slices are analysed as one series, in order: left out, this one would leave a gap "
  + "the series clean-up and the tumor volume cannot see. Save it smaller (e.g. as JPEG, or without an alpha "
  + "channel), or ask whoever runs the service for a higher MAX_UPLOAD_BYTES.";
const TOO_LARGE_TOGETHER_ADVICE = "Ask whoever runs the service for a higher MAX_BATCH_UPLOAD_BYTES, or analyse the "
  + "series in parts of neighbouring slices (the tumor volumes of the parts must then be added by hand).";
const MULTIPART_BYTES_PER_FILE = 200; // a part's boundary and headers
const TOO_MANY_FILES_ADVICE = "Ask whoever runs the service for a higher MAX_BATCH_FILES, or analyse the series in "
  + "parts of neighbouring slices: for a DICOM study read with its T1 series, each part must hold the files of every "
  + "series for the same slices, or that part is read from FLAIR alone. The tumor volumes of the parts must then be "
  + "added by hand, and the series clean-up across the split is lost.";

const SMALL_UPLOAD_BYTES = 2 ** 20;
const TOO_LARGE_FILE_ADVICE = "Ask whoever runs the service for a higher MAX_UPLOAD_BYTES, or choose a smaller "
  + "file (a DICOM file compressed by the PACS, a single slice rather than a whole multi-frame volume).";

// Human wording per HTTP status; the server's own message goes beneath it, since that names the exact rule broken.
const ERROR_TITLES = {
  400: "The file could not be read as an MRI slice.",
  401: "The server needs a valid API key. Enter it in the API key field and try again.",
  413: "The file or the image is too large.",
  415: "This file type is not supported. Choose a PNG, JPEG, TIFF or DICOM slice.",
  422: "The request was incomplete or malformed.", // validation_error; other 422 codes have their own titles
  429: "Too many requests for now.",
  503: "The service is not ready to analyse slices.",
};
// Wording per error code where the status alone would mislead (a 400 is not always an unreadable file, a 422 not
// always a malformed request). Codes not listed here fall back to the status's title.
const ERROR_TITLES_BY_CODE = {
  mixed_input: "DICOM files and PNG, JPEG or TIFF images cannot be analysed together. Choose one kind.",
  no_flair_series: "No FLAIR series among the chosen DICOM files: the models read FLAIR only.",
  empty_file: "The file is empty.",
  undecodable_image: "The image file is damaged or cut short and could not be decoded.",
  undecodable_dicom: "The DICOM file is damaged, or its pixel data could not be decoded.",
  dicom_without_pixel_data: "The DICOM file holds no image (no pixel data).",
  invalid_dicom_image: "The DICOM images cannot be used as MRI slices.",
  unsupported_dicom: "This DICOM file is not supported (not an MR image, or an encoding the server cannot read).",
  rejected_instance: "The image was withdrawn by a rejection note chosen with it, so it was left out.",
  rejection_note: "A rejection note, applied: the chosen images it withdraws, if any, were left out.",
  invalid_segmentation_input: "No DICOM SEG can be made for these slices.",
  // 408: the body came slower than MIN_UPLOAD_BYTES_PER_SECOND; the same link fails again (browser review 60 F9).
  request_timeout: "The upload came slower than the service accepts. Choose fewer files at a time or use a faster "
    + "connection; whoever runs the service can lower MIN_UPLOAD_BYTES_PER_SECOND.",
  // 413 by code: these two also refuse files that are each fine but too much together, which "the file or the
  // image is too large" (the status's title) would deny; the server's message beneath gives the numbers.
  payload_too_large: "Too large to upload: the file, or the files together, are over the server's size limit.",
  over_memory_budget: "Too large to decode: the file, or the files together, would take more memory than the "
    + "server allows. Choose fewer or smaller files.",
  // The page checks the count before uploading; this is for when it could not learn the limit (`batchFileLimit`).
  too_many_files: `Too many files for one analysis. ${TOO_MANY_FILES_ADVICE}`,
  too_many_slices: "Too many slices for one request.",
  too_many_rejection_notes: "The rejection notes among the chosen files are more than one analysis reads. Export the "
    + "study again once the PACS has applied its notes.",
  unreadable_rejection_note: "A rejection note among the chosen files is damaged: which images it withdraws is "
    + "unknown, so none was analysed. Leave it out, or export the study again.",
  // "Try again in N seconds" follows from Retry-After, so the message does not say "try again later" too.
  inference_timeout: "The analysis took too long. Try fewer slices at a time.",
  // 503 covers both "not ready" (model_unavailable, the status's title) and "ready but busy" (these two).
  overloaded: "The service is busy.",
  too_many_connections: "The service is busy.",
  // What to do about a refusal for who or where the page is (not a bare "HTTP 403" or a word on
  // Host headers).
  host_not_allowed: "The service does not accept requests made to this address. Open the page at the address "
    + "the service's operator gives, or ask them to add this one (ALLOWED_HOSTS).",
  cross_site_request: "The request came from another site's page, which the service refuses. Open the service's "
    + "own page.",
  // "Try again in 30 seconds" follows from its Retry-After.
  audit_unavailable: "The service cannot record requests right now (its audit log cannot be written), so it "
    + "analyses none. Tell whoever runs the service if this lasts.",
  repeated_slice: "The file holds the same slice as another file chosen.",
};
// mixed_input for DICOM files alone: they come from several studies or patients, and one request reads one study.
const SEVERAL_STUDIES_TITLE = "The DICOM files come from several studies or patients. Choose the files of one study.";
// A 401 when a key was typed: the words for no key sent the user to type the same key again (browser review 60 F10).
const WRONG_KEY_TITLE = "The API key entered was not accepted. Check it (keys are case-sensitive) or ask whoever runs "
  + "the service for a valid one.";
// The most of a server message the error box shows (a few files' reasons).
const MOST_DETAIL_CHARACTERS = 800;
const CUT_NOTE_CHARACTERS = 60; // what saying a message was cut takes: a shorter cut is not worth it
const SEVERAL_FOLDERS_TITLE = "The slices come from several folders. Choose one folder (one patient's series) at a time.";
// A whole request refused as withdrawn: the rejection notes chosen withdraw every image chosen with them.
const NOTHING_LEFT_TITLE = "Every chosen image was withdrawn by a rejection note chosen with it: nothing was left to "
  + "analyse.";
// Files left out on purpose, not failed: images a rejection note chosen with them withdraws, and the note itself.
const WITHDRAWAL_CODES = new Set(["rejected_instance", "rejection_note"]);
// The one request-level error of a PNG/JPEG/TIFF series (code invalid_image, HTTP 400): its slices differ in size.
const SERIES_SIZE_TITLE = "The slices differ in size, so they cannot be analysed as one series. Choose slices of "
  + "one size, or analyse them one at a time.";
// The status a per-file error of a batch would have had on its own (the batch itself answers 200).
// Failed files of a raster series that are no slice missing from the volume (`rasterSeries`).
const NO_MISSING_SLICE = new Set(["unsupported_media_type", "repeated_slice"]);

const STATUS_BY_CODE = {
  unsupported_media_type: 415,
  unsupported_dicom: 415,
  rejected_instance: 422,
  rejection_note: 422,
  payload_too_large: 413,
  image_too_large: 413,
  too_many_files: 413,
  too_many_slices: 413,
};

const el = (id) => document.getElementById(id);
const ui = {
  fileInput: el("file-input"),
  folderInput: el("folder-input"),
  dropZone: el("drop-zone"),
  fileName: el("file-name"),
  apiKey: el("api-key"),
  keyForm: el("key-form"),
  progressRow: el("progress-row"),
  progressLabel: el("progress-label"),
  progress: el("progress"),
  cancel: el("cancel"),
  status: el("status"),
  error: el("error"),
  errorTitle: el("error-title"),
  errorDetail: el("error-detail"),
  errorFull: el("error-full"),
  errorFullText: el("error-full-text"),
  segErrorFull: el("seg-error-full"),
  segErrorFullText: el("seg-error-full-text"),
  retry: el("retry"),
  result: el("result"),
  resultHeading: el("result-heading"),
  previousNote: el("previous-note"),
  decision: el("decision"),
  seriesChoice: el("series-choice"),
  fileErrors: el("file-errors"),
  viewer: el("viewer"),
  viewerHelp: el("viewer-help"),
  sliceCanvas: el("slice-canvas"),
  maskCanvas: el("mask-canvas"),
  caption: el("caption"),
  sliderRow: el("slider-row"),
  slider: el("slice-slider"),
  sliceNumber: el("slice-number"),
  stripBlock: el("strip-block"),
  strip: el("strip"),
  stripLegendGap: el("strip-legend-gap"),
  probability: el("probability"),
  comparison: el("comparison"),
  threshold: el("threshold"),
  clearedNote: el("cleared-note"),
  nearFlag: el("near-flag"),
  area: el("area"),
  volume: el("volume"),
  volumeStatus: el("volume-status"),
  sliceSummary: el("slice-summary"),
  models: el("models"),
  requestId: el("request-id"),
  maskStyle: el("mask-style"),
  maskColour: el("mask-colour"),
  maskOpacity: el("mask-opacity"),
  maskOpacityValue: el("mask-opacity-value"),
  windowControls: el("window-controls"),
  windowLevel: el("window-level"),
  windowLevelValue: el("window-level-value"),
  windowWidth: el("window-width"),
  windowWidthValue: el("window-width-value"),
  windowReset: el("window-reset"),
  spacingControls: el("spacing-controls"),
  pixelSpacing: el("pixel-spacing"),
  sliceSpacing: el("slice-spacing"),
  sliceSpacingRow: el("slice-spacing-row"),
  downloadSeg: el("download-seg"),
  segStatus: el("seg-status"),
  segError: el("seg-error"),
  segErrorTitle: el("seg-error-title"),
  segErrorDetail: el("seg-error-detail"),
  pixelSpacingError: el("pixel-spacing-error"),
  sliceSpacingError: el("slice-spacing-error"),
  docsKeyNote: el("docs-key-note"),
  downloadMasks: el("download-masks"),
  tableHead: document.querySelector("#slice-table thead"),
  tableBody: document.querySelector("#slice-table tbody"),
};

class ApiError extends Error {
  constructor(status, message, retryAfter, code) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
    this.code = code;
    this.title = null; // set where the request itself tells more than the code (a raster series' size error)
    // Whether the refused request carried a key: one typed while it was on its way was never judged (review 61 F2).
    this.keySent = null;
  }
}

/** The request never got an answer (offline, server down, connection reset): not a bug of the page. */
class NetworkError extends Error {}

/** The API key typed holds a character no HTTP header can carry: the request is never sent. */
class ApiKeyError extends Error {}

/** A 200 whose body is not the answer to the files sent (a proxy that rewrites answers): said so, not drawn. */
class AnswerError extends Error {}

/** A 200 whose body is no whole JSON document (cut short by a proxy or the network): worth sending again. */
class IncompleteAnswerError extends AnswerError {}

/** The answer's JSON; a body cut short is said in words, not in the parser's. */
function parsedAnswer(body) {
  try {
    return JSON.parse(body);
  } catch {
    throw new IncompleteAnswerError(`the answer arrived incomplete or damaged (${body.length} characters, not a whole `
      + "JSON document); try again");
  }
}

let inFlight = null; // XMLHttpRequest of the analysis running now: a newer upload cancels it
let segInFlight = null; // XMLHttpRequest of a DICOM SEG download: a newer upload cancels it too
let cancelledAt = -Infinity; // when an analysis's request was last cancelled or replaced (performance.now())
// Counts analyses started (and cancels): an analysis whose number is no longer the latest shows nothing, whatever
// stage it was in (reading a big zip, uploading, decoding), so the newest choice always wins.
let generation = 0;
let series = null; // what is shown: see showSeries
let current = 0; // index of the slice shown
let wheelDelta = 0;
let volumeAnnouncement = 0; // timer of the pending announcement of a recomputed volume
// The volume's text when the typing now pausing began (null: none pending): typing "0.5" passes "0" (refused), and a
// volume back where it started is not read out.
let volumeBeforeTyping = null;
let spacingCheck = 0; // timer of the pending check of the spacing typed (not on every keystroke: "0." becomes 0.5)
let keysInUse = false; // a 401 came: this server wants API keys
let knownLimits = null; // MAX_BATCH_FILES, MAX_UPLOAD_BYTES, MAX_BATCH_UPLOAD_BYTES, once GET /v1/models said them
let retryShown = null; // sends the files of the refused analysis again, while the error box offers "Try again"
let retryTimer = 0; // enables "Try again" once the wait the server asked for (Retry-After) has passed
let retryOnKeyEnter = false; // the refusal shown is about the key: Enter in the key field tries again

// ------------------------------------------------------------------------------------------------ small helpers

const formatPercent = (value) => `${(value * 100).toFixed(1)} %`;
/**
 * A model's probability as a percentage to 0.1 %, and its ends as "> 99.9 %" and "< 0.1 %": rounded, an output of
 * 0.9996 would read "100.0 %", a certainty no model has. Thresholds stay `formatPercent`.
 */
function formatProbability(value) {
  const percent = value * 100;
  if (percent >= 99.95) {
    return "> 99.9 %";
  }
  return percent < 0.05 ? "< 0.1 %" : formatPercent(value);
}
/**
 * A probability and its threshold as text, with more decimals (up to 4) when they differ but round to the same text:
 * "11.6 % is below the decision threshold of 11.6 %" reads as a contradiction.
 */
function probabilityAndThreshold(probability, threshold) {
  let shown = [formatProbability(probability), formatPercent(threshold)];
  for (let digits = 2; digits <= 4 && shown[0] === shown[1] && probability !== threshold; digits += 1) {
    shown = [probability, threshold].map((value) => `${(value * 100).toFixed(digits)} %`);
  }
  return shown;
}
const formatNumber = (value, digits) => value.toLocaleString("en", { minimumFractionDigits: digits, maximumFractionDigits: digits });
const nameCollator = new Intl.Collator("en", { numeric: true, sensitivity: "base" });
// A number in a file name: "-" is its sign where no letter or digit comes before it ("pos_-27.5mm", not "IM-0001"),
// and one "." between digits its decimal point ("1.25" before "1.5"); in dotted runs of digits (a UID, "1.2.840"),
// each run is a whole number. The collator alone read digits as unsigned whole numbers: slices named by a signed
// position were sent -2.5 ... -27.5, then 0.0 ... 27.5, and a tumor slice lost its neighbours (browser review 64 F6).
const NAME_NUMBER = /(?<!\d\.)(?:(?<![\p{L}\p{N}])-)?\d+(?:\.\d+)?(?!\.?\d)|\d+/gu;

/** The text and numbers of a file name, in turn: ["pos_", -27.5, "mm.jpg"]. */
function nameParts(name) {
  const parts = [];
  let from = 0;
  for (const match of name.matchAll(NAME_NUMBER)) {
    parts.push(name.slice(from, match.index), Number(match[0]));
    from = match.index + match[0].length;
  }
  parts.push(name.slice(from));
  return parts;
}

/** File names in natural order, numbers read as `nameParts` reads them; names equal so are told apart by text. */
const naturalOrder = {
  compare(a, b) {
    const [partsA, partsB] = [nameParts(a), nameParts(b)];
    for (let i = 0; i < Math.min(partsA.length, partsB.length); i += 1) {
      const [x, y] = [partsA[i], partsB[i]];
      const order = typeof x === "number" && typeof y === "number" ? Math.sign(x - y)
        : nameCollator.compare(String(x), String(y));
      if (order !== 0) {
        return order;
      }
    }
    return Math.sign(partsA.length - partsB.length) || nameCollator.compare(a, b);
  },
};
const logit = (p) => {
  const clamped = Math.min(1 - LOGIT_CLAMP, Math.max(LOGIT_CLAMP, p));
  return Math.log(clamped / (1 - clamped));
};
const isNearThreshold = (prediction) =>
  Math.abs(logit(prediction.tumor_probability) - logit(prediction.threshold)) < NEAR_THRESHOLD_LOGIT_MARGIN;
const isAboveThreshold = (prediction) => prediction.tumor_probability >= prediction.threshold;
// At or above the threshold yet not detected: only the series clean-up does that (no mask piece of the slice was
// left, as 3-D pieces too small to be tumor are dropped).
const isClearedBySeries = (prediction) => isAboveThreshold(prediction) && !prediction.tumor_detected;
const plural = (count, word) => `${count.toLocaleString("en")} ${count === 1 ? word : `${word}s`}`;

/** The X-API-Key header, if a key is typed; throws ApiKeyError for a key no header can carry (the browser would throw
 * a raw exception that blames nothing in particular). Spaces at its ends are trimmed: HTTP drops them anyway. */
function requestHeaders() {
  const key = ui.apiKey.value.trim();
  if (!key) {
    return {};
  }
  // Printable ISO-8859-1 only: setRequestHeader refuses anything past U+00FF, and control characters are no key.
  const bad = [...key].findIndex((char) => !/[\x20-\x7e\xa0-\xff]/.test(char));
  if (bad >= 0) {
    throw new ApiKeyError(`Character ${bad + 1} of the key cannot be sent in an HTTP header: only printable `
      + "ISO-8859-1 characters can (letters without accents, digits and signs are safe).");
  }
  return { "X-API-Key": key };
}

function base64ToBytes(base64) {
  return Uint8Array.from(atob(base64), (char) => char.charCodeAt(0));
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Seconds to wait from a Retry-After header (delay-seconds or an HTTP date); null when absent or unreadable. */
function retrySeconds(header) {
  if (!header) {
    return null;
  }
  const text = header.trim();
  if (/^\d+$/.test(text)) {
    return Number(text);
  }
  const seconds = Math.ceil((Date.parse(text) - Date.now()) / 1000);
  return seconds > 0 ? seconds : null; // NaN for an unreadable date; a date passed already means "now"
}

function errorFromBody(status, body, statusText, retryAfter, keySent) {
  let message = statusText;
  let code;
  try {
    const { error } = JSON.parse(body);
    if (typeof error?.message === "string") {
      message = error.message;
    }
    code = typeof error?.code === "string" ? error.code : undefined;
  } catch {
    // Not our JSON error body (e.g. a proxy's HTML page): the status text is all there is.
  }
  const error = new ApiError(status, message, retrySeconds(retryAfter), code);
  error.keySent = keySent;
  return error;
}

/** The title and detail an error is shown with, in the page's error box or beside the SEG button. */
export function describeError(error) {
  let title;
  let detail = "";
  let whole = ""; // the server's message when `detail` cuts it
  if (error instanceof ApiKeyError) {
    title = "The API key contains characters that cannot be sent. Check the key in the API key field.";
    detail = error.message;
  } else if (error instanceof ApiError) {
    title = error.title ?? ERROR_TITLES_BY_CODE[error.code]
      ?? (error.status === 401 && (error.keySent ?? Boolean(ui.apiKey.value.trim())) ? WRONG_KEY_TITLE
        : ERROR_TITLES[error.status])
      ?? `The server answered with an error (HTTP ${error.status}).`;
    if (error.retryAfter) {
      title += ` Try again in ${error.retryAfter} ${error.retryAfter === 1 ? "second" : "seconds"}.`;
    }
    detail = error.message ? `Server message: ${shortened(error.message)}` : "";
    whole = shortened(error.message) !== error.message ? error.message : "";
  } else if (error instanceof NetworkError) {
    title = "Could not reach the service. Check the connection and try again.";
  } else if (error instanceof FormatError) {
    title = error.title ?? "The files could not be opened.";
    detail = error.message;
  } else if (error instanceof AnswerError) {
    title = "The service's answer could not be read.";
    detail = error.message;
  } else if (error?.name === "NotReadableError" || error?.name === "NotFoundError") {
    // The browser's own words blame "permission problems": a chosen file was moved, changed or deleted since, or
    // the browser could not hold it.
    title = "A chosen file could not be read: it may have been moved, changed or deleted since it was chosen, or be "
      + "too large for the browser. Choose the files again.";
    detail = String(error.message ?? error);
  } else {
    title = "The result could not be shown.";
    detail = String(error.message ?? error);
  }
  return { title, detail, whole };
}

/**
 * A server message cut to `MOST_DETAIL_CHARACTERS`, at the end of a file's entry where it lists them: the error box is
 * an alert, read out whole, and a rejection note withdrawing a 120-slice series was answered with 33,000 characters,
 * one entry per file (browser review 60 F3).
 */
function shortened(message) {
  if (message.length <= MOST_DETAIL_CHARACTERS) {
    return message;
  }
  const cut = message.lastIndexOf("; ", MOST_DETAIL_CHARACTERS);
  // Entries left out counted as entries (browser review 61 F4: "3329 more characters"); a cut that would leave the
  // text no shorter is none (review 72 F1: it said "below" of a message shown nowhere).
  if (cut > 0 && message.length - cut > CUT_NOTE_CHARACTERS) {
    const more = message.slice(cut + 2).split("; ").length;
    return `${message.slice(0, cut)} … and ${more.toLocaleString("en")} more (the whole message is below)`;
  }
  if (cut > 0 || message.length - MOST_DETAIL_CHARACTERS <= CUT_NOTE_CHARACTERS) {
    return message;
  }
  const kept = message.slice(0, MOST_DETAIL_CHARACTERS);
  return `${kept} … (${(message.length - kept.length).toLocaleString("en")} more characters: the whole message is `
    + "below)";
}

/** Shows `error`; `retry`, when given, sends the same files again and is offered where that can help. */
function showError(error, retry = null) {
  const { title, detail, whole } = describeError(error);
  ui.errorTitle.textContent = title;
  ui.errorDetail.textContent = detail;
  ui.errorFullText.textContent = whole; // to read or copy whole (browser review 61 F4: it was nowhere)
  ui.errorFull.hidden = !whole;
  ui.errorFull.open = false;
  ui.error.hidden = false;
  ui.status.textContent = "";
  noteKeyNeeded(error);
  offerRetry(retry && isWorthRetrying(error) ? retry : null, error.retryAfter ?? 0);
  retryOnKeyEnter = Boolean(retryShown) && (error instanceof ApiKeyError || error.status === 401);
}

/** Can the same files pass if sent again (after a wait, or once a key is typed)? */
function isWorthRetrying(error) {
  return error instanceof NetworkError || error instanceof ApiKeyError || error instanceof IncompleteAnswerError
    || (error instanceof ApiError && RETRYABLE_STATUSES.has(error.status));
}

/**
 * The "Try again" button for `retry` (null: hidden), disabled for the `seconds` the server asked to wait: the title
 * says how long ("Try again in 29 seconds"). A wait of days (a proxy's Retry-After) is cut to a minute, as
 * `waitForCancelledWork` cuts it.
 */
function offerRetry(retry, seconds) {
  clearTimeout(retryTimer);
  retryShown = retry;
  ui.retry.hidden = !retry;
  ui.retry.disabled = Boolean(retry) && seconds > 0;
  if (ui.retry.disabled) {
    retryTimer = setTimeout(() => { ui.retry.disabled = false; }, Math.min(seconds, MAX_BUSY_WAIT_SECONDS) * 1000);
  }
}

/** "Try again" pressed (or Enter in the key field after a 401): the refused analysis's files, sent again. */
function retryAnalysis() {
  if (retryShown && !ui.retry.hidden && !ui.retry.disabled) {
    retryShown();
  }
}

/** A 401 says this server wants keys: the footer then says that /docs cannot be opened from the browser. */
function noteKeyNeeded(error) {
  if (error instanceof ApiError && error.status === 401) {
    keysInUse = true;
    showDocsKeyNote();
  }
}

/** The footer's note on /docs, while a key is typed or after a 401: a browser opening /docs sends no key. */
function showDocsKeyNote() {
  ui.docsKeyNote.hidden = !(keysInUse || ui.apiKey.value.trim());
}

// --------------------------------------------------------------------------------------------- reading files

/** Zips opened, masks of the LGG data set and hidden files left out, in natural file-name order. */
async function collectFiles(chosen) {
  const files = []; // Files, and zip entries not unpacked yet (zipEntries)
  let skippedMasks = 0;
  for (const file of chosen) {
    const head = new Uint8Array(await file.slice(0, 4).arrayBuffer());
    if (isZip(head)) {
      const entries = await fromZip(file, async () => zipEntries(await file.arrayBuffer()));
      for (const entry of entries) {
        // The zip's own path leads its entries': two zips chosen together, or a zip and a loose file, are files
        // from two places (browser review 61 F1: two patients' zips of same-named slices were one interleaved series).
        files.push({ ...entry, archivePath: `${pathOf(file)}/${entry.zipPath}`, zip: file });
      }
    } else {
      files.push(file);
    }
  }
  let hidden = 0;
  const kept = files.filter((file) => {
    if (file.name.startsWith(".") || inSystemFolder(file)) {
      hidden += 1;
      return false;
    }
    // Kaggle's LGG folders keep each ground-truth mask beside its slice: those are answers, not slices.
    if (/_mask\.(png|tiff?)$/i.test(file.name)) {
      skippedMasks += 1;
      return false;
    }
    return true;
  });
  // By path (a folder's files, a zip's entries, a dropped folder's files), so that the slices of one folder stay
  // together and in order.
  kept.sort((a, b) => naturalOrder.compare(pathOf(a), pathOf(b)));
  const zipped = kept.filter((file) => file.zip);
  const rasterNamed = kept.filter((file) => RASTER_FILE_NAME.test(file.name));
  const namesTellWhatIsSent = kept.every(
    (file) => RASTER_FILE_NAME.test(file.name) || NEVER_A_SLICE_NAME.test(file.name),
  );
  if (zipped.length > 1 && namesTellWhatIsSent) {
    // Counted before the zip is unpacked (4,096 tiny entries took 19 s, then were refused: browser review 63 F7)
    // where the names tell what `withoutExtras` sends: slices named as images, no DICOM file among them. A patient
    // CD's files (DICOM with any name, and its viewer's icons) are counted once unpacked (review 74 F2).
    const limits = await serviceLimits();
    refuseTooManyFiles(rasterNamed, limits.files, "chosen, counting those in the zip");
    // By the sizes the zip declares, before unpacking: 25 entries of 20 MiB of zeros (a 0.5 MB zip) were unpacked,
    // only to be refused as too large together, or to fail as unreadable ("Choose the files again": browser review
    // 64 F5). An entry never unpacks to more than it declares.
    refuseTooLargeTogether(rasterNamed, limits.together);
  }
  for (const entry of zipped) {
    const file = await fromZip(entry.zip, entry.unzip);
    Object.defineProperty(file, "archivePath", { value: entry.archivePath });
    kept[kept.indexOf(entry)] = file;
  }
  return { files: kept, skippedMasks, hidden };
}

/** What `read` makes of the zip `file`; its failures said with the zip's name. */
async function fromZip(file, read) {
  try {
    return await read();
  } catch (error) {
    // A damaged archive throws from DataView (RangeError) or the inflater (TypeError): say which file it was.
    // An entry's name in the reason is shown as file names are (attack review 64 F5: controls and 3,000
    // characters went into the alert as they were).
    const reason = error instanceof FormatError ? shownText(error.message, MOST_REASON_CHARACTERS)
      : "the zip file is damaged";
    throw new FormatError(`${shownText(file.name)}: ${reason}`, error instanceof FormatError ? error.title : null);
  }
}

/** A file's path as chosen: its zip's path and its own in it, in a dropped or chosen folder, else its name alone. */
function pathOf(file) {
  return file.archivePath || file.dropPath || file.webkitRelativePath || file.name;
}

/**
 * Whether a file lies in a hidden or system folder inside the one chosen (`.thumbnails/`, a NAS's `@eaDir/`
 * thumbnails, `__MACOSX/`): left out as hidden files are. One patient's folder on a Synology share was refused as
 * "several folders", its thumbnails counted as slices (browser review 61 F7). The chosen folder's own name is not
 * judged.
 */
function inSystemFolder(file) {
  // A drop's path is its entry's fullPath, "/folder/...": the leading "/" is no folder (review 72 F2).
  const folders = pathOf(file).replace(/^\//, "").split("/").slice(1, -1);
  return folders.some((folder) => folder.startsWith(".") || folder === "@eaDir" || folder === "__MACOSX");
}

/**
 * Refuse PNG, JPEG or TIFF files from more than one folder: they carry no patient or series, and several of them are
 * sent as the slices of one volume. A folder chosen one level too high (the LGG data set keeps a folder per patient)
 * gave one verdict, one strip and one tumor volume over two patients (browser review 60 F12). DICOM files say their
 * series and study themselves.
 */
function refuseSeveralFolders(files) {
  const folders = [...new Set(files.map((file) => pathOf(file).split("/").slice(0, -1).join("/")))];
  if (folders.length > 1) {
    const named = folders.slice(0, 3).map((folder) => shownText(folder || "(top level)")).join(", ");
    throw new FormatError(
      `the PNG, JPEG or TIFF files come from ${folders.length} folders (${named}${folders.length > 3 ? ", …" : ""}), `
        + "and several such files are analysed as the slices of one series",
      SEVERAL_FOLDERS_TITLE,
    );
  }
}

/** Does a file start as the PNG, JPEG and TIFF files the server reads do (`_SIGNATURES` of app/imaging.py)? */
function isRaster(head) {
  return RASTER_SIGNATURES.some((signature) => signature.every((byte, at) => head[at] === byte));
}

// A file named as a PNG, JPEG or TIFF slice is one among raster slices whatever it holds: an empty file or a saved
// "502 Bad Gateway" page in its place was left out, its neighbours joined without a gap (browser review 62 F3).
const RASTER_FILE_NAME = /\.(png|jpe?g|tiff?)$/i;
// Files beside the slices of a patient CD, a PACS export or a folder of slices, which `withoutExtras` leaves out.
const NEVER_A_SLICE_NAME = /(^DICOMDIR$|\.(txt|ini|db|xml|html?|pdf|exe|dll|inf|json|csv|md|css|js|ico|url|lnk))$/i;

/**
 * The files to send, their first bytes, those left out, and the PNG, JPEG or TIFF images left out beside DICOM
 * images (`images`). Among DICOM files, only the DICOM images are sent: a patient CD's or a PACS export's folder
 * holds a DICOMDIR (an index, no image), files beside the images (Thumbs.db, README.TXT, a viewer program) and the
 * viewer's PNG or JPEG icons, for which the server refused the whole series as mixed with images (browser review 63
 * F4: after uploading it all, the icons not named). Among several PNG, JPEG or TIFF files, the files that are none of
 * them are left out too: a failed file of a raster series is a missing slice, which cuts the series clean-up there,
 * and a note or a desktop.ini beside the slices is no slice (sent, two notes cost two tumor slices their masks). A
 * file that starts as an image and does not decode stays, as does one named as an image: that one is a missing slice.
 * Images beside fewer DICOM images are no icons: the choice is mixed, and refused so (browser review 64 F7: one
 * DICOM file among 13 JPEG slices was analysed alone). DICOM data sets without the Part 10 header (`bare`) are named
 * apart, with what to do, as the server names one sent alone (browser review 64 F9: "neither DICOM images nor ...").
 */
function withoutExtras(files, heads) {
  const dicomImage = files.map((file, at) => isDicom(heads[at]) && file.name.toUpperCase() !== "DICOMDIR");
  const raster = heads.map(isRaster);
  if (!heads.some(isDicom) && !(files.length > 1 && raster.includes(true))) {
    return { files, heads, leftOut: [], images: [], bare: [] }; // one file, or no image: the server says what each is
  }
  const dicom = dicomImage.includes(true);
  const count = (flags) => flags.filter(Boolean).length;
  if (dicom && count(raster) > count(dicomImage)) {
    const [dicomFiles, rasterFiles] = [files.filter((file, at) => dicomImage[at]), files.filter((file, at) => raster[at])];
    throw new FormatError(
      `${plural(dicomFiles.length, "DICOM image")} (${namesOf(dicomFiles)}) and ${plural(rasterFiles.length, "PNG, "
        + "JPEG or TIFF image")} (${namesOf(rasterFiles)}) chosen together`,
      ERROR_TITLES_BY_CODE.mixed_input,
    );
  }
  const kept = files.map((file, at) => (dicom ? dicomImage[at] : raster[at] || RASTER_FILE_NAME.test(file.name)));
  const images = dicom ? files.filter((file, at) => raster[at]) : [];
  const bare = dicom ? files.filter((file, at) => !kept[at] && isBareDicom(heads[at], file.size)) : [];
  const leftOut = files.filter((file, at) => !kept[at] && !(dicom && raster[at]) && !bare.includes(file));
  if (!kept.includes(true)) {
    throw new FormatError(`no DICOM image among the files chosen (${namesOf(leftOut)})`);
  }
  return {
    files: files.filter((file, at) => kept[at]), heads: heads.filter((head, at) => kept[at]), leftOut, images, bare,
  };
}

/** At most MAX_NAMES_LISTED file names, then how many more. */
// Controls and bidirectional overrides and isolates, which a file name or a DICOM value may hold: shown as they are,
// an unclosed right-to-left override turns the rest of a line around.
const UNSHOWN_CHARACTERS = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
const MOST_SHOWN_CHARACTERS = 128;
const MOST_REASON_CHARACTERS = 320; // a reason that names a file: the name's 128 and the words around it

/** A string from a file (its name, a value of its header) as the page shows it: controls replaced by U+FFFD, and cut
 * to `most` characters. */
function shownText(text, most = MOST_SHOWN_CHARACTERS) {
  const shown = String(text).replace(UNSHOWN_CHARACTERS, "\ufffd");
  return shown.length > most ? `${shown.slice(0, most - 1)}…` : shown;
}

/** A slice's file name as shown, and its frame of a multi-frame file (never cut off with a long name). */
function shownLabel(slice) {
  return `${shownText(slice.label)}${slice.frameText ?? ""}`;
}

function namesOf(files) {
  const names = files.slice(0, MAX_NAMES_LISTED).map((file) => shownText(file.name)).join(", ");
  return files.length > MAX_NAMES_LISTED ? `${names} and ${files.length - MAX_NAMES_LISTED} more` : names;
}

/**
 * Pixels to draw: grey `values` (16-bit data, DICOM: window/level applies) or an 8-bit `rgba` ImageData. A TIFF's
 * strips are decoded only while `stopped()` is false (DecodeStopped).
 */
async function decodeRaster(file, stopped) {
  const buffer = await file.arrayBuffer();
  let size = null;
  try {
    size = rasterSize(buffer);
  } catch {
    // A truncated header: the decoders below fail on it too.
  }
  if (size && !(size.width * size.height <= MAX_DRAWN_PIXELS)) {
    return null; // too large to decode here without freezing the tab; the server's answer says if it takes it
  }
  try {
    const high = (await readPng(buffer)) ?? (await readTiff(buffer, stopped));
    if (high) {
      return high;
    }
  } catch (error) {
    if (error instanceof DecodeStopped) {
      return null;
    }
    // A damaged or exotic file: the server's answer says what is wrong with it.
  }
  try {
    // The stored values, as the server reads them: a gAMA chunk or colour profile applied drew a PNG brighter
    // (mean grey 96 for 42) than what was analysed (browser review 63 F5).
    const bitmap = await createImageBitmap(new Blob([withStoredOrientation(buffer)]), {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext("2d");
    context.drawImage(bitmap, 0, 0);
    return { width: bitmap.width, height: bitmap.height, rgba: context.getImageData(0, 0, bitmap.width, bitmap.height) };
  } catch {
    return null;
  }
}

// The most pixels the page decodes to draw one choice, all files together (the server's default for one DICOM file:
// 256 slices of 512 x 512); the files past it are left undrawn.
const MAX_DRAWN_CHOICE_PIXELS = MAX_DRAWN_FILE_PIXELS;

/**
 * What `showSlice` draws for each of `files` (`pictures`, null where undrawn), decoded one after the other while the
 * server works, until MAX_DRAWN_CHOICE_PIXELS are decoded or `stopped()` (the answer was an error or refused every
 * file, or another choice came): decoded all at once, two 212 KB deflated DICOM files took the tab +1.4 GiB, decoding
 * on for seconds after the server had refused them (browser review 63 F3). `pastBudget`: the index of the first file
 * left undrawn for the budget (files.length when none was), so that its slices say why they are not drawn.
 */
async function readPictures(files, dicom, stopped) {
  const pictures = [];
  let pixels = 0;
  let pastBudget = files.length;
  for (const [index, file] of files.entries()) {
    // Reached, not only passed: at exactly the budget, one more file was decoded (browser review 64 F8).
    if (pixels >= MAX_DRAWN_CHOICE_PIXELS && pastBudget === files.length) {
      pastBudget = index;
    }
    const picture = stopped() || index >= pastBudget ? null : await readPicture(file, dicom, stopped);
    for (const frame of picture?.frames ?? (picture ? [picture] : [])) {
      pixels += frame.width * frame.height;
    }
    pictures.push(picture);
  }
  return { pictures, pastBudget };
}

/** What `showSlice` draws for a file (DICOM: the header and its frames); null when the browser cannot read it. */
async function readPicture(file, dicom, stopped) {
  try {
    return dicom ? await readDicom(await file.arrayBuffer()) : await decodeRaster(file, stopped);
  } catch {
    return null;
  }
}

async function decodeMask(mask) {
  if (!mask?.png) {
    return null;
  }
  const bitmap = await createImageBitmap(new Blob([base64ToBytes(mask.png)], { type: "image/png" }), {
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
  });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const bits = new Uint8Array(bitmap.width * bitmap.height);
  for (let i = 0; i < bits.length; i += 1) {
    bits[i] = rgba[i * 4] > 127 ? 1 : 0;
  }
  return bits;
}

function stemOf(name) {
  return name.replace(/\.[^.]*$/, "");
}

// --------------------------------------------------------------------------------------------------- request

/** One multipart request with every file; upload progress, then "analysing" until the answer comes. */
function postBatch(files, query) {
  const form = new FormData();
  // Neutral part names: file names can hold patient names, and the server judges the type by the content anyway.
  files.forEach((file, index) => form.append("files", file, `slice-${String(index + 1).padStart(4, "0")}`));
  const request = new XMLHttpRequest();
  const done = new Promise((resolve, reject) => {
    request.open("POST", `${BATCH_URL}?${query}`);
    const headers = requestHeaders();
    Object.entries(headers).forEach(([name, value]) => request.setRequestHeader(name, value));
    request.responseType = query.includes("dicom-seg") ? "blob" : "text";
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) {
        ui.progress.value = (100 * event.loaded) / event.total;
      }
    });
    request.upload.addEventListener("load", () => {
      ui.progress.removeAttribute("value"); // indeterminate while the models run
      ui.progressLabel.textContent = `Analysing ${files.length} ${files.length === 1 ? "file" : "files"}`;
      if (!query.includes("dicom-seg")) { // said once sent, not while uploading
        ui.status.textContent = `Analysing ${files.length === 1 ? "the slice" : `${files.length} files`}…`;
      }
    });
    request.addEventListener("load", async () => {
      if (request.status >= 200 && request.status < 300) {
        resolve(request.response);
        return;
      }
      const body = request.responseType === "blob" ? await request.response.text() : request.response;
      reject(errorFromBody(request.status, body, request.statusText, request.getResponseHeader("Retry-After"),
        "X-API-Key" in headers));
    });
    request.addEventListener("error", () => reject(new NetworkError("network error")));
    request.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
    request.send(form);
  });
  return { request, done };
}

// --------------------------------------------------------------------------------------------------- analysis

/** Stops what runs now (its answer, if any comes, is dropped) and hides the progress row. */
function stopAnalysis() {
  generation += 1;
  if (inFlight) {
    cancelledAt = performance.now();
    inFlight.abort();
  }
  inFlight = null;
  // A SEG still downloading is the previous result's: saving it while a new upload is shown would mix patients.
  if (segInFlight) {
    segInFlight.abort();
    setSegBusy(false);
    ui.segStatus.textContent = "DICOM SEG download stopped: new files were chosen.";
  }
  segInFlight = null;
  hideProgress();
}

function hideProgress() {
  if (document.activeElement === ui.cancel) {
    ui.fileInput.focus(); // the Cancel button disappears: keep keyboard focus on the page, at the file choice
  }
  ui.progressRow.hidden = true;
}

/**
 * Analyse `choice`: the chosen files, or a promise of them (a dropped folder, whose listing can take seconds). The
 * choice counts as the newest from the moment it is made: a slow folder dropped first no longer replaced a file
 * dropped after it (browser review 63 F1), and a listing that fails is shown as an error (review 63 F2).
 */
async function analyse(choice) {
  stopAnalysis();
  const mine = generation;
  let sent = [];
  let rasterSeriesSent = false;
  let onlyDicomSent = false;
  const stale = () => mine !== generation;
  if (document.activeElement === ui.retry) {
    ui.fileInput.focus(); // the error box and its button disappear: keep keyboard focus on the page, at the file choice
  }
  ui.error.hidden = true;
  offerRetry(null, 0);
  markResultPrevious("pending");
  ui.fileName.hidden = true; // the previous choice's names, until this one's are known
  ui.status.textContent = "Reading the files…";
  // Shown from the start, so that a slow read (a big zip, a network drive) can be cancelled too.
  ui.progressLabel.textContent = "Reading the files";
  ui.progress.removeAttribute("value");
  ui.progressRow.hidden = false;
  try {
    requestHeaders(); // a key no header can carry is refused before any file is read
    const chosen = await choice;
    if (stale()) {
      return;
    }
    const { files: collected, skippedMasks, hidden } = await collectFiles(chosen);
    if (collected.length === 0) {
      // What was left out, when something was: "no files were chosen" of a chosen file said nothing of why it was
      // dropped (browser review 62 F2).
      const none = chosen.length === 0 ? "the folder holds no files (its subfolders, if any, are empty too)"
        : hidden ? `only hidden or system files were chosen (${plural(hidden, "file")} whose name or folder starts `
          + 'with ".", or in @eaDir or __MACOSX), which are left out' : "no files were chosen";
      throw new FormatError(skippedMasks ? "only ground-truth masks (*_mask.png) were chosen" : none);
    }
    const chosenHeads = await Promise.all(
      collected.map(async (file) => new Uint8Array(await file.slice(0, 132).arrayBuffer())),
    );
    if (stale()) {
      return;
    }
    const readable = withoutExtras(collected, chosenHeads);
    const limits = await limitsFor(readable.files);
    if (stale()) {
      return;
    }
    const { files, heads, tooLarge } = withoutTooLarge(readable, limits.bytes);
    const { leftOut, images, bare } = readable;
    const dicom = heads.some(isDicom);
    const notes = [
      ...(skippedMasks ? [`${plural(skippedMasks, "ground-truth mask file")} left out`] : []),
      ...(leftOut.length ? [`left out, neither DICOM images nor PNG, JPEG or TIFF: ${namesOf(leftOut)}`] : []),
      ...(images.length ? [`left out, PNG, JPEG or TIFF images beside the DICOM images: ${namesOf(images)}`] : []),
      ...(bare.length ? [`left out, DICOM data sets without the Part 10 header (no "DICM" at byte 128; write them as `
        + `Part 10 files, e.g. with dcmtk's dcmconv +F): ${namesOf(bare)}`] : []),
      ...(tooLarge.length && files.length
        ? [`left out, larger than the service takes (${sizesTold(Math.min(...tooLarge.map((file) => file.size)),
          limits.bytes)[1]}): ${namesOf(tooLarge)}`] : []),
    ];
    if (files.length === 0) {
      throw tooLargeError(tooLarge, limits.bytes);
    }
    if (tooLarge.length && !dicom && readable.files.length > 1) {
      // Left out, a PNG, JPEG or TIFF slice would join its neighbours across the gap, unsaid: the series clean-up
      // and the volume go by the order sent (browser review 60 F5). A DICOM series' positions show the gap. Counted
      // as chosen: of two slices, the one left was analysed alone as a single slice (browser review 62 F4).
      throw tooLargeError(tooLarge, limits.bytes, TOO_LARGE_SLICE_ADVICE);
    }
    const selection = files.length === 1
      ? shownText(files[0].name)
      : `${files.length} files, ${shownText(files[0].name)} … ${shownText(files[files.length - 1].name)}`;
    ui.fileName.textContent = `Selected: ${selection}` + (notes.length ? ` (${notes.join("; ")})` : "");
    ui.fileName.hidden = false;
    if (!dicom && files.length > 1) {
      refuseSeveralFolders(files);
    }
    refuseTooManyFiles(files, limits.files);
    refuseTooLargeTogether(files, limits.together);
    sent = files;
    showUploading(files);
    ui.progressRow.hidden = false;

    // Several PNG/JPEG/TIFF files are the slices of one volume: series=true gets them the series clean-up, as
    // DICOM series always get it. A single file stays a slice on its own.
    rasterSeriesSent = !dicom && files.length > 1;
    onlyDicomSent = heads.every(isDicom);
    // Decode the pictures while the server works: the answer only adds the masks.
    let refused = false; // the request failed, or its answer refused every file: no more pictures are decoded
    const pictures = readPictures(files, dicom, () => refused || stale());
    const query = rasterSeriesSent ? "mask_format=png&series=true" : "mask_format=png";
    const body = await postRetryingAfterCancel(files, query, stale).catch((error) => {
      refused = true;
      throw error;
    });
    if (stale()) {
      return;
    }
    const answer = parsedAnswer(body);
    inFlight = null;
    // Nothing of a choice the server refused whole is drawn: three PNGs it refused as too large were decoded on, the
    // tab +924 MiB (browser review 64 F8).
    refused = Array.isArray(answer.slices) ? answer.slices.length === 0
      : Array.isArray(answer.results) && answer.results.every((item) => !item.ok);
    const decoded = await pictures;
    const shown = answer.slices
      ? await dicomSeries(answer, files, decoded)
      : await rasterSeries(answer, files, decoded, rasterSeriesSent);
    if (!stale()) {
      clearSpacing(); // typed for the previous patient or scan: it does not carry over
      showSeries({ ...shown, selection });
    }
  } catch (error) {
    if (!stale() && error.name !== "AbortError") {
      markResultPrevious("kept");
      if (error instanceof ApiError) {
        error.message = namingFiles(error.message, sent);
      }
      showError(titledForRequest(error, rasterSeriesSent, onlyDicomSent), () => analyse(choice));
    }
  } finally {
    if (!stale()) {
      inFlight = null;
      hideProgress();
    }
  }
}

/**
 * The service's limits for `files`: asked of it (`serviceLimits`) unless they are one small file, which is sent as it
 * is (GET /v1/models counts against the rate limit; refused, little is lost).
 */
async function limitsFor(files) {
  if (files.length === 1 && files[0].size <= SMALL_UPLOAD_BYTES) {
    return { files: null, bytes: null, together: null };
  }
  return serviceLimits();
}

/**
 * The chosen files (and their heads) without those larger than the service takes, which are left out before
 * uploading (a hospital link takes minutes over 120 MB that would be refused), as the service leaves them out of a
 * batch; and those files.
 */
function withoutTooLarge({ files, heads }, maxBytes) {
  const fits = files.map((file) => maxBytes === null || file.size <= maxBytes);
  return {
    files: files.filter((_, index) => fits[index]),
    heads: heads.filter((_, index) => fits[index]),
    tooLarge: files.filter((_, index) => !fits[index]),
  };
}

/** The refusal of a choice whose every file is larger than the service takes, said before anything is uploaded. */
function tooLargeError(tooLarge, maxBytes, advice = TOO_LARGE_FILE_ADVICE) {
  const largest = Math.max(...tooLarge.map((file) => file.size));
  const [size, limit] = sizesTold(largest, maxBytes);
  return new FormatError(advice,
    `Too large to upload: ${namesOf(tooLarge)} (${size}${tooLarge.length > 1 ? " the largest" : ""}); `
    + `the service takes files of at most ${limit}.`);
}

/** Refuses more files than one analysis takes before they are uploaded, saying what to do. */
function refuseTooManyFiles(files, maxFiles, chosen = "chosen") {
  if (maxFiles !== null && files.length > maxFiles) {
    throw new FormatError(TOO_MANY_FILES_ADVICE,
      `${files.length.toLocaleString("en")} files ${chosen}; the service takes at most ${maxFiles} in one analysis.`);
  }
}

/**
 * Refuse files whose request would be over MAX_BATCH_UPLOAD_BYTES before uploading them: each under the per-file
 * limit, 300 MB together were uploaded for minutes, then refused (browser review 60 F1). The multipart framing adds a
 * few hundred bytes a file.
 */
function refuseTooLargeTogether(files, maxBytes) {
  const total = files.reduce((sum, file) => sum + file.size + MULTIPART_BYTES_PER_FILE, 0);
  if (maxBytes !== null && files.length > 1 && total > maxBytes) {
    const [shownTotal, shownLimit] = sizesTold(total, maxBytes);
    throw new FormatError(TOO_LARGE_TOGETHER_ADVICE,
      `${files.length} files, ${shownTotal} together; the service takes at most ${shownLimit} in one analysis.`);
  }
}

/** A file's size and a limit it is over, in MiB, or in bytes where MiB would show them equal ("20.0 MiB ... 20.0"). */
function sizesTold(size, limit) {
  const [shownSize, shownLimit] = [mebibytes(size), mebibytes(limit)];
  if (shownSize !== shownLimit) {
    return [shownSize, shownLimit];
  }
  return [`${size.toLocaleString("en")} bytes`, `${limit.toLocaleString("en")} bytes`];
}

const mebibytes = (bytes) => `${formatNumber(bytes / 2 ** 20, 1)} MiB`;

/**
 * The server's MAX_BATCH_FILES, MAX_UPLOAD_BYTES and MAX_BATCH_UPLOAD_BYTES from GET /v1/models, asked once per page
 * (each request counts against a rate limit); each null while unknown (an older service, a key not typed yet, the network): the server's
 * 413 then says it.
 */
async function serviceLimits() {
  if (knownLimits === null) {
    try {
      const response = await fetch(MODELS_URL, {
        headers: requestHeaders(), cache: "no-store", signal: AbortSignal.timeout(LIMIT_QUERY_TIMEOUT_MS),
      });
      if (response.ok) {
        const body = await response.json();
        const positive = (value) => (Number.isInteger(value) && value > 0 ? value : null);
        knownLimits = {
          files: positive(body.max_batch_files),
          bytes: positive(body.max_upload_bytes),
          together: positive(body.max_batch_upload_bytes),
        };
      }
    } catch {
      // Unknown for now: the upload goes, and the server refuses it if need be.
    }
  }
  return knownLimits ?? { files: null, bytes: null, together: null };
}

/**
 * postBatch's answer; refused as busy soon after a cancel, the request is sent again after Retry-After, saying why
 * (the server still finishes the cancelled analysis). Cancel (or a new choice) ends the wait: `stale` turns true.
 */
async function postRetryingAfterCancel(files, query, stale) {
  for (let retry = 0; ; retry += 1) {
    const posted = postBatch(files, query);
    inFlight = posted.request;
    try {
      return await posted.done;
    } catch (error) {
      if (stale() || retry === BUSY_RETRIES_AFTER_CANCEL || !busyWithCancelledWork(error)) {
        throw error;
      }
      inFlight = null;
      await waitForCancelledWork(error.retryAfter);
      if (stale()) {
        throw new DOMException("cancelled while waiting", "AbortError");
      }
      showUploading(files);
    }
  }
}

function showUploading(files) {
  ui.status.textContent = `Sending ${files.length === 1 ? "the slice" : `${files.length} files`}…`;
  ui.progressLabel.textContent = `Uploading ${files.length} ${files.length === 1 ? "file" : "files"}`;
  ui.progress.value = 0;
}

const busyWithCancelledWork = (error) => error instanceof ApiError && error.status === 503
  && error.code === "overloaded" && error.retryAfter > 0 && performance.now() - cancelledAt < CANCELLED_WORK_MS;

/** Says why nothing happens yet, with Cancel still offered, for the `seconds` the server asked to wait. */
function waitForCancelledWork(seconds) {
  // The service asks for at most a minute; a larger value (a proxy's) would wait for days, or, past 24.8 days,
  // overflow setTimeout and send every retry at once.
  const wait = Math.min(Math.ceil(seconds), MAX_BUSY_WAIT_SECONDS);
  ui.status.textContent = "The server is still finishing the cancelled analysis; trying again in "
    + `${plural(wait, "second")}…`;
  ui.progressLabel.textContent = "Waiting for the server to finish the cancelled analysis";
  ui.progress.removeAttribute("value");
  return new Promise((resolve) => { setTimeout(resolve, wait * 1000); });
}

/**
 * Titles the request tells more precisely than the code: a raster series' one request-level invalid_image is its
 * slices' sizes (not "unreadable"), mixed_input of DICOM files alone means several studies or patients, and a whole
 * request refused as withdrawn had every image withdrawn by the notes chosen with them.
 */
function titledForRequest(error, rasterSeries, onlyDicom) {
  if (rasterSeries && error instanceof ApiError && error.code === "invalid_image") {
    error.title = SERIES_SIZE_TITLE;
  }
  if (onlyDicom && error instanceof ApiError && error.code === "mixed_input") {
    error.title = SEVERAL_STUDIES_TITLE;
  }
  if (error instanceof ApiError && WITHDRAWAL_CODES.has(error.code)) {
    error.title = NOTHING_LEFT_TITLE; // not the one file's title its code has in the failed-files list
  }
  return error;
}

function cancelAnalysis() {
  stopAnalysis();
  markResultPrevious("kept");
  ui.status.textContent = "Analysis cancelled.";
  if (!ui.fileName.hidden) {
    ui.fileName.textContent += " (cancelled, not analysed)"; // no result follows: the line no longer stands alone
  }
}

function fileFailures(failures, files) {
  return failures.map((item) => ({
    name: files[item.index] ? shownText(files[item.index].name) : `file ${item.index + 1}`,
    error: { ...item.error, message: namingFiles(item.error.message, files) },
  }));
}

/**
 * A server message names another file by its place in the request ("the request's file at index 8 (file 9 as
 * sent"), and the page sends the files in its own order under neutral part names: the file's own name is added, so
 * that the odd one out of a folder or zip can be found.
 */
function namingFiles(message, files) {
  if (typeof message !== "string") {
    return message;
  }
  const named = (whole, indices) => {
    const names = indices.split(", ").map((index) => files[Number(index)]?.name).filter(Boolean).map((name) => shownText(name));
    return names.length ? `${whole}: ${names.join(", ")}` : whole;
  };
  // Lists too ("the request's files at index 20, 21 (files 21, 22 as sent").
  return message
    .replace(/the request's file at index (\d+) \(file \d+ as sent/g, named)
    .replace(/the request's files at index ((?:\d+, )*\d+) \(files (?:\d+, )*\d+ as sent/g, named);
}

function throwIfNothingWorked(slices, failures) {
  if (slices.length === 0 && failures.length > 0) {
    const { error } = failures[0];
    throw new ApiError(STATUS_BY_CODE[error.code] ?? 400, error.message, null, error.code);
  }
}

/**
 * `<stem>_predicted_mask.png` per file (never `<stem>_mask.png`: that is the LGG data set's ground-truth name, which
 * unzipping into the patient's folder would overwrite), each name used once in the zip (files of two folders, or two
 * zip entries, can share a name: a second entry of the same name would hide the first when unpacked), with no path
 * separators or characters that archive tools or file systems refuse.
 */
function maskNamer() {
  const used = new Set(["slices.csv", "answer.json"]);
  return (fileName) => {
    // Also no leading dot (hidden file) or formula sign (the name is a cell of slices.csv too).
    const stem = stemOf(fileName).replace(/[\\/:*?"<>|\u0000-\u001f\u007f]/g, "_").replace(/^[.=+\-@]+/, "_")
      || "slice";
    let name = `${stem}_predicted_mask.png`;
    for (let n = 2; used.has(name.toLowerCase()); n += 1) {
      name = `${stem}_${n}_predicted_mask.png`;
    }
    used.add(name.toLowerCase());
    return name;
  };
}

async function rasterSeries(answer, files, { pictures, pastBudget }, sentAsSeries) {
  if (!Array.isArray(answer.results) || answer.results.length !== files.length) {
    const held = Array.isArray(answer.results) ? answer.results.length : "no";
    throw new AnswerError(`the answer holds ${held} results for the ${files.length} files sent`);
  }
  const failures = fileFailures(answer.results.filter((item) => !item.ok), files);
  // Files that failed and are slices missing from the volume, as the server's series clean-up counts them
  // (app/uploads.py raster_series_breaks): not a file that is no image, nor a copy of a slice (else a
  // copy is drawn as a gap, and slices.csv puts a blank slice inside the tumor).
  const missing = answer.results.filter((item) => !item.ok && !NO_MISSING_SLICE.has(item.error?.code));
  const slices = [];
  const maskName = maskNamer();
  let previous = null; // the index of the last file analysed
  for (const item of answer.results.filter((result) => result.ok)) {
    const file = files[item.index];
    slices.push({
      label: file.name,
      maskName: maskName(file.name),
      prediction: item.prediction,
      picture: pictures[item.index],
      pastBudget: item.index >= pastBudget,
      storedSize: pictures[item.index] ? null : await storedSizeOf(file),
      mask: await decodeMask(item.prediction.mask),
      pixelSpacing: null,
      position: null,
      // Slices missing between this slice and the one before (`missing`): the two are no neighbours.
      missingBefore: previous === null
        ? 0
        : missing.filter((failed) => failed.index > previous && failed.index < item.index).length,
    });
    previous = item.index;
  }
  throwIfNothingWorked(slices, failures);
  const missingFiles = missing.length;
  return { kind: "raster", sentAsSeries, files, slices, failures, missingFiles, answer, volumeMl: null };
}

/**
 * The answer's slices from one end of the volume to the other, as the service orders them for its clean-up and counts
 * the slices missing between them (`slices_missing_before`): by the position along the slice normal it gives each
 * slice (multi-frame files too), else by Instance Number and frame, else as sent. Files chosen from a folder come in
 * name order, which for UID-named files is no order at all.
 */
function anatomicalOrder(items, frames) {
  const headers = items.map((item) => frames.get(item.sop_instance_uid)?.header);
  let keys = items.map((item) => item.index);
  if (items.every((item) => Number.isFinite(item.position_along_normal_mm))) {
    keys = items.map((item) => item.position_along_normal_mm);
  } else if (headers.every((header) => Number.isFinite(header?.instanceNumber))) {
    keys = items.map((item, at) => headers[at].instanceNumber * 1e6 + item.frame_number);
  }
  return items.map((item, at) => ({ item, key: keys[at] })).sort((a, b) => a.key - b.key).map(({ item }) => item);
}

async function dicomSeries(answer, files, { pictures: headers, pastBudget }) {
  if (!Array.isArray(answer.slices) || answer.slices.length === 0) {
    throw new AnswerError("the answer holds no slices"); // the service answers an error when none could be read
  }
  // The frames sent bound the slices, where the page could read every file's header: the frames each file holds,
  // whether or not the page can draw them.
  const sent = headers.every((header) => header)
    ? headers.reduce((sum, header) => sum + header.frameCount, 0)
    : Infinity;
  if (answer.slices.length > sent) {
    throw new AnswerError(`the answer holds ${answer.slices.length} slices for the ${sent} in the files sent`);
  }
  const failures = fileFailures(answer.file_errors, files);
  // Each slice's picture and name come from the file the server read for its UID: not from a file it refused (a
  // second file with the same SOP Instance UID is refused in its place and the first is read), and never from a
  // later file of that UID, whose pixels may differ (a re-export) and whose name the page lists as not analysed.
  const refused = new Set((answer.file_errors ?? []).map((item) => item.index));
  const frames = new Map();
  headers.forEach((header, index) => {
    if (header?.sopInstanceUid && !refused.has(index) && !frames.has(header.sopInstanceUid)) {
      frames.set(header.sopInstanceUid, { header, name: files[index].name });
    }
  });
  const slices = [];
  for (const [position, item] of anatomicalOrder(answer.slices, frames).entries()) {
    const source = frames.get(item.sop_instance_uid);
    const frame = source?.header.frames[item.frame_number - 1] ?? null;
    slices.push({
      label: source ? source.name : `slice ${item.index + 1}`,
      frameText: source && source.header.frameCount > 1 ? `, frame ${item.frame_number}` : "",
      // Numbered as the page shows the slices (anatomical order), not as the files were sent: the names sort in
      // slice order, and slice_0001 is the page's slice 1.
      maskName: `slice_${String(position + 1).padStart(4, "0")}_mask.png`,
      prediction: { ...item.prediction, threshold: answer.threshold },
      picture: frame,
      pastBudget: !frame && item.file_index >= pastBudget,
      storedSize: source && source.header.columns > 0 ? [source.header.columns, source.header.rows] : null,
      window: source?.header.frameWindows[item.frame_number - 1] ?? source?.header.window ?? null,
      mask: await decodeMask(item.prediction.mask),
      pixelSpacing: source?.header.frameSpacings?.[item.frame_number - 1] ?? source?.header.pixelSpacing ?? null,
      // The server's position along the slice normal (mm), for slices.csv: where the mask lies in the volume.
      position: Number.isFinite(item.position_along_normal_mm) ? item.position_along_normal_mm : null,
      // Slices missing between this one and the one before (positions further apart than the series' spacing):
      // room for them in the strip (at most MAX_GAP_DRAWN, the count said), and the two are no neighbours.
      missingBefore: position === 0 ? 0 : item.slices_missing_before ?? 0,
    });
  }
  throwIfNothingWorked(slices, failures);
  return { kind: "dicom", sentAsSeries: true, files, slices, failures, answer, volumeMl: answer.tumor_volume_ml };
}

// ------------------------------------------------------------------------------------------------- the series

/** [width, height] of a slice as stored: its picture's, else its mask's, else the file's header's (a slice the
 * browser cannot draw: its blank mask and canvas at the slice's size, not 256 x 256). */
function sizeOf(slice) {
  if (slice.picture) {
    return [slice.picture.width, slice.picture.height];
  }
  const size = slice.prediction.mask?.size;
  if (size) {
    return [size[1], size[0]];
  }
  return slice.storedSize ?? [256, 256];
}

/** [width, height] from a raster file's header (PNG, JPEG, TIFF), or null. */
async function storedSizeOf(file) {
  try {
    const buffer = await file.arrayBuffer();
    const size = rasterSize(buffer) ?? tiffSize(buffer);
    return size ? [size.width, size.height] : null;
  } catch {
    return null;
  }
}

/**
 * The result on screen while a new choice is read and analysed ("pending"), or after that one failed or was
 * cancelled ("kept"): still shown, named as the previous result, so that a
 * wrong file or a Cancel does not lose it. Its downloads wait while the new files are on their way: a SEG of the
 * previous patient saved once the new result is shown would mix patients. `null`: the result shown is the current one.
 */
function markResultPrevious(state) {
  const shown = series !== null && !ui.result.hidden;
  ui.result.classList.toggle("previous", shown && state !== null);
  ui.previousNote.hidden = !shown || state === null;
  if (shown && state !== null) {
    ui.previousNote.textContent = state === "pending"
      ? `Previous result (${series.selection}), shown until the new choice is analysed.`
      : `Previous result (${series.selection}); the new choice was not analysed.`;
  }
  // The spacing fields belong to the result shown: typed while new files are on their way, a value would change
  // the previous patient's volume and zip, then be cleared by the new result.
  ui.pixelSpacing.readOnly = shown && state === "pending";
  ui.sliceSpacing.readOnly = shown && state === "pending";
  for (const button of [ui.downloadMasks, ui.downloadSeg]) {
    if (shown && state === "pending") {
      button.setAttribute("aria-disabled", "true"); // not `disabled`, which drops the keyboard focus to the body
    } else {
      button.removeAttribute("aria-disabled");
    }
  }
}

function showSeries(shown) {
  markResultPrevious(null);
  series = shown;
  const { slices, answer } = shown;
  const first = slices[0].prediction;
  const positives = slices.filter((slice) => slice.prediction.tumor_detected).length;
  markBesideTumor(slices);
  const near = slices.filter((slice) => isNearThreshold(slice.prediction)).length;
  const beside = slices.flatMap((slice, index) => (slice.besideTumor ? [index + 1] : []));
  const detected = positives > 0;
  const verdict = detected ? "Tumor detected" : "No tumor detected";
  ui.decision.textContent = slices.length === 1 ? verdict : `${verdict} (${positives} of ${slices.length} slices)`;
  ui.decision.classList.toggle("positive", detected);
  ui.decision.classList.toggle("negative", !detected);
  ui.models.replaceChildren(...modelTags([answer.models.classifier, answer.models.segmenter]));
  ui.requestId.textContent = answer.request_id;
  ui.sliceSummary.textContent = `${slices.length} ${slices.length === 1 ? "slice" : "slices"}, ${positives} with tumor`
    + (near ? `, ${near} close to the threshold` : "")
    + (beside.length ? ` (${beside.length} of them next to a slice with tumor)` : "");

  ui.seriesChoice.textContent = shown.kind === "dicom" ? describeSeriesChoice(answer) : "";
  ui.seriesChoice.hidden = shown.kind !== "dicom";

  showFailures(shown.failures);

  ui.spacingControls.hidden = shown.kind === "dicom";
  ui.sliceSpacingRow.hidden = slices.length === 1; // one slice has no volume: its pixel spacing gives the area
  ui.downloadSeg.hidden = shown.kind !== "dicom";
  ui.downloadSeg.disabled = !detected;
  setSegBusy(false);
  ui.segStatus.textContent = "";
  ui.segError.hidden = true;
  ui.downloadSeg.textContent = detected ? "Download DICOM SEG" : "DICOM SEG: none, no tumor found";

  setUpWindow(slices);
  ui.slider.max = String(slices.length);
  ui.sliderRow.hidden = slices.length === 1;
  ui.stripBlock.hidden = slices.length === 1;
  // One slice has nothing to scroll through: the viewer is no keyboard stop then, and its scrolling help is hidden.
  ui.viewer.tabIndex = slices.length === 1 ? -1 : 0;
  ui.viewerHelp.hidden = slices.length === 1;
  buildStrip(slices);
  buildTable(slices);
  updateVolume();
  // A new result is announced by the status line; a volume announcement still pending is of the old one.
  clearTimeout(volumeAnnouncement);
  volumeBeforeTyping = null;
  ui.volumeStatus.textContent = "";

  ui.result.hidden = false;
  showSlice(firstSliceToShow(slices));
  revealResult(); // before the status line changes, so that the outcome is read after the heading, not cut off
  // The status line is the live region: screen readers hear the outcome without moving focus, including what the
  // page flags beside it (slices close to the threshold, files left out), which they would otherwise never hear of.
  const firstAgainstThreshold = probabilityAndThreshold(first.tumor_probability, first.threshold);
  const outcome = slices.length === 1
    ? `${verdict}: tumor probability ${firstAgainstThreshold[0]}, threshold ${firstAgainstThreshold[1]}.`
    : `${verdict} in ${positives ? positives : "any"} of ${positives ? "" : "the "}${slices.length} slices; `
      + `threshold ${formatPercent(first.threshold)}.`; // not "No tumor detected in 0 of"
  const besideNote = beside.length
    ? `, ${beside.length} of them next to a slice with tumor `
      + `(review first: ${beside.length === 1 ? "slice" : "slices"} ${beside.join(", ")})`
    : "";
  const nearNote = slices.length === 1
    ? " Close to the threshold: review this slice with care."
    : ` ${near} ${near === 1 ? "slice is" : "slices are"} close to the threshold${besideNote}.`;
  const failed = shown.failures.filter((failure) => !isWithdrawal(failure)).length;
  const withdrawn = withdrawalSaid(shown.failures);
  const failureNote = (failed ? ` ${plural(failed, "file")} could not be analysed (listed under Result).` : "")
    + (withdrawn ? ` ${withdrawn} (listed under Result).` : "");
  // DICOM slices missing between the positions (a raster series' missing slices are its failed files, said above).
  const missing = shown.kind === "dicom" ? slices.reduce((sum, slice) => sum + (slice.missingBefore ?? 0), 0) : 0;
  const missingNote = missing ? ` ${plural(missing, "slice")} missing between those analysed (hatched in the strip).` : "";
  ui.status.textContent = outcome + (near ? nearNote : "") + failureNote + missingNote;
}

/**
 * The files that could not be analysed, one list item per reason (the answer's error code, which each failed file
 * has): the reason in the page's words, the count, the first few files with the server's message, the rest in a
 * <details>. Text only: names and messages come from the files and the server.
 */
function showFailures(failures) {
  ui.fileErrors.replaceChildren();
  ui.fileErrors.hidden = failures.length === 0;
  if (failures.length === 0) {
    return;
  }
  const lead = document.createElement("p");
  const failed = failures.filter((failure) => !isWithdrawal(failure)).length;
  // Files a rejection note withdraws (and the note) were left out as asked, not failed.
  lead.textContent = [
    failed ? `${plural(failed, "file")} could not be analysed` : "",
    withdrawalSaid(failures),
  ].filter(Boolean).join("; ") + ":";
  const list = document.createElement("ul");
  list.append(...[...failuresByCode(failures)].map(([code, group]) => failureGroupItem(code, group)));
  ui.fileErrors.append(lead, list);
}

/**
 * "tumor_classifier@1.6.0, tumor_segmenter@1.6.0" as nodes that a narrow column breaks before "@", never inside a
 * version: "1.6." on one line and "0" on the next reads as another version.
 */
function modelTags(tags) {
  return tags.flatMap((tag, at) => {
    const split = tag.lastIndexOf("@");
    const version = document.createElement("span");
    version.className = "model-version";
    version.textContent = split >= 0 ? tag.slice(split) : "";
    const name = document.createTextNode(split >= 0 ? tag.slice(0, split) : tag);
    const parts = [name, document.createElement("wbr"), version];
    return at ? [document.createTextNode(", "), ...parts] : parts;
  });
}

/**
 * "2 images left out, withdrawn by the rejection note chosen with them": the images counted, not the note, which
 * withdraws them and is no image left out (browser review 60 F4: "3 files left out as a rejection note asks").
 */
function withdrawalSaid(failures) {
  const images = failures.filter((failure) => failure.error.code === "rejected_instance").length;
  const notes = failures.filter((failure) => failure.error.code === "rejection_note").length;
  if (!images) {
    return notes ? `${plural(notes, "rejection note")} read` : "";
  }
  const by = notes > 1 ? `${notes} rejection notes` : "the rejection note";
  return `${plural(images, "image")} left out, withdrawn by ${by} chosen with them`;
}

/** A failed file that was left out on purpose: an image a rejection note withdraws, or the note. */
function isWithdrawal(failure) {
  return WITHDRAWAL_CODES.has(failure.error.code);
}

/** Failures grouped by their error code, in the order each code first appears. */
function failuresByCode(failures) {
  const groups = new Map();
  for (const failure of failures) {
    const code = failure.error.code ?? "";
    groups.set(code, [...(groups.get(code) ?? []), failure]);
  }
  return groups;
}

/** One reason's list item: "8 files: <title>", then the first MAX_FAILURES_SHOWN files, then the rest folded. */
function failureGroupItem(code, group) {
  const reason = describeError(new ApiError(STATUS_BY_CODE[code] ?? 400, "", null, code)).title;
  const item = document.createElement("li");
  const heading = document.createElement("p");
  heading.textContent = `${plural(group.length, "file")}: ${reason}`;
  item.append(heading, failedFileList(group.slice(0, MAX_FAILURES_SHOWN)));
  const folded = group.slice(MAX_FAILURES_SHOWN);
  if (folded.length) {
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = plural(folded.length, "more file");
    details.append(summary, failedFileList(folded));
    item.append(details);
  }
  return item;
}

/** A list of failed files, each as "name (server message)". */
function failedFileList(failures) {
  const list = document.createElement("ul");
  list.append(...failures.map((failure) => {
    const entry = document.createElement("li");
    entry.textContent = `${failure.name} (${shownText(failure.error.message, Infinity)})`;
    return entry;
  }));
  return list;
}

/**
 * Sets `besideTumor` on the slices without tumor that are close to the threshold and next to a slice with tumor: where
 * a tumor's first or last slice would be missed, so they are marked apart from the others close to the threshold (in
 * a long series often the model's baseline on tumor-free slices) and named first.
 */
function markBesideTumor(slices) {
  const positive = (index) => Boolean(slices[index]?.prediction.tumor_detected);
  // A failed file between two slices is a missing slice (`missingBefore`): those two are not next to each other.
  const touching = (index) => index > 0 && index < slices.length && !slices[index].missingBefore;
  slices.forEach((slice, index) => {
    slice.besideTumor = !slice.prediction.tumor_detected && isNearThreshold(slice.prediction)
      && ((touching(index) && positive(index - 1)) || (touching(index + 1) && positive(index + 1)));
  });
}

/**
 * The result heading scrolled to the top of the window and given keyboard focus: the result appears below the fold
 * (on a phone, wholly off screen), and keyboard and screen-reader users go on from there. Not while someone types in
 * a field (the API key), whose next keystrokes would otherwise land nowhere; the status line still announces it.
 */
function revealResult() {
  if (document.activeElement?.matches(TEXT_ENTRY)) {
    return;
  }
  ui.resultHeading.focus({ preventScroll: true });
  ui.resultHeading.scrollIntoView({ block: "start" });
}

/** A series' role as the page names it: the server's "other" (neither FLAIR nor T1) alone is no name. */
const roleName = (role) => (role === "other" ? "Other sequence" : role);
const T1_ROLES = new Set(["T1 pre-contrast", "T1 post-contrast"]);
// The roles the models read: a series of one left out has its role's evidence, not the reason it was left out.
const READ_ROLES = new Set(["FLAIR", ...T1_ROLES]);

/**
 * Which DICOM series the server read and which it left out, with its notes: plain text from the answer. A series'
 * files that could not be read (a repeated instance, a broken file) are counted apart, as the answer lists them in
 * `file_errors` too.
 */
function describeSeriesChoice(answer) {
  const unread = new Set((answer.file_errors ?? []).map((item) => item.index));
  const numbered = (use) => (use.series_number === null ? "no series number" : `series ${use.series_number}`);
  const named = (use) => {
    const number = numbered(use);
    const description = use.series_description ? `, “${shownText(use.series_description, 64)}”` : "";
    const failed = use.files.filter((index) => unread.has(index)).length;
    const files = plural(use.files.length - failed, "file") + (failed ? `, ${failed} more not read` : "");
    return `${roleName(use.role)} (${number}${description}, ${files})`;
  };
  const used = answer.series_used ?? [];
  const leftOut = answer.series_left_out ?? [];
  // Files left out of a series that is read (copies of files read) would look like the series itself left out:
  // they are named apart, with the server's reason.
  const partOfUsed = (use) => used.some((item) => item.role === use.role
    && item.series_number === use.series_number && item.series_description === use.series_description);
  const otherSeries = leftOut.filter((use) => !partOfUsed(use));
  const parts = [`Series read: ${used.length ? used.map(named).join(", ") : "none"}.`];
  // Each series left out with the server's reason, as copies left out of a series read are. A FLAIR or T1 series'
  // evidence says why it is one, not why it was left out (another FLAIR ranks first, a T1 does not pair): the notes
  // say that (browser review 60 F13: a second FLAIR's was shown as its reason).
  const notes = answer.selection_notes ?? [];
  for (const use of otherSeries) {
    if (READ_ROLES.has(use.role) && notes.length) {
      parts.push(`Left out: ${named(use)}, for the reason the notes below give (its role: ${use.evidence}).`);
    } else {
      parts.push(`Left out: ${named(use)}: ${use.evidence}.`);
    }
  }
  for (const use of leftOut.filter(partOfUsed)) {
    const files = plural(use.files.length, "file");
    parts.push(`${files} left out of ${roleName(use.role)} (${numbered(use)}): ${use.evidence}.`);
  }
  // Each note a sentence of its own: the server writes them to be joined into others (its SR, logs), in lower case.
  parts.push(...notes.map((note) => `${note.charAt(0).toUpperCase()}${note.slice(1)}.`));
  return parts.join(" ");
}

function buildStrip(slices) {
  ui.strip.replaceChildren();
  ui.strip.setAttribute("aria-valuemax", String(slices.length));
  ui.strip.classList.toggle("dense", slices.length > DENSE_STRIP_SLICES);
  const line = document.createElement("div");
  line.className = "strip-threshold";
  line.style.bottom = `${100 * slices[0].prediction.threshold}%`;
  ui.strip.append(line);
  const gaps = slices.some((slice) => slice.missingBefore);
  ui.stripLegendGap.hidden = !gaps;
  slices.forEach((slice, index) => {
    // The slices missing between two slices keep their place in the strip, empty: one hatched space as wide as that
    // many bars, at most MAX_GAP_DRAWN (then marked shortened, with its count), and never too thin to see.
    const missing = slice.missingBefore ?? 0;
    if (missing > 0) {
      const gap = document.createElement("div");
      gap.className = "strip-gap";
      gap.style.flexGrow = String(Math.min(missing, MAX_GAP_DRAWN));
      gap.dataset.missing = String(missing);
      gap.setAttribute("role", "img");
      gap.setAttribute("aria-label", missingWords(missing));
      gap.title = missing > MAX_GAP_DRAWN ? `${missingWords(missing)} (drawn shortened)` : missingWords(missing);
      if (missing > MAX_GAP_DRAWN) {
        gap.classList.add("shortened");
        const count = document.createElement("span");
        count.className = "strip-gap-count";
        count.setAttribute("aria-hidden", "true");
        count.textContent = `≈ ${missing.toLocaleString("en")}`;
        gap.append(count);
      }
      ui.strip.append(gap);
    }
    const bar = document.createElement("div");
    const { prediction } = slice;
    bar.className = `strip-bar ${prediction.tumor_detected ? "positive" : "negative"}`;
    bar.classList.toggle("near", isNearThreshold(prediction));
    bar.classList.toggle("beside-tumor", slice.besideTumor);
    bar.dataset.index = String(index);
    const fill = document.createElement("span");
    fill.style.height = `${Math.max(1, 100 * prediction.tumor_probability)}%`;
    bar.append(fill);
    ui.strip.append(bar);
  });
}

/** "1 slice missing", "50 slices missing". */
function missingWords(count) {
  return `${plural(count, "slice")} missing`;
}

function areaMm2(slice) {
  const spacing = slice.pixelSpacing ?? (series.kind === "raster" ? enteredSpacing().pixel : null);
  if (!spacing || !slice.prediction.mask) {
    return slice.prediction.mask || !spacing ? null : 0;
  }
  const [row, column] = Array.isArray(spacing) ? spacing : [spacing, spacing];
  return slice.prediction.mask.area_pixels * row * column;
}

function buildTable(slices) {
  // Each cell carries its column's name: on a narrow screen the rows are stacked and each value shows its name.
  const labels = [...ui.tableHead.querySelectorAll("th")].map((header) => header.textContent);
  ui.tableBody.replaceChildren(
    ...slices.map((slice, index) => {
      const row = document.createElement("tr");
      const { prediction } = slice;
      const area = areaMm2(slice);
      let result = resultWords(prediction);
      if (slice.besideTumor) {
        result += " (close to threshold, next to tumor)";
      } else if (isNearThreshold(prediction)) {
        result += " (close to threshold)";
      }
      const cells = [
        String(index + 1),
        shownLabel(slice),
        probabilityAndThreshold(prediction.tumor_probability, prediction.threshold)[0],
        result,
        (prediction.mask?.area_pixels ?? 0).toLocaleString("en"),
        area === null ? "–" : formatNumber(area, 1),
      ];
      cells.forEach((text, column) => {
        const cell = document.createElement(column === 0 ? "th" : "td");
        if (column === 0) {
          cell.scope = "row";
        }
        cell.dataset.label = labels[column];
        cell.textContent = text;
        row.append(cell);
      });
      return row;
    }),
  );
}

/** A new upload is another patient or scan: the spacing typed for the previous one does not carry over. */
function clearSpacing() {
  ui.pixelSpacing.value = "";
  ui.sliceSpacing.value = "";
  clearTimeout(spacingCheck);
  showSpacingErrors();
}

/**
 * A spacing typed in mm: `{ value }` when plausible, `{ error }` saying why not, `{}` when empty. A decimal comma
 * counts as a point ("0,9375"): a number field would drop it and read 9375.
 */
function readSpacing(input, [low, high], name) {
  const typed = input.value.trim();
  if (typed === "") {
    return {};
  }
  const text = typed.replace(",", ".");
  if (!/^[+-]?(\d+\.?\d*|\.\d+)$/.test(text)) {
    return { error: `Invalid ${name}: “${typed}” is not a number of mm. Type it like 0.94 or 0,94.` };
  }
  const value = Number(text);
  if (value < low || value > high) {
    return { error: `Invalid ${name}: ${text} mm is out of range; it must be between ${low} and ${high} mm.` };
  }
  return { value };
}

/** The spacings typed: `pixel`, `slice` (null unless valid) and why each invalid one is refused. */
function enteredSpacing() {
  const pixel = readSpacing(ui.pixelSpacing, PIXEL_SPACING_RANGE_MM, "pixel spacing");
  // A single slice has no slice spacing: its field is hidden, and whatever it holds is not asked for.
  const sliceAsked = !ui.sliceSpacingRow.hidden;
  const slice = sliceAsked ? readSpacing(ui.sliceSpacing, SLICE_SPACING_RANGE_MM, "slice spacing") : {};
  return { pixel: pixel.value ?? null, slice: slice.value ?? null, pixelError: pixel.error, sliceError: slice.error };
}

/** Each refused spacing's reason beside its field (and the field marked invalid); shown once typing pauses. */
function showSpacingErrors() {
  const { pixelError, sliceError } = enteredSpacing();
  for (const [input, message, error] of [
    [ui.pixelSpacing, ui.pixelSpacingError, pixelError],
    [ui.sliceSpacing, ui.sliceSpacingError, sliceError],
  ]) {
    message.textContent = error ?? "";
    message.hidden = !error;
    if (error) {
      input.setAttribute("aria-invalid", "true");
    } else {
      input.removeAttribute("aria-invalid");
    }
  }
}

/**
 * DICOM: the API's volume. PNG/TIFF: pixels x pixel spacing² x slice spacing, once both spacings are entered. A single
 * slice gets none, DICOM included: its area x thickness would read as a tumor's volume.
 */
function updateVolume() {
  let volume = null;
  let text;
  if (series.slices.length === 1) {
    text = "not computed for a single slice (send the slices of a series together)";
  } else if (series.kind === "dicom") {
    volume = series.volumeMl;
    text = volume === null
      ? "unknown: the DICOM files give no pixel or slice spacing"
      : `${formatNumber(volume, 2)} mL (from the DICOM geometry)${volumeCaveats(series)}`;
  } else {
    const { pixel, slice, pixelError, sliceError } = enteredSpacing();
    if (pixelError || sliceError) {
      // Never a volume from a refused value: "0,9375" read as 9375 once gave 6.95 billion mL.
      const which = pixelError && sliceError ? "the pixel and slice spacings entered are" : pixelError
        ? "the pixel spacing entered is" : "the slice spacing entered is";
      text = `not computed: ${which} invalid (see below)`;
    } else if (pixel && slice) {
      const pixels = series.slices.reduce((sum, item) => sum + (item.prediction.mask?.area_pixels ?? 0), 0);
      volume = (pixels * pixel * pixel * slice) / 1000;
      text = `${formatNumber(volume, 2)} mL (from the spacing entered)${volumeCaveats(series)}`;
    } else {
      text = "enter the pixel and slice spacing below to get it";
    }
  }
  ui.volume.textContent = text;
  if (volume === null) {
    delete ui.volume.dataset.value;
  } else {
    ui.volume.dataset.value = String(volume);
  }
}

/**
 * Why a series' volume may fall short. DICOM, from the answer: slices missing inside it (the files that failed
 * among them), tumor at its ends. PNG, JPEG or TIFF: the files that could not be analysed, whose slices add nothing,
 * and tumor on the first or last slice analysed (the batch answer has no series fields: the slices say it).
 */
function volumeCaveats(shown) {
  const { answer, slices } = shown;
  const caveats = [];
  if (shown.kind === "raster" && shown.missingFiles > 0) {
    caveats.push(`${plural(shown.missingFiles, "file")} of the series could not be analysed`);
  }
  if (answer.slices_missing > 0) {
    caveats.push(`${plural(answer.slices_missing, "slice")} missing between those analysed`);
  }
  const reachesEnd = shown.kind === "raster"
    ? slices[0].prediction.tumor_detected || slices.at(-1).prediction.tumor_detected
    : answer.tumor_reaches_series_end;
  if (reachesEnd) {
    caveats.push("tumor on the first or last slice sent (it may go on beyond them)");
  }
  return caveats.length ? `; it may fall short: ${caveats.join(", and ")}` : "";
}

/**
 * Reads the volume out (its live region) once typing pauses: one announcement, not one per keystroke, and none when
 * the volume ends where it was (`before`: its text before this keystroke).
 */
function announceVolume(before) {
  clearTimeout(volumeAnnouncement);
  volumeBeforeTyping ??= before;
  volumeAnnouncement = setTimeout(() => {
    if (ui.volume.textContent !== volumeBeforeTyping) {
      ui.volumeStatus.textContent = `Tumor volume: ${ui.volume.textContent}`;
    }
    volumeBeforeTyping = null;
  }, VOLUME_ANNOUNCE_DELAY_MS);
}

// ------------------------------------------------------------------------------------------- window / level

// The server's guards against a few extreme pixels in its min/max stretch, mirrored by stretchRange: the constants
// of the same names in app/intensity_range.py (change both together).
const OUTLIER_FACTOR = 8;
const REFERENCE_PERCENTILE = 99.9;
const LOW_OUTLIER_MARGIN = 0.5;
const LOW_REFERENCE_PERCENTILE = 0.1;
const FEW_PIXELS = 5;
const ISOLATED_FACTOR = 2;
const SAMPLE_PIXELS = 2 ** 20;

/** numpy's default (linear) percentile `p` of ascending `sorted`. */
function percentile(sorted, p) {
  const at = (p / 100) * (sorted.length - 1);
  const below = Math.floor(at);
  const above = Math.min(below + 1, sorted.length - 1);
  return sorted[below] + (at - below) * (sorted[above] - sorted[below]);
}

/** The least value of `arrays` at or above `bound`, or the greatest at or below it (`fallback` when none). */
function nearestInside(arrays, bound, above, fallback) {
  let found = fallback;
  for (const values of arrays) {
    for (const value of values) {
      if (above ? value >= bound && value < found : value <= bound && value > found) {
        found = value;
      }
    }
  }
  return found;
}

/**
 * [low, high] of the server's stretch of these grey values (one image, or all slices of a series), as
 * `stretch_range` in app/intensity_range.py computes it: the minimum and maximum, each short of the outliers beyond
 * it, which saturate. The default window is this range, so that a hot pixel (one at 65535 in a 16-bit slice under
 * 8,000) no longer draws the slice almost black while the models saw it normally. Exported for its parity test.
 */
export function stretchRange(arrays) {
  let low = Infinity;
  let high = -Infinity;
  let total = 0;
  for (const values of arrays) {
    total += values.length;
    for (const value of values) {
      if (value < low) low = value;
      if (value > high) high = value;
    }
  }
  if (!(high > low)) {
    return [low, high];
  }
  // The percentiles from about SAMPLE_PIXELS values, every step-th of each array, as the server takes them.
  const step = Math.max(1, Math.floor(total / SAMPLE_PIXELS));
  const sample = new Float64Array(arrays.reduce((sum, values) => sum + Math.ceil(values.length / step), 0));
  let taken = 0;
  for (const values of arrays) {
    for (let i = 0; i < values.length; i += step) {
      sample[taken++] = values[i];
    }
  }
  sample.sort();
  const bottom = percentile(sample, LOW_REFERENCE_PERCENTILE);
  const reference = percentile(sample, REFERENCE_PERCENTILE);
  if (!(reference > bottom)) {
    return [low, high]; // nearly every pixel at one value: nothing to judge by
  }
  const floor = bottom - LOW_OUTLIER_MARGIN * (reference - bottom);
  if (low < floor) {
    low = nearestInside(arrays, floor, true, Infinity);
  }
  const ceiling = low + OUTLIER_FACTOR * (reference - low);
  if (high > ceiling) {
    high = nearestInside(arrays, ceiling, false, low);
  }
  const aloneAbove = low + (high - low) / ISOLATED_FACTOR;
  if (aloneAbove > reference) {
    let count = 0;
    for (const values of arrays) {
      for (const value of values) {
        count += value > aloneAbove ? 1 : 0;
      }
    }
    if (count < FEW_PIXELS) {
      high = nearestInside(arrays, aloneAbove, false, low);
    }
  }
  return [low, high];
}

/**
 * Is this picture's Level/Width scale the series' own reversed? Only in a series that mixes MONOCHROME1 and
 * MONOCHROME2 frames: its MONOCHROME2 frames when every other one is inverted, else its MONOCHROME1 frames.
 */
const reversedScale = (picture) => Boolean(picture.inverted) !== Boolean(series.inverted);

function setUpWindow(slices) {
  const pictures = slices.flatMap((slice) => (slice.picture?.values?.length ? [slice.picture] : []));
  ui.windowControls.hidden = pictures.length === 0;
  if (pictures.length === 0) {
    return;
  }
  // A MONOCHROME1 series keeps its values (the file's window applies to them) and is drawn inverted: one scale and
  // one inversion for the whole series, as the server negates every frame alike (app/dicom/dicom_input.py).
  series.inverted = pictures.every((picture) => picture.inverted);
  // The sliders reach every value; the default window is what the models saw, unless the files carry their own.
  let min = Infinity;
  let max = -Infinity;
  for (const picture of pictures) {
    const sign = reversedScale(picture) ? -1 : 1;
    for (const value of picture.values) {
      if (sign * value < min) min = sign * value;
      if (sign * value > max) max = sign * value;
    }
  }
  // Float slices may span 0..1 (a pipeline's normalised output): the narrowest width and the read-outs' decimals
  // follow the range, not whole numbers (else Width sticks at 1, and Level reads "1" all along).
  const span = max > min ? max - min : 1;
  const narrowest = Math.min(1, span / 1000);
  series.windowDigits = span >= 10 ? 0 : Math.min(6, Math.ceil(2 - Math.log10(span)));
  // The server's stretch is of its values, higher = brighter: MONOCHROME1 values negated (not a mirror image of the
  // stretch of the stored values: its rules for the two ends differ). Negated in place and back (exact), not copied:
  // a long series' values are hundreds of MB.
  const negate = () => pictures.forEach((picture) => picture.inverted && picture.values.forEach(
    (value, at, values) => { values[at] = -value; },
  ));
  negate();
  let low;
  let high;
  try {
    [low, high] = stretchRange(pictures.map((picture) => picture.values));
  } finally {
    negate();
  }
  const stretch = { center: ((series.inverted ? -1 : 1) * (low + high)) / 2, width: Math.max(narrowest, high - low) };
  const preset = slices.find((slice) => slice.window && slice.picture);
  series.defaultWindow = preset
    ? { ...preset.window, center: (reversedScale(preset.picture) ? -1 : 1) * preset.window.center }
    : stretch;
  // The ranges take in the file's own window, which may lie beyond the values (a full-range 12-bit window over values
  // up to 1,020): a range input would otherwise move it silently, and Reset with it.
  const { center, width } = series.defaultWindow;
  ui.windowLevel.min = String(Math.min(min, center));
  ui.windowLevel.max = String(Math.max(max, center));
  ui.windowWidth.min = String(Math.min(narrowest, width));
  ui.windowWidth.max = String(Math.max(span, width));
  resetWindow();
}

function resetWindow() {
  ui.windowLevel.value = String(series.defaultWindow.center);
  ui.windowWidth.value = String(series.defaultWindow.width);
  showWindowValues();
}

function showWindowValues() {
  // The sliders say their values themselves (the <output>s beside them are not live): as shown, not as stored.
  for (const [input, output] of [[ui.windowLevel, ui.windowLevelValue], [ui.windowWidth, ui.windowWidthValue]]) {
    output.textContent = formatNumber(Number(input.value), series.windowDigits);
    input.setAttribute("aria-valuetext", output.textContent);
  }
}

function pictureImageData(picture) {
  if (picture.rgba) {
    return picture.rgba;
  }
  const center = Number(ui.windowLevel.value);
  // Never 0 (a file's Window Width of 0): a division by it would draw NaN.
  const width = Math.max(1e-12, Number(ui.windowWidth.min), Number(ui.windowWidth.value));
  const low = center - width / 2;
  const sign = reversedScale(picture) ? -1 : 1;
  // A MONOCHROME1 series: windowed as its values are, then inverted (low values bright).
  const [offset, scale] = series.inverted ? [255, -255] : [0, 255];
  const image = new ImageData(picture.width, picture.height);
  for (let i = 0; i < picture.values.length; i += 1) {
    const grey = offset + scale * Math.min(1, Math.max(0, (sign * picture.values[i] - low) / width));
    image.data[i * 4] = grey;
    image.data[i * 4 + 1] = grey;
    image.data[i * 4 + 2] = grey;
    image.data[i * 4 + 3] = 255;
  }
  return image;
}

// --------------------------------------------------------------------------------------------- drawing a slice

/**
 * [width, height] of the canvas a slice is drawn on: its stored size, or, when its pixels are not square (DICOM Pixel
 * Spacing rows != columns), its true proportions with the long side kept, as the server resamples it for the models
 * (app/dicom/square_pixels.py, whose limits these are). Drawn pixel for pixel, pixels 1.33 times as tall as wide
 * showed the head squeezed to three quarters of its height.
 */
function shownSize(slice) {
  const [width, height] = sizeOf(slice);
  const aspect = Array.isArray(slice.pixelSpacing) ? slice.pixelSpacing[0] / slice.pixelSpacing[1] : 1;
  if (!(Math.abs(aspect - 1) > PIXEL_ASPECT_TOLERANCE)) {
    return [width, height];
  }
  const scale = Math.max(width, height) / Math.max(height * aspect, width);
  const shown = [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * aspect * scale))];
  const [short, long] = [Math.min(...shown), Math.max(...shown)];
  return short >= MIN_SLICE_SIDE && long <= MAX_SLICE_ASPECT * short ? shown : [width, height];
}

/** `image` (ImageData of the stored pixels) on `canvas`, which is sized `shown`: scaled there when not the same. */
function paint(canvas, image, [width, height], smooth) {
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  if (image.width === width && image.height === height) {
    context.putImageData(image, 0, 0);
    return;
  }
  const stored = document.createElement("canvas");
  stored.width = image.width;
  stored.height = image.height;
  stored.getContext("2d").putImageData(image, 0, 0);
  context.imageSmoothingEnabled = smooth;
  context.drawImage(stored, 0, 0, width, height);
}

function drawPicture(slice) {
  const shown = shownSize(slice);
  if (slice.picture) {
    paint(ui.sliceCanvas, pictureImageData(slice.picture), shown, true);
    return;
  }
  [ui.sliceCanvas.width, ui.sliceCanvas.height] = shown;
  const context = ui.sliceCanvas.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, ...shown);
}

/**
 * Mask pixels (of a mask `maskWidth` wide) per OUTLINE_CSS_PIXELS at the size the viewer shows the mask canvas now,
 * a canvas of `canvasWidth` x `canvasHeight` (at least one).
 */
function outlineWidth(maskWidth, canvasWidth, canvasHeight) {
  // The canvas keeps its aspect ratio inside its box (object-fit), which is lower than wide in a short window.
  const box = ui.maskCanvas.getBoundingClientRect();
  const shownWidth = Math.min(box.width, (box.height * canvasWidth) / canvasHeight);
  return shownWidth > 0 ? Math.max(1, Math.ceil((OUTLINE_CSS_PIXELS * maskWidth) / shownWidth)) : 1;
}

/**
 * The mask's pixels less than `band` steps (to a side neighbour) from outside it, the image's border counting as
 * outside: its edge, `band` pixels thick and on the mask's own pixels, so that a thicker outline grows inwards and
 * never off the predicted area. One step is the pixels with a side neighbour outside the mask.
 */
function maskEdge(mask, width, height, band) {
  const edge = new Uint8Array(mask.length);
  let left = mask; // what is left of the mask after each step peels its edge off
  for (let step = 0; step < band; step += 1) {
    const inner = new Uint8Array(mask.length);
    for (let y = 0; y < height; y += 1) {
      for (let x = 0; x < width; x += 1) {
        const i = y * width + x;
        if (!left[i]) {
          continue;
        }
        const inside = x > 0 && x < width - 1 && y > 0 && y < height - 1
          && left[i - 1] && left[i + 1] && left[i - width] && left[i + width];
        if (inside) {
          inner[i] = 1;
        } else {
          edge[i] = 1;
        }
      }
    }
    left = inner;
  }
  return edge;
}

/** The mask on its own canvas over the slice: its alpha is exactly the API's mask (fill) or that mask's edge. */
function drawMask(slice) {
  const [width, height] = sizeOf(slice);
  const shown = shownSize(slice);
  [ui.maskCanvas.width, ui.maskCanvas.height] = shown;
  const style = ui.maskStyle.value;
  ui.maskCanvas.style.opacity = style === "fill" ? String(Number(ui.maskOpacity.value) / 100) : "1";
  if (!slice.mask || style === "none") {
    return;
  }
  const hex = ui.maskColour.value;
  const colour = [1, 3, 5].map((at) => parseInt(hex.slice(at, at + 2), 16));
  const image = new ImageData(width, height);
  const band = outlineWidth(width, ...shown);
  const drawn = style === "outline" ? maskEdge(slice.mask, width, height, band) : slice.mask;
  for (let i = 0; i < width * height; i += 1) {
    if (drawn[i]) {
      image.data.set([...colour, 255], i * 4);
    }
  }
  paint(ui.maskCanvas, image, shown, false);
}

function colourName() {
  return ui.maskColour.selectedOptions[0].textContent.toLowerCase();
}

/**
 * Shows slice `index`. `announce`: whether the caption (a live region) reads the change out; not for the Slice
 * slider and the strip, which announce their own value text (each step there would be read twice).
 */
function showSlice(index, { announce = true } = {}) {
  if (!series) {
    return;
  }
  current = Math.min(series.slices.length - 1, Math.max(0, index));
  const slice = series.slices[current];
  const { prediction } = slice;
  const count = series.slices.length;
  drawPicture(slice);
  drawMask(slice);

  // The slice after a gap says how many slices are missing before it, in the caption and the sliders' value text.
  const after = slice.missingBefore ? `, after ${plural(slice.missingBefore, "missing slice")}` : "";
  // The label is the file's name as sent (the CSV keeps it so); shown, its controls and overrides are not.
  const label = shownLabel(slice);
  const where = count === 1 ? label : `Slice ${current + 1} of ${count} (${label})${after}`;
  let drawn = describeDrawn(prediction);
  if (slice.pastBudget) {
    // The page chose not to decode it; "cannot be drawn" of a slice like those drawn before it was untrue (browser
    // review 64 F3).
    drawn += `; not drawn: the page draws at most ${MAX_DRAWN_CHOICE_PIXELS.toLocaleString("en")} pixels of one `
      + "choice, and the slices before it took them (choose fewer slices to see it), so the mask is shown on black";
  } else if (!slice.picture) {
    // Compressed DICOM or an encoding this browser cannot decode: the server read it, the page cannot draw it.
    drawn += "; the image itself cannot be drawn in this browser (compressed or unusual encoding), so the mask "
      + "is shown on black";
  }
  ui.caption.setAttribute("aria-live", announce ? "polite" : "off");
  ui.caption.textContent = `${where}: ${drawn}`;
  ui.sliceCanvas.setAttribute("aria-label", `MRI ${where}; ${drawn}`);

  const [probabilityText, thresholdText] = probabilityAndThreshold(prediction.tumor_probability, prediction.threshold);
  ui.probability.textContent = probabilityText;
  ui.threshold.textContent = thresholdText;
  ui.probability.dataset.value = String(prediction.tumor_probability);
  // The numbers themselves are compared; the series clean-up, when it is why the slice is negative, is said apart.
  ui.comparison.textContent = isAboveThreshold(prediction) ? "is at or above" : "is below";
  ui.clearedNote.hidden = !isClearedBySeries(prediction);
  ui.nearFlag.hidden = !isNearThreshold(prediction);
  ui.nearFlag.textContent = slice.besideTumor
    ? "Close to the threshold and next to a slice with tumor: the tumor may go on here. Review this slice first."
    : "Close to the threshold: review this slice with care.";
  ui.area.textContent = describeArea(slice);

  ui.slider.value = String(current + 1);
  ui.sliceNumber.textContent = `${current + 1} / ${count}`;
  const valueText = `Slice ${current + 1} of ${count}${after}: ${resultWords(prediction).toLowerCase()}, `
    + `probability ${probabilityText}`;
  ui.slider.setAttribute("aria-valuetext", valueText);
  ui.strip.setAttribute("aria-valuenow", String(current + 1));
  ui.strip.setAttribute("aria-valuetext", valueText);
  ui.strip.querySelectorAll(".strip-bar").forEach((bar, at) => bar.classList.toggle("current", at === current));
}

/**
 * The slice a result opens on: the one with the largest predicted tumor area, so that the first view of a "tumor
 * detected" series shows the tumor (the first positive slice in anatomical order can hold one pixel);
 * else the first slice called tumor (its mask may be withheld), else the first slice.
 */
function firstSliceToShow(slices) {
  let largest = -1;
  slices.forEach((slice, at) => {
    const area = slice.prediction.mask?.area_pixels ?? 0;
    if (area > 0 && (largest < 0 || area > slices[largest].prediction.mask.area_pixels)) {
      largest = at;
    }
  });
  return largest >= 0 ? largest : Math.max(0, slices.findIndex((slice) => slice.prediction.tumor_detected));
}

/** The caption's words for what the mask layer shows of this slice's prediction. */
function describeDrawn(prediction) {
  const { mask } = prediction;
  if (!mask) {
    if (isClearedBySeries(prediction)) {
      return "no tumor: its predicted tumor area did not survive the series clean-up";
    }
    if (!prediction.tumor_detected) {
      return "no tumor predicted on this slice";
    }
    // Detected without a mask happens only to a slice sent alone: under the segmenter's
    // single_slice_mask_min_probability, or no mask piece as large as its single_slice_min_component_pixels.
    return series.sentAsSeries
      ? "tumor detected, not outlined"
      : "tumor detected, not outlined (a slice sent alone is outlined only when the model is surer and the outline "
        + "is more than a speck)";
  }
  if (ui.maskStyle.value === "none") {
    return "predicted tumor mask hidden";
  }
  if (mask.area_pixels <= TINY_MASK_PIXELS) {
    // A fill or outline of a few pixels is invisible at the viewer's size: say where it is instead.
    const [x, y] = mask.bbox ?? [0, 0];
    return `predicted tumor area of only ${plural(mask.area_pixels, "pixel")} (at column ${x + 1}, row ${y + 1}), `
      + "too small to see";
  }
  return `predicted tumor ${ui.maskStyle.value === "fill" ? "area filled" : "outlined"} in ${colourName()}`;
}

/** "Tumor", "No tumor", or "No tumor (series clean-up)": the table's and the sliders' word for a slice. */
function resultWords(prediction) {
  if (prediction.tumor_detected) {
    return "Tumor";
  }
  return isClearedBySeries(prediction) ? "No tumor (series clean-up)" : "No tumor";
}

function describeArea(slice) {
  const { mask } = slice.prediction;
  if (!mask) {
    return "none";
  }
  const [height, width] = mask.size;
  const share = (100 * mask.area_pixels) / (height * width);
  const mm2 = areaMm2(slice);
  const physical = mm2 === null ? "" : `, ${formatNumber(mm2, 1)} mm²`;
  // Rows by columns, as DICOM and the API's errors say a slice's size (a 192-row DICOM slice is not "256 × 192").
  const size = height === width ? `${width} × ${height}` : `${height}-row × ${width}-column`;
  return `${plural(mask.area_pixels, "pixel")} (${share.toFixed(1)} % of the ${size} slice)${physical}`;
}

// ------------------------------------------------------------------------------------------------- downloads

/**
 * What the downloads' names carry of the series shown, so that two series' downloads differ: for DICOM the series
 * read (its number and description, e.g. "_series-1_AX-FLAIR"), else the first file's stem; never a patient's
 * attributes. Letters, digits, dot, dash and underscore only, at most 60 characters; "" when nothing is left.
 */
function seriesTag(shown) {
  let tag = "";
  // Named after the FLAIR series, the one the masks and the volume are of (the answer lists T1 pre-contrast first).
  const used = shown.kind === "dicom" ? shown.answer.series_used ?? [] : [];
  const use = used.find((item) => item.role === "FLAIR") ?? used[0];
  if (use) {
    tag = [use.series_number === null ? "" : `series-${use.series_number}`, use.series_description ?? ""]
      .filter(Boolean).join("_");
  }
  if (!tag) {
    tag = stemOf(shown.files[0]?.name ?? "");
  }
  tag = tag.normalize("NFKC").replace(/[^\p{L}\p{N}._-]+/gu, "-").slice(0, 60).replace(/^[-._]+|[-._]+$/g, "");
  return tag ? `_${tag}` : "";
}

function csvCell(value) {
  let text = String(value);
  // A file name such as `=HYPERLINK(...)` would run as a formula when the sheet is opened in a spreadsheet program:
  // text that starts like a formula gets a leading apostrophe, which spreadsheets read as "this is text".
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) {
    text = `'${text}`;
  }
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/**
 * The spacing typed for a PNG, JPEG or TIFF series (its files carry none) and the volume shown from it, for the
 * masks' zip: its mm² column and the volume the page showed could not be traced back to anything without
 * it. Null when no valid spacing was typed, or for DICOM, whose files give theirs.
 */
function typedSpacing() {
  const { pixel, slice, pixelError, sliceError } = enteredSpacing();
  if (series.kind !== "raster" || !pixel || pixelError) {
    return null;
  }
  return {
    source: "typed in the page (PNG, JPEG and TIFF files carry no spacing); area_mm2 in slices.csv is from it",
    pixel_spacing_mm: pixel,
    ...(slice && !sliceError ? { slice_spacing_mm: slice } : {}),
    ...(ui.volume.dataset.value ? { tumor_volume_ml: Number(ui.volume.dataset.value) } : {}),
    tumor_volume_shown: ui.volume.textContent,
  };
}

async function downloadMasks() {
  const entries = [];
  // The slice's position (DICOM) and the slices missing before it: where each mask lies, so that a stack of the
  // masks keeps the gaps of the series.
  const rows = [["slice", "file", "mask_file", "tumor_probability", "tumor_detected", "area_pixels", "area_mm2",
    "position_along_normal_mm", "slices_missing_before"]];
  for (const [index, slice] of series.slices.entries()) {
    const { prediction } = slice;
    let bytes;
    if (prediction.mask?.png) {
      bytes = base64ToBytes(prediction.mask.png); // exactly the API's PNG
    } else {
      const [width, height] = sizeOf(slice);
      bytes = new Uint8Array(await (await writeGreyPng(width, height, new Uint8Array(width * height))).arrayBuffer());
    }
    entries.push({ name: slice.maskName, bytes });
    const area = areaMm2(slice);
    rows.push([index + 1, `${slice.label}${slice.frameText ?? ""}`, slice.maskName, prediction.tumor_probability, prediction.tumor_detected,
      prediction.mask?.area_pixels ?? 0, area === null ? "" : area, slice.position ?? "", slice.missingBefore ?? 0]);
  }
  entries.push({ name: "slices.csv", bytes: new TextEncoder().encode(`${rows.map((row) => row.map(csvCell).join(",")).join("\n")}\n`) });
  // The service's whole answer (models and their versions, threshold, volume, notes, series read and left out) beside
  // the masks, without the masks' PNG data they hold as files (without them the zip alone cannot be read).
  const answer = JSON.stringify(series.answer, (key, value) => (key === "png" ? undefined : value), 2);
  entries.push({ name: "answer.json", bytes: new TextEncoder().encode(`${answer}\n`) });
  const spacing = typedSpacing();
  if (spacing) {
    entries.push({ name: "spacing.json", bytes: new TextEncoder().encode(`${JSON.stringify(spacing, null, 2)}\n`) });
  }
  saveBlob(writeZip(entries), `tumor-masks${seriesTag(series)}.zip`);
}

/** Busy through aria-disabled, not `disabled`: a disabled button drops the keyboard focus to the page's body. */
function setSegBusy(busy) {
  if (busy) {
    ui.downloadSeg.setAttribute("aria-disabled", "true");
  } else {
    ui.downloadSeg.removeAttribute("aria-disabled");
  }
}

/** The SEG's progress or outcome under its button, scrolled into view (it sits just below the window's edge when
 * the button does). */
function showSegStatus(text) {
  ui.segStatus.textContent = text;
  ui.segStatus.scrollIntoView({ block: "nearest" });
}

/** The SEG's error beside its button, where the person who asked for it looks (the page's error box is far above). */
function showSegError(error) {
  const { title, detail, whole } = describeError(error);
  ui.segErrorTitle.textContent = title;
  ui.segErrorDetail.textContent = detail;
  // A cut message says "the whole message is below": it is (browser review 62 F6).
  ui.segErrorFullText.textContent = whole;
  ui.segErrorFull.hidden = !whole;
  ui.segErrorFull.open = false;
  ui.segStatus.textContent = "";
  ui.segError.hidden = false;
  ui.segError.scrollIntoView({ block: "nearest" });
  noteKeyNeeded(error);
}

/** The SEG of the result shown; a new upload aborts it (stopAnalysis), and an answer that still comes is dropped. */
async function downloadSegmentation() {
  if (ui.downloadSeg.getAttribute("aria-disabled") === "true") {
    return; // one SEG request at a time
  }
  const mine = generation;
  const stale = () => mine !== generation;
  setSegBusy(true);
  ui.segError.hidden = true;
  showSegStatus("Asking the server for the DICOM SEG…");
  try {
    const posted = postBatch(series.files, "output=dicom-seg");
    segInFlight = posted.request;
    const blob = await posted.done;
    if (stale()) {
      return;
    }
    // Slices without a patient coordinate system (Secondary Captures) get one SEG per positive slice, sent as one
    // multipart answer: saved as a zip of those SEGs, never as one broken .dcm file.
    const segs = splitMultipart(await blob.arrayBuffer(), posted.request.getResponseHeader("Content-Type"));
    if (stale()) {
      return;
    }
    if (segs) {
      const entries = segs.map((bytes, index) => ({ name: `tumor-seg-${String(index + 1).padStart(4, "0")}.dcm`, bytes }));
      saveBlob(writeZip(entries), `tumor-seg${seriesTag(series)}.zip`);
      showSegStatus(`${segs.length} DICOM SEG files downloaded (one per slice with a tumor), in a zip.`);
    } else {
      saveBlob(new Blob([blob], { type: "application/dicom" }), `tumor-seg${seriesTag(series)}.dcm`);
      showSegStatus("DICOM SEG downloaded.");
    }
  } catch (error) {
    if (!stale() && error.name !== "AbortError") {
      showSegError(error);
    }
  } finally {
    if (!stale()) {
      segInFlight = null;
      setSegBusy(false);
    }
  }
}

// ------------------------------------------------------------------------------------------------------ wiring

function restoreApiKey() {
  // The field sits in a form only so that Chromium does not warn about a password field outside one: Enter in it must
  // not submit (the page's policy, form-action 'none', would block that too, with an error in the console).
  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (retryOnKeyEnter) {
      retryAnalysis(); // the key just typed, tried at once when Enter is pressed
    }
  });
  ui.apiKey.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
  showDocsKeyNote();
  ui.apiKey.addEventListener("input", () => {
    showDocsKeyNote();
    const key = ui.apiKey.value.trim();
    if (key) {
      sessionStorage.setItem(KEY_STORAGE, key);
    } else {
      sessionStorage.removeItem(KEY_STORAGE);
    }
  });
}

/**
 * Files of a drop, folders walked (DataTransferItem entries), since `dataTransfer.files` lists folders as empty files.
 * The entries are taken at once (they are only readable during the drop event); the files come as they are listed.
 * A file that cannot be read (moved, or a network drive gone) refuses the drop, named: left out, a series would have
 * a gap no one was told of.
 */
async function droppedFiles(entries) {
  const unreadable = (entry) => (error) => {
    throw new FormatError(`${shownText(entry.fullPath)} cannot be read: ${error.message || error.name}`,
      "A dropped file or folder cannot be read. Copy the folder to this computer's disk, or choose it with the "
      + "folder button.");
  };
  const files = [];
  const visit = async (entry) => {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject)).catch(unreadable(entry));
      // A file from an entry has no webkitRelativePath: its path in the drop orders it, as a chosen folder's are
      // (by name alone, the slices of two subfolders would be interleaved into one series).
      Object.defineProperty(file, "dropPath", { value: entry.fullPath });
      files.push(file);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject))
          .catch(unreadable(entry));
        if (batch.length === 0) {
          break;
        }
        for (const child of batch) {
          await visit(child);
        }
      }
    }
  };
  for (const entry of entries) {
    await visit(entry);
  }
  return files;
}

function wireFileChoice() {
  for (const input of [ui.fileInput, ui.folderInput]) {
    input.addEventListener("change", () => {
      const files = [...input.files];
      // An empty folder chosen gets analyse's "no files" error, not silence.
      if (files.length || input === ui.folderInput) {
        analyse(files);
      }
      input.value = ""; // so that choosing the same files again analyses them again
    });
  }

  ui.dropZone.addEventListener("dragover", (event) => {
    event.preventDefault();
    ui.dropZone.classList.add("dragging");
  });
  ui.dropZone.addEventListener("dragleave", () => ui.dropZone.classList.remove("dragging"));
  ui.dropZone.addEventListener("drop", async (event) => {
    event.preventDefault();
    ui.dropZone.classList.remove("dragging");
    const entries = [...event.dataTransfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
    // A dropped folder without files gets analyse's "no files" error: silence reads as a missed drop. A drop of no
    // file (a link, some text) is none.
    if (entries.length) {
      analyse(droppedFiles(entries));
    } else if (event.dataTransfer.files.length) {
      analyse([...event.dataTransfer.files]);
    }
  });
  // A file dropped beside the drop zone would otherwise make the browser navigate away to show it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

/** Home, End and the keys of `moves` (steps from the slice shown) scroll the series while `element` has focus. */
function scrollByKeys(element, moves, announce) {
  element.addEventListener("keydown", (event) => {
    if (!series) {
      return;
    }
    let target = null;
    if (event.key in moves) {
      target = current + moves[event.key];
    } else if (event.key === "Home") {
      target = 0;
    } else if (event.key === "End") {
      target = series.slices.length - 1;
    }
    if (target !== null) {
      event.preventDefault();
      showSlice(target, { announce });
    }
  });
}

const SLICE_KEYS = { ArrowDown: -1, ArrowLeft: -1, ArrowUp: 1, ArrowRight: 1, PageDown: -10, PageUp: 10 };

/**
 * -1, 0 or 1: at most one slice per wheel event, so one notch is one slice whether the browser sends it as 3 lines
 * (Firefox), 100 pixels (Chromium on Windows) or 53 (Chromium on Linux). Small pixel deltas (a touchpad) add up to
 * WHEEL_STEP_PIXELS first; turning back starts the count afresh.
 */
function wheelStep(event) {
  const direction = Math.sign(event.deltaY);
  if (direction === 0) {
    return 0;
  }
  if (event.deltaMode !== WheelEvent.DOM_DELTA_PIXEL) {
    wheelDelta = 0;
    return direction;
  }
  if (Math.sign(wheelDelta) === -direction) {
    wheelDelta = 0;
  }
  wheelDelta += event.deltaY;
  if (Math.abs(wheelDelta) < WHEEL_STEP_PIXELS) {
    return 0;
  }
  wheelDelta = 0;
  return direction;
}

function wireViewer() {
  ui.slider.addEventListener("input", () => showSlice(Number(ui.slider.value) - 1, { announce: false }));
  ui.viewer.addEventListener(
    "wheel",
    (event) => {
      if (!series || series.slices.length < 2) {
        return;
      }
      // Past the first or the last slice the wheel scrolls the page: a viewer taller than the window (a laptop at
      // 200 % zoom) would otherwise hold the page still under the pointer.
      const direction = Math.sign(event.deltaY);
      if ((direction > 0 && current === series.slices.length - 1) || (direction < 0 && current === 0)) {
        wheelDelta = 0;
        return;
      }
      event.preventDefault();
      const step = wheelStep(event);
      if (step) {
        showSlice(current + step);
      }
    },
    { passive: false },
  );
  // One key map for the viewer, the strip and the range input (which the browser drives): up and right go to the
  // next slice, as a slider does and as screen readers announce the two sliders.
  scrollByKeys(ui.viewer, SLICE_KEYS, true);
  scrollByKeys(ui.strip, SLICE_KEYS, false);
  // Tabbed to, the strip is brought into view whole: Chromium leaves it half below the fold.
  ui.strip.addEventListener("focus", () => ui.strip.scrollIntoView({ block: "nearest" }));
  ui.strip.addEventListener("click", (event) => {
    const bar = event.target.closest(".strip-bar");
    if (bar) {
      showSlice(Number(bar.dataset.index), { announce: false });
    }
  });
  const redrawMask = () => {
    ui.maskOpacityValue.textContent = `${ui.maskOpacity.value} %`;
    ui.maskOpacity.setAttribute("aria-valuetext", ui.maskOpacityValue.textContent);
    ui.maskOpacity.disabled = ui.maskStyle.value !== "fill";
    if (series) {
      showSlice(current);
    }
  };
  [ui.maskStyle, ui.maskColour, ui.maskOpacity].forEach((input) => input.addEventListener("input", redrawMask));
  // The outline's width in canvas pixels follows the size the viewer is shown at: redrawn when that changes (a
  // window resized or turned, the result shown).
  new ResizeObserver(() => {
    if (series && ui.maskStyle.value === "outline") {
      drawMask(series.slices[current]);
    }
  }).observe(ui.maskCanvas);
  [ui.windowLevel, ui.windowWidth].forEach((input) =>
    input.addEventListener("input", () => {
      showWindowValues();
      drawPicture(series.slices[current]);
    }),
  );
  ui.windowReset.addEventListener("click", () => {
    resetWindow();
    drawPicture(series.slices[current]);
  });
  [ui.pixelSpacing, ui.sliceSpacing].forEach((input) => {
    input.addEventListener("change", () => {
      clearTimeout(spacingCheck);
      showSpacingErrors();
    });
    input.addEventListener("input", () => {
      clearTimeout(spacingCheck);
      spacingCheck = setTimeout(showSpacingErrors, VOLUME_ANNOUNCE_DELAY_MS);
      const before = ui.volume.textContent;
      updateVolume();
      if (ui.volume.textContent !== before) {
        announceVolume(before); // only a changed volume: the first spacing entered alone changes nothing yet
      }
      buildTable(series.slices);
      ui.area.textContent = describeArea(series.slices[current]);
    });
  });
  ui.downloadMasks.addEventListener("click", () => {
    if (ui.downloadMasks.getAttribute("aria-disabled") !== "true") {
      downloadMasks().catch(showError);
    }
  });
  ui.downloadSeg.addEventListener("click", downloadSegmentation);
  ui.cancel.addEventListener("click", cancelAnalysis);
  ui.retry.addEventListener("click", retryAnalysis);
}

restoreApiKey();
wireFileChoice();
wireViewer();
