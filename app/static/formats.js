// The file formats the page reads and writes itself, so it can show the slices it sends and package the masks it
// gets back without a second trip to the server. Only what browsers cannot do alone: DICOM, 16-bit PNG and TIFF
// pixels, zip archives in and out, and 8-bit grey PNGs. Compressed data goes through the browser's own
// DecompressionStream / CompressionStream, so there is no third-party code.
"use strict";

/** A file the page cannot open; `title`, when set, is the error's heading in place of the general one. */
export class FormatError extends Error {
  constructor(message, title = null) {
    super(message);
    this.title = title;
  }
}

export const ZIP_PASSWORD_TITLE = "The zip is password-protected. Unzip it with its password, then choose the files or "
  + "the folder.";
export const EMPTY_ZIP_TITLE = "The zip holds no slices. Choose a zip of PNG, JPEG, TIFF or DICOM slices.";
// The most a zip may unpack to, all its entries together: far past what one request may send (the server's default
// is 128 MiB), and reached in seconds. A zip of a few MB can unpack to gigabytes of zeros, which the tab would hold
// while it inflated them, for 20-45 s, before failing with a message about file permissions.
export const MAX_UNZIPPED_BYTES = 512 * 2 ** 20;
// Most entries (files and folders) of a zip the page reads: each is unpacked before the files are counted against
// what one analysis takes, and 30,000 tiny ones crashed the tab (browser review 62 F5): sixteen times the files a
// batch takes by default (256).
export const MAX_ZIP_ENTRIES = 4096;
export const ZIP_TOO_MANY_TITLE = "The zip holds more files than the page reads. Choose one patient's series, or the "
  + "files themselves.";
export const ZIP_TOO_LARGE_TITLE = "The zip unpacks to more than the page reads (512 MiB). Choose fewer slices, or "
  + "the files themselves.";
export const NESTED_ZIP_TITLE = "Zips inside the zip are not opened: unzip it first, or choose the inner zip.";

/** Does a file start as a zip does: a local file header, or the end record of an empty archive? */
export const isZip = (head) => head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b
  && ((head[2] === 3 && head[3] === 4) || (head[2] === 5 && head[3] === 6));

// The most pixels the page decodes to draw one slice itself: the server's default limit (MAX_IMAGE_PIXELS, 4096 x
// 4096). A file can claim any size in a few bytes (a PNG of zeros compresses a thousandfold), and decoding it would
// freeze or crash the tab before the server's refusal is shown; such a slice is left undrawn, and the server says
// whether it takes it. At twice the server's, three 33 KB PNGs it refused cost the tab +924 MiB (browser review 64 F8).
export const MAX_DRAWN_PIXELS = 2 ** 24;
// The most frames of one DICOM file the page decodes to draw, and the most pixels of all of them: a 20 MB file of 20
// million 1 x 1 frames would keep the tab frozen for 10 s, one array per frame, before the server's refusal (too many
// slices) could be shown. Eight times the server's default slices per request; the server's default pixels of one
// DICOM file (MAX_DICOM_PIXELS, 256 slices of 512 x 512: 256 MiB as floats): at twice that, a 212 KB deflated file
// the server refuses took the tab +700 MiB and seconds frozen (browser review 63 F3).
export const MAX_DRAWN_FRAMES = 2048;
export const MAX_DRAWN_FILE_PIXELS = 2 ** 26;
const PIXELS_BETWEEN_YIELDS = 2 ** 21; // about 20 ms of decoding
// A deflated DICOM file is inflated up to its pixels' bytes (16 bits) and this much header; past that it is undrawn.
const MAX_DRAWN_HEADER_BYTES = 2 ** 24;
const tooLargeToDraw = (width, height) => !(width > 0 && height > 0 && width * height <= MAX_DRAWN_PIXELS);
// The most strips or tiles of one TIFF the page decodes to draw it: each goes through its own DecompressionStream
// (about 2 ms in Chromium, decoded 64 at a time too), and a 131 KB file of 16,384 16 x 16 tiles of one shared stream
// held the answer for 60 s, a 1 MB one for minutes, where the server took 0.6 s (browser review 64 F2); 16,384 would
// still be 32 s. 4,096 (8 s at most) is a 4096 x 4096 slice in strips of one row, or in 64 x 64 tiles.
export const MAX_DRAWN_TIFF_BLOCKS = 4096;
/** Thrown when the page's decoding was stopped: the choice was cancelled or replaced, or the server refused it. */
export class DecodeStopped extends Error {}

async function streamThrough(bytes, transform) {
  const stream = new Blob([bytes]).stream().pipeThrough(transform);
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * Inflate `bytes` (a byte array or a Blob), stopping with the error `tooMuch()` makes once the output passes `limit`
 * bytes; the output follows `prefix` in the array returned (one copy of it held, not two).
 */
async function inflateAtMost(bytes, format, limit, tooMuch, prefix = new Uint8Array()) {
  const reader = new Blob([bytes]).stream().pipeThrough(new DecompressionStream(format)).getReader();
  const chunks = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) {
      break;
    }
    total += value.length;
    if (total > limit) {
      await reader.cancel();
      throw tooMuch();
    }
    chunks.push(value);
  }
  const content = new Uint8Array(prefix.length + total);
  content.set(prefix);
  let at = prefix.length;
  for (const chunk of chunks) {
    content.set(chunk, at);
    at += chunk.length;
  }
  return content;
}
const deflate = (bytes) => streamThrough(bytes, new CompressionStream("deflate"));

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n += 1) {
    let c = n;
    for (let k = 0; k < 8; k += 1) {
      c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    }
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes, crc = 0xffffffff) {
  let c = crc;
  for (let i = 0; i < bytes.length; i += 1) {
    c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  }
  return c;
}

const finishCrc = (c) => (c ^ 0xffffffff) >>> 0;
const ascii = (bytes, start, length) => String.fromCharCode(...bytes.subarray(start, start + length));

// Code page 437's characters for the bytes 0x80-0xFF: the zip format's encoding of a name not flagged UTF-8, which
// TextDecoder does not know. Windows Explorer's "Send to > Compressed folder" writes such names.
const CP437_HIGH = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0";
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

/**
 * A zip entry's name: UTF-8 when flagged so or when its bytes are (macOS and Linux zippers write UTF-8 unflagged),
 * else code page 437, as the zip format says. Decoded as UTF-8 with replacement, "Müller" and "Mäller" in CP437 were
 * both "M\ufffdller": two patients' folders were one (browser review 60 F7). A name in another code page (Shift-JIS)
 * reads garbled, but each name stays its own.
 */
function zipEntryName(nameBytes, flaggedUtf8) {
  try {
    return utf8Strict.decode(nameBytes);
  } catch (error) {
    if (flaggedUtf8) {
      return new TextDecoder().decode(nameBytes);
    }
    return Array.from(nameBytes, (byte) => (byte < 0x80 ? String.fromCharCode(byte) : CP437_HIGH[byte - 0x80])).join("");
  }
}

// ---------------------------------------------------------------------------------------------------- zip in/out

/**
 * The entries of a zip archive, read from its central directory with nothing unpacked (stored or deflated entries,
 * Zip64 too, no encryption), folders and dot files left out: each with its base name (`name`), its path in the
 * archive (`zipPath`), the size its directory record declares (`size`), and `unzip()`, which unpacks it into a File
 * of at most that size. Counted before any is unpacked: a zip of 4,096
 * tiny entries took 19 s to unpack before it was refused as too many files (browser review 63 F7).
 */
export function zipEntries(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  const { count, directoryOffset } = zipDirectory(view);
  if (count > MAX_ZIP_ENTRIES) {
    throw new FormatError(`the zip holds ${count.toLocaleString("en")} entries, more than the page reads (at most `
      + `${MAX_ZIP_ENTRIES.toLocaleString("en")})`, ZIP_TOO_MANY_TITLE);
  }
  const entries = [];
  let unzipped = 0; // bytes the entries declare, all together
  let offset = directoryOffset;
  for (let i = 0; i < count; i += 1) {
    if (view.getUint32(offset, true) !== 0x02014b50) {
      throw new FormatError("the zip file's central directory is damaged");
    }
    const encrypted = (view.getUint16(offset + 8, true) & 1) === 1; // general purpose flag bit 0
    const method = view.getUint16(offset + 10, true);
    const nameLength = view.getUint16(offset + 28, true);
    const extraLength = view.getUint16(offset + 30, true);
    const commentLength = view.getUint16(offset + 32, true);
    const { compressedSize, declaredSize, localOffset } = zipEntrySizes(view, offset, nameLength, extraLength);
    // Folders as "/" whichever separator the zipper wrote: Windows PowerShell 5.1's Compress-Archive writes "\\",
    // and two patients' folders so written were one folder to the page (attack review 64 F2). Only in a name that is
    // ASCII or flagged UTF-8: in a Shift-JIS one (Japanese Windows), that byte is half of a kanji (review 72 F11).
    const nameBytes = bytes.subarray(offset + 46, offset + 46 + nameLength);
    const flaggedUtf8 = (view.getUint16(offset + 8, true) & 0x800) !== 0;
    const unicodeName = flaggedUtf8 || nameBytes.every((byte) => byte < 0x80);
    const decodedName = zipEntryName(nameBytes, flaggedUtf8);
    const written = unicodeName ? decodedName.replaceAll("\\", "/") : decodedName;
    // "./" and "/" segments name no folder: `tar -a -cf x.zip .` (Windows, macOS) writes "./slice.png", which was
    // read as the hidden folder "." and left out, the whole zip "no files" (browser review 62 F1).
    const name = written.endsWith("/") ? written
      : written.split("/").filter((part) => part !== "." && part !== "").join("/");
    offset += 46 + nameLength + extraLength + commentLength;
    const baseName = name.split("/").pop();
    if (name.endsWith("/") || baseName.startsWith(".") || name.startsWith("__MACOSX/")) {
      continue;
    }
    if (encrypted || method === 99) { // 99: AES (WinZip); read, the entries were "damaged" or an unknown type
      throw new FormatError("the zip is password-protected", ZIP_PASSWORD_TITLE);
    }
    unzipped += declaredSize;
    if (unzipped > MAX_UNZIPPED_BYTES) {
      throw new FormatError(`the zip's entries unpack to more than ${MAX_UNZIPPED_BYTES / 2 ** 20} MiB`,
        ZIP_TOO_LARGE_TITLE);
    }
    const unzip = async () => {
      const dataStart = localOffset + 30 + view.getUint16(localOffset + 26, true)
        + view.getUint16(localOffset + 28, true);
      const data = bytes.subarray(dataStart, dataStart + compressedSize);
      let content;
      if (method === 0) {
        content = data;
      } else if (method === 8) {
        // Never more than the entry declares: its size in the directory was checked against the limit, the data not.
        content = await inflateAtMost(data, "deflate-raw", declaredSize, () => new FormatError(
          `${name} unpacks to more than its zip entry declares or the page reads`, ZIP_TOO_LARGE_TITLE));
      } else {
        throw new FormatError(`${name}: zip compression method ${method} is not supported (only stored or deflated)`);
      }
      if (isZip(content)) {
        throw new FormatError(`${name} is a zip inside the zip`, NESTED_ZIP_TITLE);
      }
      return new File([content], baseName);
    };
    entries.push({ name: baseName, zipPath: name, size: declaredSize, unzip });
  }
  if (entries.length === 0) {
    throw new FormatError(count === 0 ? "the zip is empty" : "the zip holds only folders or hidden files",
      EMPTY_ZIP_TITLE);
  }
  return entries;
}

const ZIP64_MARK = 0xffffffff; // a size or offset whose value is in the entry's Zip64 extra field

/**
 * The entry count and central directory offset of a zip, from its end record, or from the Zip64 end record its
 * locator points to: `zip -fz`, and zips of over 65,535 entries or 4 GiB, write those (browser review 63 F6: a
 * 210 KB one was refused as "zip64 archives are not supported").
 */
function zipDirectory(view) {
  let end = -1;
  for (let offset = view.byteLength - 22; offset >= Math.max(0, view.byteLength - 22 - 65535); offset -= 1) {
    if (view.getUint32(offset, true) === 0x06054b50) {
      end = offset;
      break;
    }
  }
  if (end < 0) {
    throw new FormatError("the zip file has no central directory (truncated, or not a zip)");
  }
  const locator = end - 20;
  if (locator >= 0 && view.getUint32(locator, true) === 0x07064b50) {
    const record = Number(view.getBigUint64(locator + 8, true));
    if (!(record + 56 <= view.byteLength) || view.getUint32(record, true) !== 0x06064b50) {
      throw new FormatError("the zip file's Zip64 end record is damaged");
    }
    return {
      count: Number(view.getBigUint64(record + 32, true)),
      directoryOffset: Number(view.getBigUint64(record + 48, true)),
    };
  }
  return { count: view.getUint16(end + 10, true), directoryOffset: view.getUint32(end + 16, true) };
}

/** An entry's sizes and local header offset: from its central directory record, or its Zip64 extra field. */
function zipEntrySizes(view, offset, nameLength, extraLength) {
  const sizes = {
    declaredSize: view.getUint32(offset + 24, true),
    compressedSize: view.getUint32(offset + 20, true),
    localOffset: view.getUint32(offset + 42, true),
  };
  // The Zip64 extra field (0x0001) holds, in this order, those of the three that are marked.
  const extraEnd = offset + 46 + nameLength + extraLength;
  for (let at = offset + 46 + nameLength; at + 4 <= extraEnd;) {
    const id = view.getUint16(at, true);
    const size = view.getUint16(at + 2, true);
    if (id === 0x0001) {
      let value = at + 4;
      for (const key of ["declaredSize", "compressedSize", "localOffset"]) {
        if (sizes[key] === ZIP64_MARK && value + 8 <= at + 4 + size) {
          sizes[key] = Number(view.getBigUint64(value, true));
          value += 8;
        }
      }
    }
    at += 4 + size;
  }
  if (sizes.localOffset === ZIP64_MARK) {
    throw new FormatError("the zip file's central directory is damaged (a Zip64 entry without its sizes)");
  }
  return sizes;
}

/**
 * The bodies of a `multipart/related` answer (RFC 2387: how the server returns several DICOM objects, e.g. one SEG
 * per slice of a Secondary Capture series), given its Content-Type header; null when that is not multipart.
 */
export function splitMultipart(buffer, contentType) {
  const boundary = /^multipart\/related\b.*?;\s*boundary="?([^";]+)"?/i.exec(contentType ?? "")?.[1];
  if (!boundary) {
    return null;
  }
  // A CRLF in front, so that the first delimiter reads like every other one ("\r\n--boundary").
  const bytes = new Uint8Array(buffer.byteLength + 2);
  bytes.set([13, 10]);
  bytes.set(new Uint8Array(buffer), 2);
  const delimiter = new TextEncoder().encode(`\r\n--${boundary}`);
  const parts = [];
  let at = findSequence(bytes, delimiter, 0);
  while (at >= 0) {
    const afterDelimiter = at + delimiter.length;
    if (bytes[afterDelimiter] === 0x2d && bytes[afterDelimiter + 1] === 0x2d) {
      return parts; // "--" after it: the closing delimiter
    }
    const headersEnd = findSequence(bytes, [13, 10, 13, 10], afterDelimiter);
    const next = findSequence(bytes, delimiter, afterDelimiter);
    if (headersEnd < 0 || next < 0 || headersEnd > next) {
      throw new FormatError("the server's multipart answer is cut short");
    }
    parts.push(bytes.slice(headersEnd + 4, next));
    at = next;
  }
  throw new FormatError("the server's multipart answer has no closing boundary");
}

function findSequence(bytes, sequence, from) {
  outer: for (let i = from; i + sequence.length <= bytes.length; i += 1) {
    for (let k = 0; k < sequence.length; k += 1) {
      if (bytes[i + k] !== sequence[k]) {
        continue outer;
      }
    }
    return i;
  }
  return -1;
}

/** A zip archive of stored (uncompressed) entries: PNG masks are compressed already. */
export function writeZip(entries) {
  const encoder = new TextEncoder();
  const parts = [];
  const directory = [];
  let offset = 0;
  for (const { name, bytes } of entries) {
    const nameBytes = encoder.encode(name);
    const crc = finishCrc(crc32(bytes));
    const header = (size, signature) => {
      const buffer = new DataView(new ArrayBuffer(size));
      buffer.setUint32(0, signature, true);
      return buffer;
    };
    const local = header(30, 0x04034b50);
    const central = header(46, 0x02014b50);
    // Shared fields: version 2.0, UTF-8 names, stored, date 1980-01-01, CRC and sizes.
    const common = (target, at) => {
      target.setUint16(at, 20, true);
      target.setUint16(at + 2, 0x0800, true);
      target.setUint16(at + 4, 0, true);
      target.setUint16(at + 6, 0, true);
      target.setUint16(at + 8, 33, true);
      target.setUint32(at + 10, crc, true);
      target.setUint32(at + 14, bytes.length, true);
      target.setUint32(at + 18, bytes.length, true);
      target.setUint16(at + 22, nameBytes.length, true);
    };
    common(local, 4);
    central.setUint16(4, 20, true);
    common(central, 6);
    central.setUint32(42, offset, true);
    parts.push(local, nameBytes, bytes);
    directory.push(central, nameBytes);
    offset += 30 + nameBytes.length + bytes.length;
  }
  const directorySize = directory.reduce((sum, part) => sum + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true);
  end.setUint32(12, directorySize, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...directory, end], { type: "application/zip" });
}

// ---------------------------------------------------------------------------------------------------------- PNG

function pngChunk(type, data) {
  const chunk = new Uint8Array(12 + data.length);
  const view = new DataView(chunk.buffer);
  view.setUint32(0, data.length);
  chunk.set(new TextEncoder().encode(type), 4);
  chunk.set(data, 8);
  view.setUint32(8 + data.length, finishCrc(crc32(chunk.subarray(4, 8 + data.length))));
  return chunk;
}

/** An 8-bit single-channel PNG, the encoding of the API's masks (used for slices the API returned no mask for). */
export async function writeGreyPng(width, height, pixels) {
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header.set([8, 0, 0, 0, 0], 8);
  const rows = new Uint8Array((width + 1) * height);
  for (let y = 0; y < height; y += 1) {
    rows.set(pixels.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
  }
  const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  return new Blob([signature, pngChunk("IHDR", header), pngChunk("IDAT", await deflate(rows)), pngChunk("IEND", new Uint8Array())], {
    type: "image/png",
  });
}

function paeth(a, b, c) {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/**
 * The header segments of a JPEG up to its first scan, as { marker, offset, end } (offset: the segment's 0xFF; end:
 * past its data, as its length field says). Stops at the first byte that is not a marker.
 */
function* jpegSegments(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let offset = 2; offset + 4 <= bytes.length && bytes[offset] === 0xff; ) {
    const marker = bytes[offset + 1];
    if (marker === 0xff) {
      offset += 1; // fill byte
      continue;
    }
    if (marker === 0xda || marker === 0xd9) {
      return; // start of scan or end of image: no more headers
    }
    const end = offset + 2 + view.getUint16(offset + 2);
    yield { marker, offset, end };
    offset = end;
  }
}

/** The chunks of a PNG as { type, start, end } (start and end of the data; end may pass a truncated file's end). */
function* pngChunks(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let offset = 8; offset + 8 <= bytes.length; ) {
    const start = offset + 8;
    const end = start + view.getUint32(offset);
    yield { type: ascii(bytes, offset + 4, 4), start, end };
    offset = end + 4;
  }
}

/** Width and height from a PNG's IHDR or a JPEG's start-of-frame segment; null for other files or none found. */
export function rasterSize(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  if (bytes.length >= 24 && ascii(bytes, 1, 3) === "PNG") {
    return { width: view.getUint32(16), height: view.getUint32(20) };
  }
  if (bytes[0] !== 0xff || bytes[1] !== 0xd8) {
    return null;
  }
  for (const { marker, offset } of jpegSegments(bytes)) {
    if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
      return offset + 9 <= bytes.length ? { width: view.getUint16(offset + 7), height: view.getUint16(offset + 5) } : null;
    }
  }
  return null;
}

/**
 * A PNG the browser would draw otherwise than the server reads it, decoded here; null for the others (the browser's
 * own decoder draws them as stored) and for interlaced ones. 16-bit samples (browsers draw 8, losing what window/level
 * needs) become grey `values`; an alpha channel or a transparent colour (tRNS) becomes an `rgba` image of the stored
 * colours, alpha dropped as the server drops it: a 2-D canvas keeps colours premultiplied, so a transparent half was
 * drawn black, the tumor under it hidden (browser review 64 F4).
 */
export async function readPng(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  if (bytes.length < 33 || ascii(bytes, 1, 3) !== "PNG" || bytes[28] !== 0) {
    return null;
  }
  const width = view.getUint32(16);
  const height = view.getUint32(20);
  const depth = bytes[24];
  const type = bytes[25];
  const chunks = [...pngChunks(bytes)];
  const transparent = type === 4 || type === 6 || chunks.some(({ type: name }) => name === "tRNS");
  const channels = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }[type];
  // Only a palette image's PLTE is its colours: an RGB one may carry a suggested palette as well.
  const palette = type === 3 ? chunks.find(({ type: name }) => name === "PLTE") : undefined;
  if ((depth !== 16 && !transparent) || !channels || ![1, 2, 4, 8, 16].includes(depth)
    || (type === 3 && (depth === 16 || !palette)) || tooLargeToDraw(width, height)) {
    return null;
  }
  const idat = chunks.filter(({ type: name }) => name === "IDAT").map(({ start, end }) => bytes.subarray(start, end));
  const stride = Math.ceil((width * channels * depth) / 8);
  // No more than the rows need (a filter byte each): 256 KB of zeros inflated to 256 MiB, the tab +800 MiB for 7 s
  // before the server's refusal showed (browser review 64 F1).
  const raw = await inflateAtMost(new Blob(idat), "deflate", height * (stride + 1), () => new FormatError(
    "the PNG's image data goes on past the rows its size calls for"));
  const out = unfilteredRows(raw, height, stride, Math.max(1, (channels * depth) / 8));
  return depth === 16
    ? { width, height, values: greyOf16Bit(out, width * height, channels), bits: 16 }
    : {
      width,
      height,
      rgba: storedColours(out, width, height, { channels, depth, stride, palette: palette && bytes.subarray(palette.start, palette.end) }),
    };
}

/** A PNG's rows with their filters undone (`bpp`: bytes per pixel, at least 1). */
function unfilteredRows(raw, height, stride, bpp) {
  const out = new Uint8Array(stride * height);
  for (let y = 0; y < height; y += 1) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const row = y * stride;
    for (let x = 0; x < stride; x += 1) {
      const a = x >= bpp ? out[row + x - bpp] : 0;
      const b = y > 0 ? out[row - stride + x] : 0;
      const c = x >= bpp && y > 0 ? out[row - stride + x - bpp] : 0;
      const predicted = [0, a, b, (a + b) >> 1, paeth(a, b, c)][filter];
      out[row + x] = (line[x] + predicted) & 0xff;
    }
  }
  return out;
}

/** The grey value of each pixel of 16-bit samples: the mean of its colour samples (alpha left out). */
function greyOf16Bit(out, pixels, channels) {
  const values = new Float32Array(pixels);
  const colour = channels >= 3 ? 3 : 1;
  for (let i = 0; i < pixels; i += 1) {
    let sum = 0;
    for (let k = 0; k < colour; k += 1) {
      const at = (i * channels + k) * 2;
      sum += (out[at] << 8) | out[at + 1];
    }
    values[i] = sum / colour;
  }
  return values;
}

/**
 * 1- to 8-bit samples as opaque colours: grey stretched to 8 bits, palette indices looked up, alpha dropped (as the
 * server reads them: app/imaging.py).
 */
function storedColours(out, width, height, { channels, depth, stride, palette }) {
  const rgba = new ImageData(width, height);
  const top = (1 << depth) - 1;
  const sample = (row, index) => {
    const bit = index * depth;
    return (out[row + (bit >> 3)] >> (8 - depth - (bit & 7))) & top;
  };
  const colourSamples = channels >= 3 ? [0, 1, 2] : [0, 0, 0];
  for (let y = 0, at = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1, at += 4) {
      for (const [k, channel] of colourSamples.entries()) {
        const value = sample(y * stride, x * channels + channel); // a palette index or a grey value: channel 0
        rgba.data[at + k] = palette ? (palette[value * 3 + k] ?? 0) : Math.round((value * 255) / top);
      }
      rgba.data[at + 3] = 255;
    }
  }
  return rgba;
}

// ------------------------------------------------------------------------------------------- EXIF orientation

const EXIF_ORIENTATION_TAG = 0x0112;
const TIFF_SHORT = 3;

/**
 * Sets the Orientation of the EXIF (TIFF-structured) block bytes[start, end) to 1, "as stored". True when it changed
 * it; a block without the tag, or one too damaged to read, is left as it is.
 */
function clearOrientation(bytes, start, end) {
  const order = ascii(bytes, start, 2);
  if (end - start < 8 || (order !== "II" && order !== "MM")) {
    return false;
  }
  const little = order === "II";
  const view = new DataView(bytes.buffer, bytes.byteOffset + start, end - start);
  const ifd = view.getUint32(4, little);
  if (ifd + 2 > view.byteLength) {
    return false;
  }
  for (let i = 0; i < view.getUint16(ifd, little); i += 1) {
    const entry = ifd + 2 + i * 12;
    if (entry + 12 > view.byteLength) {
      return false;
    }
    if (view.getUint16(entry, little) === EXIF_ORIENTATION_TAG && view.getUint16(entry + 2, little) === TIFF_SHORT) {
      const changed = view.getUint16(entry + 8, little) !== 1;
      view.setUint16(entry + 8, 1, little);
      return changed;
    }
  }
  return false;
}

/** The EXIF blocks of a JPEG (APP1 "Exif" segments before the image data), as [start, end) of their TIFF bytes. */
function jpegExifBlocks(bytes) {
  return [...jpegSegments(bytes)]
    .filter(({ marker, offset }) => marker === 0xe1 && ascii(bytes, offset + 4, 6) === "Exif\0\0")
    .map(({ offset, end }) => [offset + 10, Math.min(end, bytes.length)]);
}

/**
 * A copy of a JPEG or PNG file whose EXIF orientation says "as stored". Browsers turn an image by it when they decode
 * it (createImageBitmap's imageOrientation "none" too, in Chromium 156), but the server never does: its masks come
 * in stored pixel order, and so must the slice drawn under them. Other files come back unchanged.
 */
export function withStoredOrientation(buffer) {
  const bytes = new Uint8Array(buffer.slice(0));
  if (bytes[0] === 0xff && bytes[1] === 0xd8) {
    jpegExifBlocks(bytes).forEach(([start, end]) => clearOrientation(bytes, start, end));
  } else if (bytes.length >= 8 && ascii(bytes, 1, 3) === "PNG") {
    const view = new DataView(bytes.buffer);
    for (const { type, start, end } of pngChunks(bytes)) {
      if (end + 4 > bytes.length) {
        break;
      }
      // The eXIf chunk's CRC covers its data: recomputed, or the decoder could reject the file.
      if (type === "eXIf" && clearOrientation(bytes, start, end)) {
        view.setUint32(end, finishCrc(crc32(bytes.subarray(start - 4, end))));
      }
    }
  }
  return bytes.buffer;
}

// --------------------------------------------------------------------------------------------------------- TIFF

/** The first IFD's tags of a TIFF (tag number -> numbers) and its byte order; null for other files. */
function tiffTags(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  const marker = ascii(bytes, 0, 2);
  if (marker !== "II" && marker !== "MM") {
    return null;
  }
  const little = marker === "II";
  const u16 = (at) => view.getUint16(at, little);
  const u32 = (at) => view.getUint32(at, little);
  const ifd = u32(4);
  const tags = {};
  for (let i = 0; i < u16(ifd); i += 1) {
    const entry = ifd + 2 + i * 12;
    const type = u16(entry + 2);
    const count = u32(entry + 4);
    const size = type === 3 ? 2 : 4;
    const at = count * size > 4 ? u32(entry + 8) : entry + 8;
    tags[u16(entry)] = Array.from({ length: count }, (_, k) => (size === 2 ? u16(at + 2 * k) : u32(at + 4 * k)));
  }
  return { tags, little };
}

/** Width and height of a TIFF's first image, from its tags; null for other files. */
export function tiffSize(buffer) {
  const { tags } = tiffTags(buffer) ?? {};
  const [width] = tags?.[256] ?? [];
  const [height] = tags?.[257] ?? [];
  return width > 0 && height > 0 ? { width, height } : null;
}

// TIFF compressions the viewer decodes: none, Deflate (8 and 32946), LZW (5) and PackBits (32773), these two common in
// slices exported by image tools (the server analyses them, so the page draws them too). Each stops at `limit` bytes
// (the strip's or tile's), whatever it would unpack to: a 64 KB Deflate TIFF inflated unbounded held the tab for 44 s
// and +1.6 GiB (browser review 64 F1); the server refuses a strip that inflates past its size, as Deflate does here.
const inflateStrip = (strip, limit) => inflateAtMost(strip, "deflate", limit, () => new FormatError(
  `a TIFF strip or tile inflates to more than its declared size (${limit} bytes)`));
const TIFF_DECODERS = {
  1: async (strip) => strip,
  5: async (strip, limit) => lzwDecode(strip, limit),
  8: inflateStrip,
  32773: async (strip, limit) => packBitsDecode(strip, limit),
  32946: inflateStrip,
};

/**
 * Grey values of the first page of a TIFF in strips or tiles (uncompressed, Deflate, LZW or PackBits; 8 or 16-bit
 * integers or 32-bit floats), or its RGB image for 8-bit RGB and a colour palette; null otherwise. `stopped()` is
 * asked between strips or tiles: true, the decoding ends with DecodeStopped.
 */
export async function readTiff(buffer, stopped = () => false) {
  const bytes = new Uint8Array(buffer);
  const parsed = tiffTags(buffer);
  if (!parsed) {
    return null;
  }
  const { tags, little } = parsed;
  const [width] = tags[256] ?? [];
  const [height] = tags[257] ?? [];
  const bits = (tags[258] ?? [1])[0];
  const compression = (tags[259] ?? [1])[0];
  const channels = (tags[277] ?? [1])[0];
  const predictor = (tags[317] ?? [1])[0];
  const sampleFormat = (tags[339] ?? [1])[0];
  // SampleFormat 3: 32-bit floats, as Fiji and processing pipelines save slices.
  const float = sampleFormat === 3;
  const samplesKnown = float ? bits === 32 && predictor === 1 : [8, 16].includes(bits) && sampleFormat <= 2
    && [1, 2].includes(predictor);
  if (tooLargeToDraw(width, height) || !samplesKnown || !TIFF_DECODERS[compression]) {
    return null;
  }
  const pixels = await tiffPixels(bytes, tags, { width, height, channels, bits, compression, predictor, little },
    stopped);
  if (!pixels) {
    return null;
  }
  const signed = sampleFormat === 2; // signed, as the server reads it
  const photometric = tags[262]?.[0];
  if (photometric === 2 && channels >= 3 && bits === 8 && !signed) {
    return { width, height, rgba: rgbImage(pixels, width, height, channels) };
  }
  const sample = sampleReader(pixels, bits, signed, float, little);
  const values = new Float32Array(width * height);
  const colour = channels >= 3 ? 3 : 1;
  const step = bits / 8;
  for (let i = 0; i < values.length; i += 1) {
    let sum = 0;
    for (let k = 0; k < colour; k += 1) {
      const value = sample((i * channels + k) * step);
      // NaN and infinite floats count as 0, as the server reads them (else one +Inf pixel makes the
      // default window 100 wide, and the slice is drawn almost white).
      sum += Number.isFinite(value) ? value : 0;
    }
    values[i] = sum / colour;
  }
  if (photometric === 3 && tags[320] && channels === 1) {
    return { width, height, ...throughColourMap(values, tags[320], width, height) };
  }
  if (photometric === 0) {
    invertMinIsWhite(values, bits, signed, float);
  }
  return { width, height, values, bits };
}

/**
 * A TIFF page's samples, interleaved pixel by pixel and row by row, from its strips or tiles, stored pixel by pixel or
 * one plane per sample (PlanarConfiguration 2): the server reads all four layouts (tifffile), and the page drew the
 * tiled and planar ones black (browser review 60 F11). Null when the tags place no blocks.
 */
async function tiffPixels(bytes, tags, { width, height, channels, bits, compression, predictor, little }, stopped) {
  const tiled = Boolean(tags[322] && tags[323] && tags[324]);
  const offsets = tiled ? tags[324] : tags[273];
  const counts = tiled ? tags[325] : tags[279];
  const blockWidth = tiled ? tags[322][0] : width;
  const blockHeight = tiled ? tags[323][0] : Math.min((tags[278] ?? [height])[0], height);
  const planes = (tags[284] ?? [1])[0] === 2 ? channels : 1;
  const samples = channels / planes; // in each block
  const across = Math.ceil(width / blockWidth);
  const down = Math.ceil(height / blockHeight);
  if (!offsets || !counts || !(blockWidth > 0 && blockHeight > 0) || offsets.length < across * down * planes
    || tooLargeToDraw(blockWidth, blockHeight)) {
    return null;
  }
  const blocks = across * down * planes;
  if (blocks > MAX_DRAWN_TIFF_BLOCKS) {
    throw new FormatError(`the TIFF is stored in ${blocks.toLocaleString("en")} strips or tiles, more than the page `
      + `decodes to draw it (at most ${MAX_DRAWN_TIFF_BLOCKS.toLocaleString("en")})`);
  }
  const step = bits / 8;
  // A strip's or tile's whole size, the most it may unpack to: the last strip may be written whole (as the server
  // allows), though only the rows left are drawn.
  const wholeBlockBytes = blockWidth * blockHeight * samples * step;
  const out = new Uint8Array(width * height * channels * step);
  for (let plane = 0; plane < planes; plane += 1) {
    for (let row = 0; row < down; row += 1) {
      for (let column = 0; column < across; column += 1) {
        const index = (plane * down + row) * across + column;
        // A strip at the image's foot holds only the rows left; a tile is always whole.
        const rows = tiled ? blockHeight : Math.min(blockHeight, height - row * blockHeight);
        const blockBytes = blockWidth * rows * samples * step;
        if (stopped()) {
          throw new DecodeStopped("the TIFF's decoding was stopped");
        }
        const stored = bytes.subarray(offsets[index], offsets[index] + counts[index]);
        const decoded = await TIFF_DECODERS[compression](stored, wholeBlockBytes);
        if (decoded.length < blockBytes) {
          throw new FormatError("the TIFF's strips or tiles hold fewer pixels than its size");
        }
        // Undone in place: on a copy where the block is the file's own bytes (uncompressed).
        const block = predictor === 2 && compression === 1 ? decoded.slice() : decoded;
        if (predictor === 2) {
          undoHorizontalDifferencing(new DataView(block.buffer, block.byteOffset, block.byteLength), blockWidth, rows,
            samples, bits, little);
        }
        const x0 = column * blockWidth;
        const y0 = row * blockHeight;
        const kept = Math.min(blockWidth, width - x0);
        for (let y = 0; y < Math.min(rows, height - y0); y += 1) {
          const rowFrom = y * blockWidth * samples * step;
          const rowTo = ((y0 + y) * width + x0) * channels * step;
          if (planes === 1) { // pixel by pixel already: the row at once (a copy a sample was 2.5 times slower)
            out.set(block.subarray(rowFrom, rowFrom + kept * samples * step), rowTo);
            continue;
          }
          for (let x = 0; x < kept; x += 1) { // one plane's samples, one in every `channels`
            const to = rowTo + (x * channels + plane) * step;
            for (let byte = 0; byte < step; byte += 1) {
              out[to + byte] = block[rowFrom + x * step + byte];
            }
          }
        }
      }
    }
  }
  return new DataView(out.buffer);
}

/**
 * An 8-bit RGB TIFF (the LGG data set's own .tif layout) as it is stored, drawn in colour as its JPEG is, not as the
 * grey mean of pre-contrast, FLAIR and post-contrast. Extra samples (alpha) are dropped, as the server
 * drops them. Deeper RGB stays the channels' mean under Level/Width: the server stretches each channel on its own, which
 * one grey window cannot stand for.
 */
function rgbImage(pixels, width, height, channels) {
  const rgba = new ImageData(width, height);
  for (let i = 0; i < width * height; i += 1) {
    const at = i * channels;
    rgba.data.set([pixels.getUint8(at), pixels.getUint8(at + 1), pixels.getUint8(at + 2), 255], i * 4);
  }
  return rgba;
}

/** Reads one sample of a TIFF's pixels at a byte offset: 8/16-bit integers (signed or not) or 32-bit floats. */
function sampleReader(pixels, bits, signed, float, little) {
  if (float) {
    return (at) => pixels.getFloat32(at, little);
  }
  if (bits === 8) {
    return signed ? (at) => pixels.getInt8(at) : (at) => pixels.getUint8(at);
  }
  return signed ? (at) => pixels.getInt16(at, little) : (at) => pixels.getUint16(at, little);
}

/**
 * A palette TIFF's indices looked up in its ColorMap (tag 320: every red, then every green, then every blue), as the
 * server shows it (app/tiff_decoding.py as_shown): 16-bit colours cut to 8 bits, or taken as 8-bit when all are under
 * 256, as libtiff guesses. Grey `values` when the map is grey (Level/Width applies), else an RGB `rgba` image
 * (not the raw indices, and an inverting grey map not as a negative).
 */
function throughColourMap(indices, map, width, height) {
  const entries = map.length / 3;
  const shift = map.some((value) => value > 255) ? 8 : 0;
  const colour = (channel, index) => (map[channel * entries + index] ?? 0) >> shift;
  let grey = true;
  for (let index = 0; index < entries && grey; index += 1) {
    grey = colour(0, index) === colour(1, index) && colour(1, index) === colour(2, index);
  }
  if (grey) {
    return { values: indices.map((index) => colour(0, index)), bits: 8 };
  }
  const rgba = new ImageData(width, height);
  indices.forEach((index, i) => {
    rgba.data.set([colour(0, index), colour(1, index), colour(2, index), 255], i * 4);
  });
  return { rgba };
}

/** TIFF Predictor 2: each sample was stored as its difference from the same channel's sample to its left. */
function undoHorizontalDifferencing(pixels, width, height, channels, bits, little) {
  const step = bits / 8;
  const modulo = 2 ** bits;
  const get = step === 1 ? (at) => pixels.getUint8(at) : (at) => pixels.getUint16(at, little);
  const set = step === 1 ? (at, value) => pixels.setUint8(at, value) : (at, value) => pixels.setUint16(at, value, little);
  const row = width * channels;
  for (let y = 0; y < height; y += 1) {
    for (let i = channels; i < row; i += 1) {
      const at = (y * row + i) * step;
      set(at, (get(at) + get(at - channels * step)) % modulo);
    }
  }
}

/** TIFF LZW (compression 5): 9- to 12-bit codes, most significant bit first, the code width growing one code early. */
function lzwDecode(input, limit) {
  const CLEAR = 256;
  const END = 257;
  let out = new Uint8Array(Math.min(Math.max(input.length * 3, 1024), limit + 4096));
  let length = 0;
  const append = (entry) => {
    if (length + entry.length > out.length) {
      const grown = new Uint8Array(Math.max(out.length * 2, length + entry.length));
      grown.set(out.subarray(0, length));
      out = grown;
    }
    out.set(entry, length);
    length += entry.length;
  };
  let table = [];
  let width = 9;
  const reset = () => {
    table = Array.from({ length: 258 }, (_, code) => Uint8Array.of(code));
    width = 9;
  };
  reset();
  let previous = null;
  let bit = 0;
  while (bit + width <= input.length * 8 && length < limit) {
    let code = 0;
    for (let k = 0; k < width; k += 1, bit += 1) {
      code = (code << 1) | ((input[bit >> 3] >> (7 - (bit & 7))) & 1);
    }
    if (code === END) {
      break;
    }
    if (code === CLEAR) {
      reset();
      previous = null;
      continue;
    }
    let entry;
    if (code < table.length && code !== CLEAR && code !== END) {
      entry = table[code];
      if (previous) {
        table.push(concatBytes(previous, entry[0]));
      }
    } else if (code === table.length && previous) {
      entry = concatBytes(previous, previous[0]);
      table.push(entry);
    } else {
      throw new FormatError("the TIFF's LZW data is corrupt");
    }
    append(entry);
    previous = entry;
    if (table.length + 1 >= 1 << width && width < 12) {
      width += 1;
    }
  }
  return out.subarray(0, length);
}

function concatBytes(head, last) {
  const joined = new Uint8Array(head.length + 1);
  joined.set(head);
  joined[head.length] = last;
  return joined;
}

/**
 * PackBits (TIFF compression 32773, and each segment of DICOM RLE Lossless): a count byte n, then n + 1 bytes as they
 * are (n >= 0) or the next byte 1 - n times (n < 0; -128 is no operation). At most `limit` bytes come out.
 */
function packBitsDecode(input, limit) {
  const out = new Uint8Array(Math.min(limit, input.length * 64)); // a run of 128 bytes takes 2: at most 64 times
  let length = 0;
  for (let i = 0; i < input.length && length < out.length;) {
    const count = (input[i] << 24) >> 24; // signed
    i += 1;
    if (count >= 0) {
      const literal = input.subarray(i, Math.min(i + count + 1, i + out.length - length));
      out.set(literal, length);
      length += literal.length;
      i += count + 1;
    } else if (count !== -128) {
      const run = Math.min(1 - count, out.length - length);
      out.fill(input[i], length, length + run);
      length += run;
      i += 1;
    }
  }
  return out.subarray(0, length);
}

/**
 * MinIsWhite: brighter = higher, by the bitwise complement of the sample type, as the server turns it (numpy's invert in
 * app/tiff_decoding.py): every slice of a series the same map, where turning each around its own range shifted each by
 * its own.
 */
function invertMinIsWhite(values, bits, signed, float) {
  if (float) {
    // Floats have no complement: negated, as numpy's negative does on the server.
    values.forEach((value, i) => { values[i] = -value; });
    return;
  }
  const top = signed ? -1 : 2 ** bits - 1;
  for (let i = 0; i < values.length; i += 1) {
    values[i] = top - values[i];
  }
}

// -------------------------------------------------------------------------------------------------------- DICOM

const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
const WANTED = {
  "00080018": "sopInstanceUid",
  "00180050": "sliceThickness",
  "00180088": "spacingBetweenSlices",
  "00200013": "instanceNumber",
  "00280002": "samplesPerPixel",
  "00280004": "photometric",
  "00280008": "numberOfFrames",
  "00280010": "rows",
  "00280011": "columns",
  "00280030": "pixelSpacing",
  "00280100": "bitsAllocated",
  "00280101": "bitsStored",
  "00280103": "pixelRepresentation",
  "00280120": "pixelPaddingValue",
  "00280121": "pixelPaddingRangeLimit",
  "00281050": "windowCenter",
  "00281051": "windowWidth",
  "00281052": "rescaleIntercept",
  "00281053": "rescaleSlope",
};
const SHARED_GROUPS = "52009229";
const PER_FRAME_GROUPS = "52009230";
const PIXEL_MEASURES = "00289110";
const PIXEL_VALUE_TRANSFORMATION = "00289145";
const FRAME_VOI_LUT = "00289132";
// The functional group macros read, and the attributes read inside them (an Enhanced MR frame's own
// Rescale Slope and the file's Frame VOI LUT window, without which frames are drawn on different scales).
const FRAME_MACROS = new Set([PIXEL_MEASURES, PIXEL_VALUE_TRANSFORMATION, FRAME_VOI_LUT]);
const FRAME_ATTRIBUTES = {
  "00280030": "pixelSpacing",
  "00281050": "windowCenter",
  "00281051": "windowWidth",
  "00281052": "rescaleIntercept",
  "00281053": "rescaleSlope",
};
const UNSIGNED_SHORT = new Set(["samplesPerPixel", "rows", "columns", "bitsAllocated", "bitsStored",
  "pixelRepresentation"]);
// US or SS by Pixel Representation (VR "xs"): read as 16 bits, their sign settled once Pixel Representation is known.
const PIXEL_VALUED = new Set(["pixelPaddingValue", "pixelPaddingRangeLimit"]);
const IMPLICIT_LITTLE = "1.2.840.10008.1.2";
const EXPLICIT_LITTLE = "1.2.840.10008.1.2.1";
const EXPLICIT_BIG = "1.2.840.10008.1.2.2";
const DEFLATED = "1.2.840.10008.1.2.1.99";
// Uncompressed pixel data, whatever the byte order of the data set or whether it was deflated as a whole.
const NATIVE_SYNTAXES = new Set([IMPLICIT_LITTLE, EXPLICIT_LITTLE, EXPLICIT_BIG, DEFLATED]);
const RLE_LOSSLESS = "1.2.840.10008.1.2.5";
// Data elements the page walks in one file before it gives up on drawing it, as the server refuses such a header (a
// deflated data set of zeros inflates to millions of empty elements, which would freeze the tab for 30 s).
const MAX_DICOM_ELEMENTS = 100_000;

const hex4 = (value) => value.toString(16).padStart(4, "0").toUpperCase();

/** Is this the 128-byte preamble and `DICM` marker of a DICOM Part 10 file? */
export function isDicom(bytes) {
  return bytes.length >= 132 && ascii(bytes, 128, 4) === "DICM";
}

/**
 * Whether a file of `size` bytes starting with `bytes` looks like a DICOM data set written without the Part 10
 * preamble and meta, as the server tells one (`app.imaging._looks_like_bare_dicom`): an element of group 0002 or 0008
 * (little endian), with a VR of two capital letters (explicit VR) or a length the file can hold (implicit VR).
 */
export function isBareDicom(bytes, size) {
  if (bytes.length < 8 || !(bytes[0] === 0x02 || bytes[0] === 0x08) || bytes[1] !== 0x00) {
    return false;
  }
  const capital = (byte) => byte >= 0x41 && byte <= 0x5a;
  const length = (bytes[4] | (bytes[5] << 8) | (bytes[6] << 16)) + bytes[7] * 2 ** 24;
  return (capital(bytes[4]) && capital(bytes[5])) || length <= size - 8;
}

/**
 * A Deflated Explicit VR Little Endian file with its data set inflated, after its file meta group (`start` on): the
 * bytes to walk as Explicit VR Little Endian. At most what a drawn file holds: a few kB of deflated zeros can claim
 * gigabytes (a larger one is left undrawn, and the server says whether it takes it).
 */
async function inflatedDataSet(bytes, start) {
  const deflated = bytes.subarray(start);
  const limit = MAX_DRAWN_FILE_PIXELS * 2 + MAX_DRAWN_HEADER_BYTES;
  const tooMuch = () => new FormatError("the DICOM data set unpacks to more than the page reads", ZIP_TOO_LARGE_TITLE);
  const inflate = (data) => inflateAtMost(data, "deflate-raw", limit, tooMuch, bytes.subarray(0, start));
  try {
    return await inflate(deflated);
  } catch (error) {
    // PS3.5 A.5: a deflated stream of odd length ends in one NULL byte of padding, which Chromium refuses as junk.
    if (!(error instanceof TypeError) || deflated.length % 2 !== 0 || deflated[deflated.length - 1] !== 0) {
      throw error;
    }
    return inflate(deflated.subarray(0, -1));
  }
}

/**
 * The header fields the page needs (with `frameCount`, the frames the file holds) and, for uncompressed data (either
 * byte order, deflated or not) and RLE Lossless, each frame's grey values after the modality rescale. Other compressed
 * pixel data keeps `frames` empty: the header (spacing, UIDs, frame count) still counts.
 */
export async function readDicom(buffer) {
  let bytes = new Uint8Array(buffer);
  let view = new DataView(buffer);
  // The file meta group is always little endian; the data set after it in the byte order its transfer syntax names
  // (Big Endian headers read as little endian lose their UIDs, order and spacing).
  let little = true;
  let dataSetStart = null;
  const text = (start, length) => new TextDecoder().decode(bytes.subarray(start, start + length)).replace(/[\0 ]+$/, "").trim();
  const found = {};
  let transferSyntax = EXPLICIT_LITTLE;
  let pixelData = null;

  // FRAME_ATTRIBUTES inside the functional groups' FRAME_MACROS, by where they were found and their name:
  // "/52009229#0/00289110#0 pixelSpacing" (shared) or "/52009230#<frame index>/00289110#0 pixelSpacing" (per frame).
  const nested = {};
  // Walks elements from `offset` to `end`, recording WANTED ones at the top level, and FRAME_ATTRIBUTES inside the
  // functional groups' FRAME_MACROS (`context`: the path of sequences and items down to here, "" elsewhere);
  // returns where it stopped.
  let elements = 0;
  const walk = (offset, end, explicit, depth, context = "") => {
    let item = 0;
    while (offset + 8 <= end) {
      elements += 1;
      if (elements > MAX_DICOM_ELEMENTS) {
        throw new Error(`the DICOM file holds more than ${MAX_DICOM_ELEMENTS} data elements`);
      }
      const group = view.getUint16(offset, little);
      const element = view.getUint16(offset + 2, little);
      const tag = hex4(group) + hex4(element);
      if (group === 0xfffe) {
        const length = view.getUint32(offset + 4, little);
        if (element === 0xe00d || element === 0xe0dd) {
          return offset + 8; // item or sequence delimiter
        }
        const inner = context ? `${context}#${item}` : "";
        item += 1;
        if (length === 0xffffffff) {
          offset = walk(offset + 8, end, explicit, depth + 1, inner);
        } else {
          if (inner) {
            walk(offset + 8, Math.min(end, offset + 8 + length), explicit, depth + 1, inner);
          }
          offset = offset + 8 + length;
        }
        continue;
      }
      const useExplicit = explicit || group === 0x0002;
      let vr = null;
      let length;
      let valueStart;
      if (useExplicit) {
        vr = ascii(bytes, offset + 4, 2);
        if (LONG_VRS.has(vr)) {
          length = view.getUint32(offset + 8, little);
          valueStart = offset + 12;
        } else {
          length = view.getUint16(offset + 6, little);
          valueStart = offset + 8;
        }
      } else {
        length = view.getUint32(offset + 4, little);
        valueStart = offset + 8;
      }
      if (tag === "7FE00010" && depth === 0) {
        pixelData = { start: valueStart, length, vr, encapsulated: length === 0xffffffff };
        return end;
      }
      // An Enhanced MR image keeps Pixel Spacing, rescale and window in Shared or Per-frame Functional Groups.
      const inner = (depth === 0 ? [SHARED_GROUPS, PER_FRAME_GROUPS].includes(tag) : context && FRAME_MACROS.has(tag))
        ? `${context}/${tag}`
        : "";
      if (length === 0xffffffff) {
        offset = walk(valueStart, end, explicit, depth + 1, inner); // sequence (or encapsulated data) of undefined length
        continue;
      }
      if (inner) {
        walk(valueStart, Math.min(end, valueStart + length), explicit, depth + 1, inner);
      } else if (context && FRAME_ATTRIBUTES[tag]) {
        nested[`${context} ${FRAME_ATTRIBUTES[tag]}`] = text(valueStart, length);
      }
      if (depth === 0 && tag === "00020010") {
        transferSyntax = text(valueStart, length);
      }
      const key = depth === 0 ? WANTED[tag] : undefined;
      if (key) {
        const short = (vr === "US" || (!useExplicit && length === 2))
          || (PIXEL_VALUED.has(key) && vr === "SS" && length === 2);
        found[key] = (UNSIGNED_SHORT.has(key) || PIXEL_VALUED.has(key)) && short
          ? view.getUint16(valueStart, little)
          : text(valueStart, length);
      }
      offset = valueStart + length;
      if (dataSetStart === null && depth === 0 && group === 0x0002 && offset + 2 <= end
        && view.getUint16(offset, true) !== 0x0002) {
        dataSetStart = offset; // the file meta group ends here; the data set is walked in its transfer syntax
        return offset;
      }
    }
    return offset;
  };
  walk(132, bytes.length, true, 0);
  if (dataSetStart !== null) {
    if (transferSyntax === DEFLATED) {
      bytes = await inflatedDataSet(bytes, dataSetStart);
      view = new DataView(bytes.buffer);
    }
    little = transferSyntax !== EXPLICIT_BIG;
    walk(dataSetStart, bytes.length, transferSyntax !== IMPLICIT_LITTLE, 0);
  }

  const numbers = (value) => (value === undefined ? null : String(value).split("\\").map(Number));
  const first = (value) => numbers(value)?.[0] ?? null;
  const rows = Number(found.rows);
  const columns = Number(found.columns);
  const spacingOf = (value) => {
    const spacing = numbers(value);
    return spacing && spacing.length === 2 && spacing.every((v) => v > 0) ? spacing : null;
  };
  const windowOf = (center, width) => (center && width ? { center: first(center), width: first(width) } : null);
  // As the server takes a frame's value (app/dicom/dicom_frame.py frame_value): per frame, then shared, then top level.
  const shared = (macro, name) => nested[`/${SHARED_GROUPS}#0/${macro}#0 ${name}`];
  // The frames' own values (index frame - 1) of `name` in `macro`, where the Per-frame Functional Groups give one.
  const perFrame = (macro, name) => {
    const values = [];
    const pattern = new RegExp(`^/${PER_FRAME_GROUPS}#(\\d+)/${macro}#0 ${name}$`);
    for (const [where, value] of Object.entries(nested)) {
      const match = where.match(pattern);
      if (match) {
        values[Number(match[1])] = value;
      }
    }
    return values;
  };
  const frameCenters = perFrame(FRAME_VOI_LUT, "windowCenter");
  const frameWidths = perFrame(FRAME_VOI_LUT, "windowWidth");
  const header = {
    sopInstanceUid: found.sopInstanceUid ?? "",
    instanceNumber: first(found.instanceNumber),
    rows,
    columns,
    pixelSpacing: spacingOf(shared(PIXEL_MEASURES, "pixelSpacing")) ?? spacingOf(found.pixelSpacing),
    // Each frame's own Pixel Spacing and window (index frame - 1) where the Per-frame Functional Groups give one.
    frameSpacings: perFrame(PIXEL_MEASURES, "pixelSpacing").map(spacingOf),
    frameWindows: frameCenters.map((center, index) => windowOf(center, frameWidths[index])),
    // An Enhanced MR file keeps its window in the Frame VOI LUT (shared), as a single-frame file keeps it at the top.
    window: windowOf(shared(FRAME_VOI_LUT, "windowCenter"), shared(FRAME_VOI_LUT, "windowWidth"))
      ?? windowOf(found.windowCenter, found.windowWidth),
    // The frames the file holds, drawn or not: the slices the server may answer for it (counted as
    // one, a JPEG-LS multi-frame file's answer of 26 slices would be refused by the page).
    frameCount: Math.max(1, first(found.numberOfFrames) ?? 1),
    frames: [],
  };
  const { frameCount } = header;
  const bitsAllocated = Number(found.bitsAllocated);
  const uncompressed = NATIVE_SYNTAXES.has(transferSyntax) && !pixelData?.encapsulated;
  const rle = transferSyntax === RLE_LOSSLESS && pixelData?.encapsulated;
  if (!pixelData || !(uncompressed || rle) || Number(found.samplesPerPixel ?? 1) !== 1
    || ![8, 16].includes(bitsAllocated) || tooLargeToDraw(columns, rows) || !(frameCount <= MAX_DRAWN_FRAMES)
    || !(frameCount * columns * rows <= MAX_DRAWN_FILE_PIXELS)) {
    return header; // left undrawn; the server's answer says whether it takes the file
  }
  const frameSlopes = perFrame(PIXEL_VALUE_TRANSFORMATION, "rescaleSlope");
  const frameIntercepts = perFrame(PIXEL_VALUE_TRANSFORMATION, "rescaleIntercept");
  const sharedSlope = shared(PIXEL_VALUE_TRANSFORMATION, "rescaleSlope") ?? found.rescaleSlope;
  const sharedIntercept = shared(PIXEL_VALUE_TRANSFORMATION, "rescaleIntercept") ?? found.rescaleIntercept;
  const signed = Number(found.pixelRepresentation) === 1;
  const step = bitsAllocated / 8;
  const size = rows * columns;
  // As the server reads them (app/dicom/dicom_input.py): the bits above Bits Stored are no pixel data (an overlay
  // burnt into them drew a white band), a signed value's sign is its highest stored bit, and pixels at Pixel Padding
  // Value (up to Pixel Padding Range Limit) are background (a padding of -32768 drew the head white).
  const bitsStored = Number(found.bitsStored);
  const kept = Number.isInteger(bitsStored) && bitsStored > 0 && bitsStored < bitsAllocated ? bitsStored : bitsAllocated;
  const storedValue = (raw) => {
    const value = raw & (2 ** kept - 1);
    return signed && value >= 2 ** (kept - 1) ? value - 2 ** kept : value;
  };
  const padding = paddingRange(found, storedValue);
  // 8-bit pixels as OW in Big Endian are stored in byte-swapped pairs (16-bit words), as dcmtk writes them.
  const swappedBytes = !little && step === 1 && pixelData.vr === "OW";
  const fragments = rle ? encapsulatedFragments(view, pixelData.start) : null;
  for (let frame = 0, sinceYield = 0; frame < frameCount; frame += 1, sinceYield += size) {
    if (sinceYield >= PIXELS_BETWEEN_YIELDS) {
      sinceYield = 0;
      await new Promise((resolve) => setTimeout(resolve)); // the page answers meanwhile (it froze for 3 s: review 63 F3)
    }
    const base = pixelData.start + frame * size * step;
    let raw;
    if (rle) {
      raw = fragments[frame] ? rleFrame(fragments[frame], size, step) : null;
      if (!raw) {
        break; // a frame missing or not whole: the server says what is wrong with the file
      }
    } else if (base + size * step > bytes.length) {
      break; // checked before allocating: the header may claim more frames than the file holds
    }
    const slope = first(frameSlopes[frame] ?? sharedSlope) ?? 1;
    const intercept = first(frameIntercepts[frame] ?? sharedIntercept) ?? 0;
    const values = new Float32Array(size);
    const padded = padding ? new Uint8Array(size) : null;
    for (let i = 0; i < size; i += 1) {
      const at = base + i * step;
      const stored = storedValue(raw ? raw[i] : step === 1 ? view.getUint8(swappedBytes ? at ^ 1 : at)
        : view.getUint16(at, little));
      if (padded && stored >= padding[0] && stored <= padding[1]) {
        padded[i] = 1;
      }
      values[i] = stored * slope + intercept;
    }
    // MONOCHROME1 (low values bright) keeps its values: the file's Window Center and Width apply to them as they
    // are, and the page inverts the grey when it draws (`inverted`), for every frame alike, where inverting each
    // frame around its own range put a series' slices on different scales. The server negates them
    // (app/dicom/dicom_input.py), the same for every frame; the page's default window is its stretch of those.
    const inverted = found.photometric === "MONOCHROME1";
    if (padded) {
      fillPadding(values, padded, inverted);
    }
    header.frames.push({ width: columns, height: rows, values, bits: bitsAllocated, inverted });
  }
  return header;
}

/** The fragments of encapsulated pixel data from `start` (its items after the Basic Offset Table), as byte arrays. */
function encapsulatedFragments(view, start) {
  const fragments = [];
  for (let offset = start, item = 0; offset + 8 <= view.byteLength; item += 1) {
    const group = view.getUint16(offset, true);
    const element = view.getUint16(offset + 2, true);
    const length = view.getUint32(offset + 4, true);
    if (group !== 0xfffe || element !== 0xe000 || offset + 8 + length > view.byteLength) {
      break; // the sequence delimiter, or no item where one belongs
    }
    if (item > 0) {
      fragments.push(new Uint8Array(view.buffer, view.byteOffset + offset + 8, length));
    }
    offset += 8 + length;
  }
  return fragments;
}

/**
 * One RLE Lossless frame (DICOM PS3.5 Annex G) of `size` pixels of `step` bytes: a header of segment offsets, then
 * one PackBits segment per byte of a pixel, most significant first. The stored values, or null when it is not whole.
 */
function rleFrame(fragment, size, step) {
  if (fragment.length < 64) {
    return null;
  }
  const header = new DataView(fragment.buffer, fragment.byteOffset, 64);
  const segments = header.getUint32(0, true);
  if (segments !== step) {
    return null;
  }
  const raw = step === 1 ? new Uint8Array(size) : new Uint16Array(size);
  for (let segment = 0; segment < segments; segment += 1) {
    const begin = header.getUint32(4 + 4 * segment, true);
    const end = segment + 1 < segments ? header.getUint32(8 + 4 * segment, true) : fragment.length;
    const plane = packBitsDecode(fragment.subarray(begin, end), size);
    if (plane.length < size) {
      return null;
    }
    const shift = 8 * (segments - 1 - segment);
    for (let i = 0; i < size; i += 1) {
      raw[i] |= plane[i] << shift;
    }
  }
  return raw;
}

/** [low, high] of the stored values that are padding (Pixel Padding Value and Range Limit); null when none is set. */
function paddingRange(found, storedValue) {
  const read = (value) => {
    if (value === undefined || value === "") {
      return null;
    }
    const number = Number(value);
    if (!Number.isInteger(number)) {
      return null;
    }
    // As the pixels are read, as the server does since 1.3.0: US 2048 beside 12-bit signed pixels is -2048 (browser
    // review 60 F2: the page read 2048, missed the padding, and drew the head washed out).
    return storedValue(number);
  };
  const value = read(found.pixelPaddingValue);
  if (value === null) {
    return null;
  }
  const limit = read(found.pixelPaddingRangeLimit) ?? value;
  return [Math.min(value, limit), Math.max(value, limit)];
}

/**
 * Padding pixels set to the darkest pixel of the image itself, as the server does; left be when all or none are.
 * Darkest as drawn: the highest value of an `inverted` (MONOCHROME1) frame.
 */
function fillPadding(values, padded, inverted = false) {
  const sign = inverted ? -1 : 1;
  let darkest = Infinity;
  for (let i = 0; i < values.length; i += 1) {
    if (!padded[i] && sign * values[i] < darkest) {
      darkest = sign * values[i];
    }
  }
  if (darkest === Infinity || !padded.includes(1)) {
    return;
  }
  for (let i = 0; i < values.length; i += 1) {
    if (padded[i]) {
      values[i] = sign * darkest;
    }
  }
}
