// The HTTP API (docs/API.md) as the UI uses it. Every request carries the API key, when one is set, in the
// X-API-Key header: never in a URL, a cookie or a query string. Failures become ApiError with the server's
// own message and hint.

import { SseParser } from "./sse.js";

const KEY_STORAGE = "gnosis-ocr.api-key";
export const JOBS = "/api/v1/jobs";

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return ""; // storage unavailable (privacy settings): the key then lives only as long as the page
  }
}

let key = storedKey();

/** Keep the key for this tab (sessionStorage: gone when the tab closes); "" forgets it. */
export function setApiKey(value) {
  key = value;
  try {
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // kept in memory only
  }
}

export function hasApiKey() {
  return key !== "";
}

export class ApiError extends Error {
  constructor(status, message, hint = null, type = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.hint = hint;
    this.type = type;
  }
}

/** The error for a failed answer: the server's {error: {type, message, hint}} when it sent one. */
export function errorFrom(status, statusText, body) {
  const error = body && typeof body === "object" ? body.error : null;
  if (error && typeof error.message === "string") {
    return new ApiError(status, error.message, typeof error.hint === "string" ? error.hint : null, error.type);
  }
  const phrase = statusText ? ` ${statusText}` : "";
  return new ApiError(status, `The server answered ${status}${phrase}.`, status >= 500 ? "See the server log." : null);
}

function unreachable() {
  return new ApiError(0, "The server could not be reached.", "Check that gnosis-ocr is running and try again.");
}

function headers(accept) {
  const result = new Headers({ Accept: accept });
  if (key) result.set("X-API-Key", key);
  return result;
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** fetch() with the key (and `json`, when given, as a JSON body); resolves to the Response when it is 2xx, else
 * rejects with an ApiError. */
export async function request(path, { method = "GET", accept = "application/json", signal, json } = {}) {
  let response;
  const sent = headers(accept);
  if (json !== undefined) sent.set("Content-Type", "application/json");
  const body = json === undefined ? undefined : JSON.stringify(json);
  try {
    response = await fetch(path, { method, headers: sent, body, signal, cache: "no-store" });
  } catch (err) {
    if (signal?.aborted) throw err;
    throw unreachable();
  }
  if (!response.ok) {
    const text = await response.text().catch(() => "");
    throw errorFrom(response.status, response.statusText, parseJson(text));
  }
  return response;
}

export async function getJson(path, options) {
  const response = await request(path, options);
  return response.json();
}

/**
 * POST /api/v1/jobs with XMLHttpRequest, whose upload events give progress (fetch has none).
 * onProgress(sentBytes, totalBytes | null) while sending; onSent() once the body is out and the server checks it.
 * Returns { promise, abort }.
 */
export function uploadJob(form, { onProgress, onSent }) {
  const xhr = new XMLHttpRequest();
  const promise = new Promise((resolve, reject) => {
    xhr.open("POST", JOBS);
    xhr.setRequestHeader("Accept", "application/json");
    if (key) xhr.setRequestHeader("X-API-Key", key);
    xhr.upload.addEventListener("progress", (event) => {
      onProgress(event.loaded, event.lengthComputable ? event.total : null);
    });
    xhr.upload.addEventListener("load", () => onSent());
    xhr.addEventListener("load", () => {
      const body = parseJson(xhr.responseText);
      if (xhr.status >= 200 && xhr.status < 300 && body && typeof body.id === "string") resolve(body);
      else reject(errorFrom(xhr.status, xhr.statusText, body));
    });
    xhr.addEventListener("error", () => {
      reject(
        new ApiError(
          0,
          "The upload stopped before the server answered.",
          "The connection broke, or the server refused the upload part-way (for instance over its size " +
            "limit, GNOSIS_MAX_UPLOAD_BYTES). Try again, or with fewer or smaller files.",
        ),
      );
    });
    xhr.addEventListener("abort", () => reject(new DOMException("The upload was stopped.", "AbortError")));
    xhr.send(form);
  });
  return { promise, abort: () => xhr.abort() };
}

/**
 * Read the job's event stream until it closes. onEvent(type, data) gets each event with its data parsed as JSON.
 * Resolves when the server closes the stream; rejects with an ApiError when it cannot be opened or breaks.
 */
export async function streamEvents(path, { signal, onEvent }) {
  const response = await request(path, { accept: "text/event-stream", signal });
  const type = response.headers.get("Content-Type") || "";
  if (!type.startsWith("text/event-stream") || !response.body) {
    throw new ApiError(response.status, "The server did not answer with an event stream.");
  }
  const parser = new SseParser((event, data) => onEvent(event, parseJson(data)));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
    }
    parser.end();
  } catch (err) {
    if (signal?.aborted) throw err;
    throw new ApiError(0, "The live progress stream broke.");
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** A blob: URL for an authenticated binary resource (page images). Revoke it when done. */
export async function blobUrl(path, { signal } = {}) {
  const response = await request(path, { accept: "image/png,image/*", signal });
  return URL.createObjectURL(await response.blob());
}

/** The file name a Content-Disposition header offers (RFC 6266: filename* first), or null. */
export function dispositionName(header) {
  if (!header) return null;
  const extended = /filename\*\s*=\s*UTF-8''([^;]+)/i.exec(header);
  if (extended) {
    try {
      return decodeURIComponent(extended[1].trim());
    } catch {
      // malformed escapes: fall through to the plain parameter
    }
  }
  const plain = /filename\s*=\s*"([^"]*)"/i.exec(header) ?? /filename\s*=\s*([^;]+)/i.exec(header);
  return plain ? plain[1].trim() : null;
}

/**
 * Fetch with the key, then save through a blob: URL and <a download>, so the key never enters a URL.
 * The name is the server's (Content-Disposition), else `fallbackName`; the browser makes it safe for the disk.
 */
export async function download(path, fallbackName) {
  const response = await request(path, { accept: "*/*" });
  const filename = dispositionName(response.headers.get("Content-Disposition")) || fallbackName;
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(new DOMException("Stopped.", "AbortError"));
      },
      { once: true },
    );
  });
}
