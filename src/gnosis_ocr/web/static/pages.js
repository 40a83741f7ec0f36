// A job's pages: the page strip (one item per page, with its status) and the viewer (the page image beside
// its text, rendered or as Markdown source). Pages are keyed by their number `n` across the job; the order is
// the job's. Page text and images are fetched when a finished page is shown, and cached.

import { ApiError, JOBS, blobUrl, getJson } from "./api.js";
import { el } from "./text.js";

const IMAGE_CACHE = 12; // page images kept as blob: URLs; older ones are revoked
const STATUS_WORDS = { pending: "waiting", done: "done", failed: "failed" };

export class PageViewer {
  /**
   * @param ui the elements: strip, label, prev, next, rawToggle, blocksToggle and outlines (the layout engine's
   *   blocks drawn over the page image), image, imageNote, note, html, raw, and retry, retryNote, retryEngine,
   *   retryButton (the offer to read a failed or fallen-back page again)
   * @param onError (error, retry) => void, for failures the viewer cannot explain itself (401 above all)
   * @param onRetry (n, engine) => Promise, asks the server to read page n again
   */
  constructor(ui, onError, onRetry) {
    this.ui = ui;
    this.onError = onError;
    this.onRetry = onRetry;
    this.raw = false;
    this.outlined = false;
    this.images = new Map(); // n -> Promise of a blob: URL
    this.clear();
    ui.prev.addEventListener("click", () => this.step(-1));
    ui.next.addEventListener("click", () => this.step(1));
    ui.rawToggle.addEventListener("click", () => this.setRaw(!this.raw));
    ui.blocksToggle.addEventListener("click", () => this.setOutlined(!this.outlined));
    ui.retryButton.addEventListener("click", () => this.retry());
    document.addEventListener("keydown", (event) => this.onKey(event));
    this.setRaw(false);
  }

  /** Forget the job: its pages, cached text and images (blob: URLs revoked). */
  clear() {
    for (const image of this.images.values()) image.then((url) => URL.revokeObjectURL(url), () => {});
    this.images = new Map();
    this.details = new Map(); // n -> Promise of the page entry with html
    this.pages = new Map(); // n -> page entry
    this.order = []; // the pages' n in the job's order
    this.items = new Map(); // n -> page item button
    this.selected = 0;
    this.job = null;
    this.ui.strip.replaceChildren();
    this.ui.html.replaceChildren();
    this.ui.raw.textContent = "";
    this.showImage(null);
  }

  /** The job's id and documents (names label the pages), and its status (only a finished job's pages are read
   * again). */
  setJob(job) {
    const status = job.status ?? this.job?.status;
    this.job = { id: job.id, documents: Array.isArray(job.documents) ? job.documents : [], status };
    if (this.selected) this.showRetry(this.pages.get(this.selected));
  }

  /** The job's whole page list; the strip is rebuilt when the pages themselves change. */
  setPages(pages) {
    const order = pages.map((page) => page?.n).filter((n) => Number.isInteger(n));
    const rebuild = order.join() !== this.order.join();
    if (rebuild) this.order = order;
    for (const page of pages) this.update(page, !rebuild);
    if (rebuild) this.buildStrip();
    if (!this.selected && this.order.length) this.select(this.order[0]);
  }

  /** One page entry (from an event or a poll): redraw its item and, if it is on screen, the viewer. */
  update(page, redraw = true) {
    if (!Number.isInteger(page?.n)) return;
    const old = this.pages.get(page.n);
    const merged = { ...(old ?? {}), ...page };
    this.pages.set(page.n, merged);
    const reread = old && (old.rerun !== merged.rerun || readings(old) !== readings(merged));
    if (reread) this.details.delete(page.n); // a new reading: its text is fetched again
    if (!old && !this.order.includes(page.n)) {
      this.order.push(page.n); // a page the job did not list: show it all the same
      this.buildStrip();
    }
    if (!redraw || (old && !reread && old.status === merged.status && old.image === merged.image)) return;
    this.updateItem(merged);
    if (this.selected === page.n) this.show(page.n);
  }

  counts() {
    let done = 0;
    let failed = 0;
    for (const page of this.pages.values()) {
      if (page.status === "done") done += 1;
      else if (page.status === "failed") failed += 1;
    }
    return { done, failed, total: this.order.length };
  }

  // ---- the strip ----

  several() {
    return (this.job?.documents.length ?? 0) > 1;
  }

  documentName(page) {
    return this.job?.documents[page.document]?.name ?? `document ${(page.document ?? 0) + 1}`;
  }

  pageName(page) {
    const number = page.page ?? page.n;
    return this.several() ? `${this.documentName(page)}, page ${number}` : `Page ${number}`;
  }

  buildStrip() {
    const groups = [];
    let current = null;
    this.items.clear();
    for (const n of this.order) {
      const page = this.pages.get(n);
      if (!page) continue;
      if (!current || current.document !== page.document) {
        const group = el("div", "page-group");
        if (this.several()) group.append(el("p", "page-group-name", this.documentName(page)));
        current = { document: page.document, list: el("ol", "page-list") };
        group.append(current.list);
        groups.push(group);
      }
      const button = el("button", "page-item");
      button.type = "button";
      button.dataset.testid = "page-item";
      button.dataset.page = String(n);
      button.append(el("span", "page-item-number", String(page.page ?? n)), el("span", "page-item-mark"));
      button.addEventListener("click", () => this.select(n));
      const item = el("li");
      item.append(button);
      current.list.append(item);
      this.items.set(n, button);
      this.updateItem(page);
    }
    this.ui.strip.replaceChildren(...groups);
    this.markSelected();
  }

  updateItem(page) {
    const button = this.items.get(page.n);
    if (!button) return;
    button.dataset.status = page.status;
    const fallback = fallbackWords(page);
    if (fallback) button.dataset.fallback = "yes";
    else delete button.dataset.fallback;
    const words = STATUS_WORDS[page.status] ?? page.status;
    button.setAttribute("aria-label", `${this.pageName(page)}: ${words}${fallback ? ` (${fallback})` : ""}`);
    button.title = page.status === "failed" && page.error ? `Failed: ${page.error}` : fallback ?? "";
  }

  markSelected() {
    for (const [n, button] of this.items) {
      if (n === this.selected) button.setAttribute("aria-current", "page");
      else button.removeAttribute("aria-current");
    }
  }

  select(n) {
    if (!this.pages.has(n)) return;
    this.selected = n;
    this.markSelected();
    this.items.get(n)?.scrollIntoView({ block: "nearest", inline: "nearest" });
    this.show(n);
  }

  /** Move to the previous (-1) or next (+1) page; false at either end. */
  step(delta) {
    const next = this.order[this.order.indexOf(this.selected) + delta];
    if (next === undefined || !this.selected) return false;
    this.select(next);
    return true;
  }

  onKey(event) {
    if (!this.job || this.ui.strip.closest("[hidden]")) return;
    if (event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
    const target = event.target instanceof Element ? event.target : null;
    // keys that move a caret or scroll a box keep doing that
    if (target?.closest("input, textarea, select, [contenteditable], .table-scroll, .raw, math")) return;
    event.preventDefault();
    const onItem = target?.classList.contains("page-item");
    if (this.step(event.key === "ArrowLeft" ? -1 : 1) && onItem) this.items.get(this.selected)?.focus();
  }

  // ---- the viewer ----

  async show(n) {
    const page = this.pages.get(n);
    const job = this.job;
    if (!page || !job) return;
    const ui = this.ui;
    const current = () => this.selected === n && this.job?.id === job.id;
    const index = this.order.indexOf(n);
    const position = `${index + 1} of ${this.order.length}`;
    const plain = !this.several() && (page.page ?? n) === index + 1;
    ui.label.textContent = plain ? `Page ${position}` : `${this.pageName(page)} (${position})`;
    ui.prev.disabled = index <= 0;
    ui.next.disabled = index >= this.order.length - 1;
    this.showRetry(page);
    this.drawBlocks(page);

    if (page.status === "done") {
      this.note(fallbackWords(page) ?? "");
      if (!this.details.has(n)) {
        ui.html.replaceChildren();
        ui.raw.textContent = "";
        ui.html.setAttribute("aria-busy", "true");
      }
      this.detail(job.id, n).then(
        (detail) => current() && this.render(detail),
        (err) => current() && this.onError(err, () => this.show(n)),
      );
    } else {
      ui.html.replaceChildren();
      ui.raw.textContent = "";
      const failed = `This page failed: ${page.error || "no reason was given"}`;
      this.note(page.status === "failed" ? failed : "This page is not read yet; it appears here when it is done.");
    }

    // `image` (when the server sends it) says whether the page is rendered; without it, ask once it is done
    if (page.image === false || (page.status === "pending" && page.image !== true)) {
      const pending = page.status === "pending";
      this.showImage(null, pending ? "The page image appears once the page is read." : "There is no image of this page.");
      return;
    }
    if (!this.images.has(n)) this.showImage(null, "Loading the page image…");
    this.image(job.id, n).then(
      (url) => current() && this.showImage(url),
      (err) => {
        if (!current()) return;
        if (err instanceof ApiError && err.status === 404) this.showImage(null, "There is no image of this page.");
        else if (err instanceof ApiError && err.status === 401) this.onError(err, () => this.show(n));
        else this.showImage(null, `The page image could not be loaded: ${err.message}`);
      },
    );
  }

  note(text) {
    this.ui.note.textContent = text;
    this.ui.note.hidden = !text;
  }

  /** The offer to read the page again: on a failed page, or one whose text is not the engine's own reading. */
  showRetry(page) {
    const ui = this.ui;
    const finished = this.job?.status === "done" || this.job?.status === "failed";
    const rereading = Boolean(page?.rerun);
    const bad = page && (page.status === "failed" || page.error || page.source !== "ocr" || page.meta?.fallback);
    ui.retry.hidden = !page || page.status === "pending" || !(bad || rereading || readings(page) > 0);
    if (ui.retry.hidden) return;
    const earlier = readings(page);
    const history = earlier ? `It was read ${earlier + 1} times; the earlier readings are in the JSON.` : "";
    const layer = page.source === "text-layer" && !page.meta?.fallback ? "This text is the PDF's own text layer. " : "";
    ui.retryNote.textContent = rereading ? "This page is being read again…" : `${layer}${history}`.trim();
    ui.retryButton.disabled = rereading || !finished || this.busy === page.n;
    ui.retryEngine.disabled = ui.retryButton.disabled;
    ui.retryButton.hidden = !bad && !rereading;
    ui.retryEngine.hidden = ui.retryButton.hidden;
  }

  async retry() {
    const n = this.selected;
    const page = this.pages.get(n);
    if (!page || !this.onRetry) return;
    this.busy = n;
    this.showRetry(page);
    try {
      await this.onRetry(n, this.ui.retryEngine.value);
    } finally {
      this.busy = 0;
      if (this.selected === n) this.showRetry(this.pages.get(n));
    }
  }

  detail(id, n) {
    let detail = this.details.get(n);
    if (!detail) {
      detail = getJson(`${JOBS}/${id}/pages/${n}`);
      this.details.set(n, detail);
      detail.catch(() => this.details.get(n) === detail && this.details.delete(n));
    }
    return detail;
  }

  image(id, n) {
    let image = this.images.get(n);
    if (!image) {
      image = blobUrl(`${JOBS}/${id}/pages/${n}/image`);
      this.images.set(n, image);
      image.catch(() => this.images.get(n) === image && this.images.delete(n));
      for (const [old, url] of this.images) {
        if (this.images.size <= IMAGE_CACHE) break;
        if (old === n) continue;
        this.images.delete(old);
        url.then((u) => URL.revokeObjectURL(u), () => {});
      }
    }
    return image;
  }

  showImage(url, message = "") {
    const img = this.ui.image;
    if (url) {
      const page = this.pages.get(this.selected);
      img.alt = page ? `${this.pageName(page)}, as the engine saw it` : "The page";
      if (img.getAttribute("src") !== url) img.src = url;
      img.hidden = false;
    } else {
      img.hidden = true;
      img.removeAttribute("src");
    }
    this.ui.outlines.hidden = !url || !this.outlined || this.ui.blocksToggle.hidden;
    this.ui.imageNote.textContent = message;
    this.ui.imageNote.hidden = !message;
  }

  render(detail) {
    const ui = this.ui;
    ui.html.removeAttribute("aria-busy");
    if (typeof detail.html === "string") {
      // The one place server text becomes markup. The server renders the page's Markdown and sanitises the
      // HTML with nh3 (an allowlist: no script, no event handler attributes, no remote images); on top of that
      // the page's Content-Security-Policy refuses inline script. innerHTML is what keeps tables and MathML.
      ui.html.innerHTML = detail.html;
      for (const table of ui.html.querySelectorAll("table")) {
        const box = el("div", "table-scroll"); // a wide table scrolls inside its own box, not the page
        box.tabIndex = 0;
        box.setAttribute("role", "region");
        box.setAttribute("aria-label", "Table");
        table.replaceWith(box);
        box.append(table);
      }
      for (const link of ui.html.querySelectorAll("a[href]")) link.rel = "noopener noreferrer";
    } else {
      ui.html.replaceChildren(el("pre", "raw", detail.markdown ?? ""));
    }
    ui.raw.textContent = detail.markdown ?? "";
  }

  /** Boxes over the page image for the blocks (and running headers and footers) the layout engine found; the
   * toggle shows only on a page that has them. Positions are shares of the page as it was read (width x height),
   * so they hold whatever size the image is shown at. */
  drawBlocks(page) {
    const ui = this.ui;
    const meta = page?.meta ?? {};
    const blocks = [...(Array.isArray(meta.blocks) ? meta.blocks : []), ...(Array.isArray(meta.furniture) ? meta.furniture : [])];
    const width = page?.width;
    const height = page?.height;
    const usable = page?.status === "done" && blocks.length > 0 && width > 0 && height > 0;
    ui.blocksToggle.hidden = !usable;
    ui.outlines.replaceChildren();
    if (!usable) {
      ui.outlines.hidden = true;
      return;
    }
    for (const block of blocks) {
      const box = block?.bbox;
      if (!Array.isArray(box) || box.length !== 4) continue;
      const [x0, y0, x1, y1] = box.map(Number);
      const kind = String(block.type ?? "text").replace(/[^a-z_]/g, "");
      const outline = el("div", `block-outline block-${kind}`);
      outline.dataset.type = kind;
      outline.style.left = `${(100 * x0) / width}%`;
      outline.style.top = `${(100 * y0) / height}%`;
      outline.style.width = `${(100 * Math.max(0, x1 - x0)) / width}%`;
      outline.style.height = `${(100 * Math.max(0, y1 - y0)) / height}%`;
      const order = Number.isInteger(block.order) && block.order >= 0 ? `${block.order + 1} ` : "";
      outline.append(el("span", "block-label", `${order}${kind.replace("_", " ")}`));
      ui.outlines.append(outline);
    }
    ui.outlines.hidden = !this.outlined || ui.image.hidden;
  }

  setOutlined(outlined) {
    this.outlined = outlined;
    this.ui.blocksToggle.setAttribute("aria-pressed", String(outlined));
    this.ui.outlines.hidden = !outlined || this.ui.image.hidden || this.ui.blocksToggle.hidden;
  }

  setRaw(raw) {
    this.raw = raw;
    this.ui.rawToggle.setAttribute("aria-pressed", String(raw));
    this.ui.html.hidden = raw;
    this.ui.raw.hidden = !raw;
  }
}

/** How many earlier readings the page keeps. */
function readings(page) {
  return Array.isArray(page?.history) ? page.history.length : 0;
}

/** What the loop guard did to a page, in words; null for a page read as usual. */
function fallbackWords(page) {
  const fallback = page.meta?.fallback;
  if (!fallback) return null;
  const from = fallback === "text-layer" ? "the PDF's own text layer" : `the ${fallback} engine`;
  return `The model repeated itself on this page; this text is from ${from}.`;
}
