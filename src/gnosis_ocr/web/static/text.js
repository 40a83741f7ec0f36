// Small wording helpers: sizes, plurals, download names, and hints with `code` spans (built as text nodes).

export function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

export function formatBytes(bytes) {
  if (!Number.isFinite(bytes) || bytes < 1000) return `${Math.max(0, Math.round(bytes || 0))} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = -1;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** A server hint as nodes: text between backticks becomes <code>; nothing is parsed as HTML. */
export function formatHint(hint) {
  return String(hint)
    .split("`")
    .map((part, index) => {
      if (index % 2 === 0) return document.createTextNode(part);
      const code = document.createElement("code");
      code.textContent = part;
      return code;
    });
}

/** The name to save a result under: the first document's name without its extension, made safe for a file. */
export function outputName(documents, extension) {
  const first = String(documents[0]?.name ?? "");
  const stem =
    first
      .replace(/\.[A-Za-z0-9]{1,5}$/, "")
      .replace(/[\u0000-\u001f\u007f<>:"/\\|?*]+/g, "_")
      .replace(/^[\s._]+|[\s.]+$/g, "")
      .slice(0, 120) || "result";
  const more = documents.length > 1 ? `-and-${documents.length - 1}-more` : "";
  return `${stem}${more}.${extension}`;
}

/** A new element with a class and, optionally, text (always as textContent). */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
