// The gnosis-ocr web UI: choose documents, upload them as one job, follow the job live (the event stream, or
// polling when that fails), read each page beside its image (pages.js), download the result.
//
// Text from users and from the server (file names, messages, Markdown) only ever enters the page through
// textContent. The one exception is a page's `html`, see PageViewer.render.

import {
  ApiError,
  JOBS,
  blobUrl,
  download,
  getJson,
  hasApiKey,
  request,
  setApiKey,
  sleep,
  streamEvents,
  uploadJob,
} from "./api.js";
import { PageViewer } from "./pages.js";
import { el, formatBytes, formatHint, outputName, plural } from "./text.js";

const FINISHED = new Set(["done", "failed", "cancelled"]);
const JOB_ID = /^[A-Za-z0-9_-]{22}$/;

const $ = (id) => document.getElementById(id);
const ui = {
  alert: $("alert"),
  alertMessage: $("alert-message"),
  alertHint: $("alert-hint"),
  alertClose: $("alert-close"),
  keyPanel: $("key-panel"),
  keyReason: $("key-reason"),
  keyForm: $("key-form"),
  keyInput: $("api-key"),
  forgetKey: $("forget-key"),
  newJob: $("new-job"),
  uploadView: $("upload-view"),
  uploadForm: $("upload-form"),
  dropzone: $("dropzone"),
  fileInput: $("file-input"),
  fileList: $("file-list"),
  engine: $("engine"),
  pages: $("pages"),
  submit: $("submit"),
  clearFiles: $("clear-files"),
  uploadProgress: $("upload-progress"),
  uploadBar: $("upload-bar"),
  uploadText: $("upload-text"),
  uploadStop: $("upload-stop"),
  jobView: $("job-view"),
  jobTitle: $("job-title"),
  jobStatus: $("job-status"),
  jobBar: $("job-bar"),
  cancel: $("cancel"),
  downloads: { md: $("download-md"), json: $("download-json"), zip: $("download-zip"), pdf: $("download-pdf") },
};

const viewer = new PageViewer(
  {
    strip: $("page-strip"),
    label: $("viewer-label"),
    prev: $("prev-page"),
    next: $("next-page"),
    rawToggle: $("raw-toggle"),
    blocksToggle: $("blocks-toggle"),
    outlines: $("block-outlines"),
    image: $("page-image"),
    imageNote: $("page-image-note"),
    note: $("page-note"),
    html: $("page-html"),
    raw: $("page-raw"),
    retry: $("page-retry"),
    retryNote: $("page-retry-note"),
    retryEngine: $("retry-engine"),
    retryButton: $("retry-page"),
  },
  (err, retry) => fail(err, retry),
  (n, engine) => retryPage(n, engine),
);

const state = {
  files: [], // File objects chosen for the next upload
  upload: null, // { promise, abort } while uploading
  job: null, // the job as the server last described it, without its pages (the viewer keeps those)
  cancelling: false,
  follow: null, // AbortController of the event stream / polling
  retries: [], // what to run again once an API key is given
  failureShown: "",
};

// ---- messages -------------------------------------------------------------------------------------------

function showAlert(message, hint) {
  ui.alertMessage.textContent = message;
  ui.alertHint.replaceChildren(...formatHint(hint || ""));
  ui.alertHint.hidden = !hint;
  ui.alert.hidden = false;
}

function clearAlert() {
  ui.alert.hidden = true;
  ui.alertMessage.textContent = "";
  ui.alertHint.replaceChildren();
}

/** Report a failure in words. A 401 asks for the API key and runs `retry` once it is given. */
function fail(err, retry) {
  if (err?.name === "AbortError") return;
  if (err instanceof ApiError && err.status === 401) {
    askForKey(err.message, retry);
    return;
  }
  if (err instanceof ApiError) {
    showAlert(err.message, err.hint);
    return;
  }
  console.error(err);
  showAlert("Something went wrong in this page.", "Reload it and try again; the server keeps the job.");
}

function askForKey(message, retry) {
  if (retry) state.retries.push(retry);
  ui.keyReason.textContent = hasApiKey() ? `The key in use was refused: ${message}` : message;
  const wasHidden = ui.keyPanel.hidden;
  ui.keyPanel.hidden = false;
  clearAlert();
  if (wasHidden) ui.keyInput.focus();
}

function useKey(event) {
  event.preventDefault();
  const key = ui.keyInput.value.trim();
  if (!key) {
    ui.keyInput.focus();
    return;
  }
  setApiKey(key);
  ui.keyInput.value = "";
  ui.keyPanel.hidden = true;
  ui.forgetKey.hidden = false;
  const retries = state.retries;
  state.retries = [];
  for (const retry of retries) retry();
}

function forgetKey() {
  setApiKey("");
  ui.forgetKey.hidden = true;
}

// ---- choosing files ---------------------------------------------------------------------------------------

function addFiles(files) {
  for (const file of files) {
    const same = (f) => f.name === file.name && f.size === file.size && f.lastModified === file.lastModified;
    if (!state.files.some(same)) state.files.push(file);
  }
  renderFiles();
}

function renderFiles() {
  const rows = state.files.map((file, index) => {
    const row = el("li", "file");
    const name = el("span", "file-name", file.name);
    const size = el("span", "file-size", formatBytes(file.size));
    const remove = el("button", "button quiet file-remove", "Remove");
    remove.type = "button";
    remove.dataset.testid = "file-remove";
    remove.setAttribute("aria-label", `Remove ${file.name}`);
    remove.addEventListener("click", () => {
      state.files.splice(index, 1);
      renderFiles();
      (ui.fileList.querySelector(".file-remove") ?? ui.fileInput).focus();
    });
    row.append(name, size, remove);
    return row;
  });
  ui.fileList.replaceChildren(...rows);
  ui.clearFiles.hidden = state.files.length < 2;
  updateSubmit();
}

function updateSubmit() {
  const busy = state.upload !== null;
  ui.submit.disabled = busy || state.files.length === 0;
  const what = state.files.length > 1 ? `Read ${state.files.length} documents` : "Read the document";
  ui.submit.textContent = busy ? "Uploading…" : what;
  const controls = [ui.fileInput, ui.engine, ui.pages, ui.clearFiles, ...ui.fileList.querySelectorAll("button")];
  for (const control of controls) control.disabled = busy;
  ui.dropzone.classList.toggle("is-busy", busy);
}

function hasFiles(event) {
  return Array.from(event.dataTransfer?.types ?? []).includes("Files");
}

function wireDropzone() {
  let depth = 0;
  const leave = () => {
    depth = 0;
    ui.dropzone.classList.remove("is-dragover");
  };
  ui.dropzone.addEventListener("dragenter", (event) => {
    if (!hasFiles(event) || state.upload) return;
    event.preventDefault();
    depth += 1;
    ui.dropzone.classList.add("is-dragover");
  });
  ui.dropzone.addEventListener("dragover", (event) => {
    if (!hasFiles(event) || state.upload) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  ui.dropzone.addEventListener("dragleave", () => {
    depth -= 1;
    if (depth <= 0) leave();
  });
  ui.dropzone.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    leave();
    if (!state.upload) addFiles(event.dataTransfer.files);
  });
  // a file dropped beside the zone must not make the browser navigate away from the page
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => {
      if (hasFiles(event) && !ui.dropzone.contains(event.target)) {
        event.preventDefault();
        if (event.dataTransfer) event.dataTransfer.dropEffect = "none";
      }
    });
  }
}

// ---- uploading --------------------------------------------------------------------------------------------

async function startUpload() {
  if (state.upload || state.files.length === 0) return;
  clearAlert();
  const form = new FormData();
  for (const file of state.files) form.append("file", file, file.name);
  if (ui.engine.value !== "auto") form.append("engine", ui.engine.value);
  const pages = ui.pages.value.trim();
  if (pages) form.append("pages", pages);

  const total = state.files.reduce((sum, file) => sum + file.size, 0);
  showUploadProgress(0, total);
  ui.uploadProgress.hidden = false;
  state.upload = uploadJob(form, {
    onProgress: (sent, size) => showUploadProgress(sent, size ?? total),
    onSent: () => {
      ui.uploadBar.removeAttribute("value"); // indeterminate while the server checks the files
      ui.uploadText.textContent = "Uploaded; the server is checking the files…";
    },
  });
  updateSubmit();
  try {
    const job = await state.upload.promise;
    state.files = [];
    renderFiles();
    openJob(job);
  } catch (err) {
    if (err?.name === "AbortError") showAlert("The upload was stopped; no job was created.");
    else fail(err, startUpload);
  } finally {
    state.upload = null;
    ui.uploadProgress.hidden = true;
    updateSubmit();
  }
}

function showUploadProgress(sent, total) {
  const fraction = total > 0 ? Math.min(sent / total, 1) : 0;
  ui.uploadBar.value = fraction;
  ui.uploadText.textContent = `Uploading: ${Math.round(fraction * 100)} % (${formatBytes(sent)} of ${formatBytes(total)})`;
}

// ---- the job ----------------------------------------------------------------------------------------------

function jobFromHash() {
  const id = new URLSearchParams(location.hash.slice(1)).get("job");
  return id && JOB_ID.test(id) ? id : null;
}

function setHash(id) {
  const url = id ? `#job=${id}` : location.pathname + location.search;
  history.replaceState(null, "", url);
}

/** Show the job named in the URL (a reload, a shared link). */
async function attach(id) {
  ui.uploadView.hidden = true; // no flash of the upload form while the job loads
  try {
    const job = await getJson(`${JOBS}/${id}?text=false`);
    openJob(job);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      fail(err, () => attach(id));
      return;
    }
    setHash(null);
    showUpload();
    if (err instanceof ApiError && err.status === 404) {
      showAlert(err.message, err.hint || "Finished jobs are deleted after a while; upload the document again.");
    } else {
      fail(err);
    }
  }
}

function openJob(job) {
  closeJob();
  setHash(job.id);
  ui.uploadView.hidden = true;
  ui.jobView.hidden = false;
  ui.newJob.hidden = false;
  viewer.setJob(job);
  applyJob(job);
  ui.jobTitle.focus({ preventScroll: true });
  follow(job.id);
}

function closeJob() {
  state.follow?.abort();
  state.follow = null;
  state.job = null;
  state.cancelling = false;
  state.failureShown = "";
  viewer.clear();
  document.title = "gnosis-ocr";
}

function showUpload() {
  ui.jobView.hidden = true;
  ui.uploadView.hidden = false;
  ui.newJob.hidden = true;
}

function newJob() {
  closeJob();
  setHash(null);
  clearAlert();
  showUpload();
  ui.fileInput.focus();
}

/** Merge a job (whole, or from an event without pages) into the state and redraw what changed. */
function applyJob(job) {
  const { pages, ...rest } = job;
  state.job = { ...(state.job ?? {}), ...rest };
  if (Array.isArray(state.job.documents)) viewer.setJob(state.job); // its status too: finished pages may be read again
  if (Array.isArray(pages)) viewer.setPages(pages);
  renderJob();
}

function counts() {
  const counted = viewer.counts();
  return { ...counted, total: counted.total || state.job?.progress?.pages_total || 0 };
}

/** "vlm (vllm, nanonets/Nanonets-OCR-s@3baad18, profile nanonets-ocr-s)", or the plain name for the others. */
function engineWords(engine) {
  const parts = [engine.backend, engine.model && `${engine.model}${engine.revision ? `@${engine.revision.slice(0, 7)}` : ""}`];
  if (engine.profile) parts.push(`profile ${engine.profile}`);
  const details = parts.filter(Boolean).join(", ");
  return details && engine.backend ? `${engine.name} (${details})` : engine.name;
}

function statusText(job) {
  const { done, failed, total } = counts();
  const engine = job.engine?.name ? ` with ${engineWords(job.engine)}` : "";
  switch (job.status) {
    case "queued":
      return state.cancelling ? "Cancelling…" : "Queued: waiting for a free place.";
    case "processing":
      if (state.cancelling) return `Cancelling after the current pages (${done + failed} of ${total} finished)…`;
      return `Reading${engine}: ${done + failed} of ${plural(total, "page")} finished.`;
    case "done":
      if (failed) return `Done${engine}: ${done} of ${plural(total, "page")} read, ${failed} failed.`;
      return `Done${engine}: ${plural(total, "page")} read.`;
    case "failed":
      return `Failed: ${job.error?.message ?? "the job stopped."}`;
    case "cancelled":
      return `Cancelled: ${done} of ${plural(total, "page")} read before it stopped.`;
    default:
      return String(job.status ?? "");
  }
}

function renderJob() {
  const job = state.job;
  if (!job) return;
  const documents = Array.isArray(job.documents) ? job.documents : [];
  const title = documents.length === 1 ? documents[0].name : plural(documents.length, "document");
  ui.jobTitle.textContent = title;
  ui.jobStatus.textContent = statusText(job);
  ui.jobStatus.dataset.state = job.status;
  const { done, failed, total } = counts();
  ui.jobBar.value = total ? (done + failed) / total : 0;
  const running = !FINISHED.has(job.status);
  ui.cancel.hidden = !running;
  ui.cancel.disabled = state.cancelling;
  const ready = !running || done > 0;
  for (const button of Object.values(ui.downloads)) button.disabled = !ready;
  const word = { queued: "Queued", processing: "Reading", done: "Done", failed: "Failed", cancelled: "Cancelled" };
  document.title = `${word[job.status] ?? ""} · ${title} · gnosis-ocr`;
  if (job.status === "failed" && job.error && state.failureShown !== job.id) {
    state.failureShown = job.id;
    showAlert(job.error.message, job.error.hint);
  }
}

// ---- live progress: the event stream, else polling -----------------------------------------------------

async function follow(id) {
  state.follow?.abort();
  const controller = new AbortController();
  state.follow = controller;
  const { signal } = controller;
  let ended = false;
  try {
    await streamEvents(`${JOBS}/${id}/events`, {
      signal,
      onEvent: (type, data) => {
        if (!data || typeof data !== "object" || signal.aborted) return;
        if (type === "job") applyJob(data);
        else if (type === "page") {
          viewer.update(data);
          renderJob();
        } else if (type === "end") {
          ended = true;
          if (FINISHED.has(data.status)) applyJob({ status: data.status }); // else deleted: refresh says so
        }
      },
    });
  } catch (err) {
    if (signal.aborted) return;
    if (err instanceof ApiError && (err.status === 401 || err.status === 404)) {
      fail(err, () => follow(id));
      return;
    }
    // the stream could not be opened or broke: polling below takes over
  }
  if (signal.aborted) return;
  if (ended || FINISHED.has(state.job?.status)) {
    await refresh(id, signal); // the final word, with the job-level error if any
    return;
  }
  await poll(id, signal);
}

async function refresh(id, signal) {
  try {
    applyJob(await getJson(`${JOBS}/${id}?text=false`, { signal }));
  } catch (err) {
    if (!signal.aborted) fail(err, () => refresh(id, signal));
  }
}

async function poll(id, signal) {
  let failures = 0;
  while (!signal.aborted) {
    try {
      const job = await getJson(`${JOBS}/${id}?text=false`, { signal });
      failures = 0;
      applyJob(job);
      if (FINISHED.has(job.status)) return;
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status >= 400 && err.status < 500) {
        fail(err, () => follow(id));
        return;
      }
      failures += 1;
      ui.jobStatus.textContent = "The connection to the server was lost; trying again…";
    }
    try {
      await sleep(failures ? Math.min(1000 * 2 ** failures, 10_000) : 1000, signal);
    } catch {
      return;
    }
  }
}

async function cancelJob() {
  const job = state.job;
  if (!job || FINISHED.has(job.status)) return;
  state.cancelling = true;
  renderJob();
  try {
    await request(`${JOBS}/${job.id}/cancel`, { method: "POST" });
  } catch (err) {
    state.cancelling = false;
    if (err instanceof ApiError && err.status === 409) {
      await refresh(job.id, state.follow?.signal ?? new AbortController().signal);
    }
    fail(err, cancelJob);
  }
  renderJob();
}

/** Ask for page n to be read again, then follow the job until the new reading has landed. */
async function retryPage(n, engine) {
  const job = state.job;
  if (!job) return;
  clearAlert();
  try {
    const response = await request(`${JOBS}/${job.id}/pages/${n}/retry`, { method: "POST", json: { engine } });
    const marked = await response.json();
    applyJob(marked);
    follow(job.id);
  } catch (err) {
    if (err instanceof ApiError && err.status === 409) {
      await refresh(job.id, state.follow?.signal ?? new AbortController().signal);
    }
    fail(err, () => retryPage(n, engine));
  }
}

async function save(kind) {
  const job = state.job;
  if (!job) return;
  const button = ui.downloads[kind];
  button.setAttribute("aria-busy", "true");
  try {
    await download(`${JOBS}/${job.id}/result.${kind}`, outputName(job.documents ?? [], kind));
  } catch (err) {
    fail(err, () => save(kind));
  } finally {
    button.removeAttribute("aria-busy");
  }
}

// ---- start ------------------------------------------------------------------------------------------------

function wire() {
  ui.alertClose.addEventListener("click", clearAlert);
  ui.keyForm.addEventListener("submit", useKey);
  ui.forgetKey.addEventListener("click", forgetKey);
  ui.newJob.addEventListener("click", newJob);
  ui.fileInput.addEventListener("change", () => {
    addFiles(ui.fileInput.files ?? []);
    ui.fileInput.value = ""; // choosing the same file again fires change again
  });
  ui.clearFiles.addEventListener("click", () => {
    state.files = [];
    renderFiles();
    ui.fileInput.focus();
  });
  ui.uploadForm.addEventListener("submit", (event) => {
    event.preventDefault();
    startUpload();
  });
  ui.uploadStop.addEventListener("click", () => state.upload?.abort());
  ui.cancel.addEventListener("click", cancelJob);
  for (const kind of Object.keys(ui.downloads)) ui.downloads[kind].addEventListener("click", () => save(kind));
  window.addEventListener("hashchange", () => {
    const id = jobFromHash();
    if (id && id !== state.job?.id) attach(id);
    else if (!id && state.job) newJob();
  });
  wireDropzone();
}

wire();
ui.forgetKey.hidden = !hasApiKey();
renderFiles();
const initial = jobFromHash();
if (initial) attach(initial);
document.documentElement.dataset.ready = "true";
